//! What goes on the wire for one event, and how the broker's answers are classified. Pure code,
//! tested without a broker.

use lapin::message::BasicReturnMessage;
use lapin::protocol::BasicProperties;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::sink::cloudevents::{self, HeaderMode};
use crate::sink::{Envelope, SinkError};

/// AMQP short strings (routing key, message id, type) carry their length in one byte.
pub const SHORT_STRING_MAX: usize = 255;

/// The properties of SPEC.md: persistent, JSON, message id and type from the event, its
/// `created` as timestamp, and the stripe-* headers as long strings; with
/// [`HeaderMode::Cloudevents`] also the `cloudEvents:*` attributes (AMQP protocol binding; the
/// `content_type` property is their `datacontenttype`).
pub fn properties(envelope: &Envelope, mode: HeaderMode) -> Result<BasicProperties, SinkError> {
    let meta = envelope.meta();
    short("event id", &meta.id)?;
    short("event type", &meta.event_type)?;
    let mut headers = FieldTable::default();
    for (name, value) in envelope.headers() {
        headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
    }
    if mode == HeaderMode::Cloudevents {
        for (name, value) in cloudevents::headers(envelope, cloudevents::Binding::Amqp) {
            headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
        }
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(meta.id.as_str()))
        .with_type(ShortString::from(meta.event_type.as_str()))
        .with_app_id(ShortString::from("hookbridge"))
        .with_headers(headers);
    if let Some(created) = meta.created.and_then(|c| u64::try_from(c).ok()) {
        props = props.with_timestamp(created);
    }
    Ok(props)
}

/// Rejects values that do not fit an AMQP short string (they would corrupt the frame).
pub fn short(what: &str, value: &str) -> Result<(), SinkError> {
    if value.len() > SHORT_STRING_MAX {
        return Err(SinkError::permanent(format!(
            "{what} is {} bytes; AMQP allows at most {SHORT_STRING_MAX}",
            value.len()
        )));
    }
    Ok(())
}

/// The broker's answer to one publish, for the event with `message_id`.
pub fn confirmation(result: Result<Confirmation, lapin::Error>, message_id: &str) -> Result<(), Failure> {
    match result {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => Err(returned_error(&returned, message_id).into()),
        Ok(Confirmation::Nack(_)) => Err(SinkError::retryable("RabbitMQ nacked the message").into()),
        Ok(Confirmation::NotRequested) => Err(SinkError::retryable(
            "the channel is not in confirm mode; the message is not known to be stored",
        )
        .into()),
        Err(e) => Err(publish_failure(&e)),
    }
}

/// Why one publish failed: the error to answer with, and whether the exchange is gone.
#[derive(Debug)]
pub struct Failure {
    pub error: SinkError,
    /// RabbitMQ closed the channel with `404 NOT_FOUND`. A publish names no entity but its
    /// exchange (queues are reached through bindings, and a missing binding is a return, not an
    /// error), so the exchange does not exist.
    pub no_exchange: bool,
}

impl From<SinkError> for Failure {
    fn from(error: SinkError) -> Self {
        Failure {
            error,
            no_exchange: false,
        }
    }
}

/// Sorts a client error met while publishing or confirming, keeping whether it said "not found".
pub fn publish_failure(e: &lapin::Error) -> Failure {
    Failure {
        error: publish_error(e),
        no_exchange: is_not_found(e),
    }
}

fn returned_error(returned: &BasicReturnMessage, message_id: &str) -> SinkError {
    let ours = returned
        .delivery
        .properties
        .message_id()
        .as_ref()
        .is_some_and(|id| id.as_str() == message_id);
    if !ours {
        tracing::error!(
            event_id = message_id,
            "RabbitMQ returned a message with another message id than the one confirmed"
        );
    }
    SinkError::permanent(format!(
        "RabbitMQ returned the message as unroutable ({} {}): no queue is bound for routing key `{}` on exchange `{}`",
        returned.reply_code,
        returned.reply_text.as_str(),
        returned.delivery.routing_key.as_str(),
        returned.delivery.exchange.as_str(),
    ))
}

/// Reply codes after which the same publish would fail again: not found (no exchange), access
/// refused, precondition failed (e.g. message larger than the broker allows), content too large.
const PERMANENT_CODES: [u16; 4] = [404, 403, 406, 311];

/// Sorts a client error met while publishing or confirming.
pub fn publish_error(e: &lapin::Error) -> SinkError {
    match e {
        lapin::Error::ProtocolError(amqp) if PERMANENT_CODES.contains(&amqp.get_id()) => {
            SinkError::permanent(format!("RabbitMQ refused the message: {}", describe(e)))
        }
        _ => SinkError::retryable(format!("RabbitMQ publish failed: {}", describe(e))),
    }
}

/// A client error as one line. lapin's messages carry no payload or credentials.
pub fn describe(e: &lapin::Error) -> String {
    match e {
        lapin::Error::ProtocolError(amqp) => format!("{} {}", amqp.get_id(), amqp.get_message().as_str()),
        other => other.to_string(),
    }
}

/// Whether the broker answered `404 NOT_FOUND`: the entity a declare checked (passively) or a
/// publish named does not exist.
pub fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(amqp) if amqp.get_id() == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventMeta;
    use bytes::Bytes;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};

    fn meta(created: Option<i64>, account: Option<&str>) -> EventMeta {
        EventMeta {
            id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            api_version: Some("2024-06-20".into()),
            livemode: true,
            account: account.map(Into::into),
            object_id: Some("in_1".into()),
            created,
            thin: false,
        }
    }

    fn envelope(created: Option<i64>, account: Option<&str>) -> Envelope {
        Envelope::for_tests(Bytes::from_static(b"{}"), meta(created, account), "t=1,v1=ab")
    }

    fn header(props: &BasicProperties, name: &str) -> Option<String> {
        props.headers().as_ref().and_then(|h| match h.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        })
    }

    #[test]
    fn properties_follow_the_spec() {
        let p = properties(&envelope(Some(1_700_000_000), Some("acct_1")), HeaderMode::Stripe)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("evt_1"));
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("invoice.paid"));
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(header(&p, "stripe-event-id").as_deref(), Some("evt_1"));
        assert_eq!(header(&p, "stripe-event-type").as_deref(), Some("invoice.paid"));
        assert_eq!(header(&p, "stripe-api-version").as_deref(), Some("2024-06-20"));
        assert_eq!(header(&p, "stripe-livemode").as_deref(), Some("true"));
        assert_eq!(header(&p, "stripe-account").as_deref(), Some("acct_1"));
        assert_eq!(header(&p, "stripe-signature").as_deref(), Some("t=1,v1=ab"));
        assert_eq!(header(&p, "content-type").as_deref(), Some("application/json"));
    }

    #[test]
    fn optional_fields_are_left_out() {
        let p = properties(&envelope(None, None), HeaderMode::Stripe).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*p.timestamp(), None);
        assert_eq!(header(&p, "stripe-account"), None);
        let p = properties(&envelope(Some(-5), None), HeaderMode::Stripe).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*p.timestamp(), None);
    }

    #[test]
    fn overlong_short_strings_are_permanent() {
        let mut long = meta(None, None);
        long.event_type = "x".repeat(256);
        let e = Envelope::for_tests(Bytes::from_static(b"{}"), long, "t=1,v1=ab");
        let err = properties(&e, HeaderMode::Stripe)
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert!(!err.is_retryable());
        assert!(short("routing key", &"k".repeat(255)).is_ok());
    }

    #[test]
    fn cloudevents_headers_only_when_asked() {
        let e = envelope(Some(1_700_000_000), Some("acct_1"));
        let p = properties(&e, HeaderMode::Stripe).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header(&p, "cloudEvents:id"), None);
        let p = properties(&e, HeaderMode::Cloudevents).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header(&p, "cloudEvents:id").as_deref(), Some("evt_1"));
        assert_eq!(header(&p, "cloudEvents:type").as_deref(), Some("invoice.paid"));
        assert_eq!(header(&p, "cloudEvents:specversion").as_deref(), Some("1.0"));
        assert_eq!(
            header(&p, "cloudEvents:source").as_deref(),
            Some("https://api.stripe.com/v1/accounts/acct_1")
        );
        assert_eq!(header(&p, "cloudEvents:time").as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(header(&p, "cloudEvents:subject").as_deref(), Some("in_1"));
        assert_eq!(
            header(&p, "stripe-event-id").as_deref(),
            Some("evt_1"),
            "stripe headers stay"
        );
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
    }

    #[test]
    fn confirmations_are_classified() {
        assert!(confirmation(Ok(Confirmation::Ack(None)), "evt_1").is_ok());
        let nack = confirmation(Ok(Confirmation::Nack(None)), "evt_1").err();
        assert!(nack.is_some_and(|e| e.error.is_retryable() && !e.no_exchange));
        let not_found = lapin::Error::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no exchange 'x' in vhost '/'".into(),
        ));
        let err = confirmation(Err(not_found), "evt_1").unwrap_err();
        assert!(!err.error.is_retryable() && err.error.message.contains("404"));
        assert!(err.no_exchange);
        let refused = lapin::Error::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - write access to exchange 'x' refused".into(),
        ));
        let err = confirmation(Err(refused), "evt_1").unwrap_err();
        assert!(!err.error.is_retryable() && !err.no_exchange);
        let io = lapin::Error::IOError(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let err = confirmation(Err(io), "evt_1").unwrap_err();
        assert!(err.error.is_retryable() && !err.no_exchange);
    }
}
