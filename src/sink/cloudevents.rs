//! CloudEvents attributes as message headers (binary content mode), for sinks configured with
//! `headers: cloudevents`: consumers built on Knative Eventing, Dapr or Argo Events read them
//! without parsing the payload. The payload stays the Stripe event byte for byte and the
//! `stripe-*` headers stay too.
//!
//! The attributes, from the Stripe event:
//! - `id`: the event id; `type`: the event type (`invoice.paid`); `specversion`: `1.0`
//! - `source`: the Stripe account the event belongs to, as an API URL:
//!   `https://api.stripe.com/v1/accounts/{account}` for a Connect account's event,
//!   `https://api.stripe.com/v1/account` for the platform's own
//! - `time`: `created` in RFC 3339: snapshot events' Unix seconds converted, thin events' own
//!   RFC 3339 string as it is
//! - `subject`: the id of the object the event is about (`data.object.id`, thin events'
//!   `related_object.id`), when there is one
//! - `datacontenttype`: `application/json`, carried where each binding puts it: Kafka's
//!   `content-type` header, AMQP's `content_type` property (both already set for every message).
//!
//! Header names follow each protocol binding: Kafka `ce_id`, `ce_source`, … (kafka protocol
//! binding); AMQP `cloudEvents:id`, … in the application properties, i.e. RabbitMQ's message
//! headers (AMQP protocol binding); NATS `ce-id`, `ce-source`, … (NATS protocol binding, binary
//! content mode); the file sink uses the Kafka names. Every value is written
//! in its canonical string form, which both bindings allow.

use serde::Deserialize;

use crate::event::EventMeta;
use crate::sink::Envelope;

/// Which headers a sink adds besides the `stripe-*` ones (the sink's `headers` key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderMode {
    /// The `stripe-*` headers and `content-type` only.
    #[default]
    Stripe,
    /// Also the CloudEvents attributes, named as the sink's protocol binding says.
    Cloudevents,
}

/// A protocol binding: how attribute names become header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `ce_` + attribute name (also used by the file sink).
    Kafka,
    /// `cloudEvents:` + attribute name.
    Amqp,
    /// `ce-` + attribute name (NATS protocol binding, binary content mode).
    Nats,
}

/// The CloudEvents version written in `specversion`.
pub const SPECVERSION: &str = "1.0";

/// Header names of one binding, in the order they are written.
struct Names {
    id: &'static str,
    source: &'static str,
    specversion: &'static str,
    event_type: &'static str,
    time: &'static str,
    subject: &'static str,
}

const KAFKA: Names = Names {
    id: "ce_id",
    source: "ce_source",
    specversion: "ce_specversion",
    event_type: "ce_type",
    time: "ce_time",
    subject: "ce_subject",
};

const NATS: Names = Names {
    id: "ce-id",
    source: "ce-source",
    specversion: "ce-specversion",
    event_type: "ce-type",
    time: "ce-time",
    subject: "ce-subject",
};

const AMQP: Names = Names {
    id: "cloudEvents:id",
    source: "cloudEvents:source",
    specversion: "cloudEvents:specversion",
    event_type: "cloudEvents:type",
    time: "cloudEvents:time",
    subject: "cloudEvents:subject",
};

/// The CloudEvents headers for one event, named for `binding`; optional attributes only when
/// the event has them.
pub fn headers(envelope: &Envelope, binding: Binding) -> Vec<(&'static str, String)> {
    let meta = envelope.meta();
    let names = match binding {
        Binding::Kafka => &KAFKA,
        Binding::Amqp => &AMQP,
        Binding::Nats => &NATS,
    };
    let mut h = Vec::with_capacity(6);
    h.push((names.id, meta.id.clone()));
    h.push((names.source, source(meta)));
    h.push((names.specversion, SPECVERSION.to_string()));
    h.push((names.event_type, meta.event_type.clone()));
    let created = match meta.created {
        Some(secs) => time(secs),
        None if meta.thin => thin_created(envelope.payload()),
        None => None,
    };
    if let Some(t) = created {
        h.push((names.time, t));
    }
    if let Some(s) = &meta.object_id {
        h.push((names.subject, s.clone()));
    }
    h
}

/// `source`: the account the event belongs to, as a Stripe API URL.
pub fn source(meta: &EventMeta) -> String {
    match &meta.account {
        Some(a) => format!("https://api.stripe.com/v1/accounts/{a}"),
        None => "https://api.stripe.com/v1/account".to_string(),
    }
}

/// A thin event's `created`, already RFC 3339 (`2024-09-17T06:20:52.246Z`), when it is one.
fn thin_created(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Created {
        created: Option<String>,
    }
    let created = serde_json::from_slice::<Created>(payload).ok()?.created?;
    humantime::parse_rfc3339(&created).ok()?;
    Some(created)
}

/// Unix seconds as RFC 3339 in UTC (`2023-11-14T22:13:20Z`); `None` before 1970.
pub fn time(created: i64) -> Option<String> {
    let secs = u64::try_from(created).ok()?;
    let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))?;
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(account: Option<&str>, object_id: Option<&str>, created: Option<i64>) -> Envelope {
        let meta = EventMeta {
            id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            api_version: None,
            livemode: true,
            account: account.map(Into::into),
            object_id: object_id.map(Into::into),
            created,
            thin: false,
        };
        Envelope::for_tests(bytes::Bytes::from_static(b"{}"), meta, "")
    }

    #[test]
    fn thin_events_keep_their_own_rfc3339_created() {
        let body = br#"{"id":"evt_test_65R","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered",
            "created":"2024-09-17T06:20:52.246Z","livemode":false,"related_object":{"id":"mtr_1"}}"#;
        let envelope = Envelope::for_tests(bytes::Bytes::from_static(body), EventMeta::parse(body).unwrap(), "");
        let h = headers(&envelope, Binding::Kafka);
        assert!(
            h.contains(&("ce_time", "2024-09-17T06:20:52.246Z".to_string())),
            "{h:?}"
        );
        assert!(h.contains(&("ce_subject", "mtr_1".to_string())), "{h:?}");
        let bad = Envelope::for_tests(
            bytes::Bytes::from_static(br#"{"created":"yesterday"}"#),
            envelope.meta().clone(),
            "",
        );
        assert!(!headers(&bad, Binding::Kafka).iter().any(|(k, _)| *k == "ce_time"));
    }

    #[test]
    fn kafka_names_and_every_attribute() {
        let h = headers(&meta(Some("acct_9"), Some("in_1"), Some(1_700_000_000)), Binding::Kafka);
        let want = [
            ("ce_id", "evt_1"),
            ("ce_source", "https://api.stripe.com/v1/accounts/acct_9"),
            ("ce_specversion", "1.0"),
            ("ce_type", "invoice.paid"),
            ("ce_time", "2023-11-14T22:13:20Z"),
            ("ce_subject", "in_1"),
        ];
        let got: Vec<_> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn amqp_names_and_optional_attributes_left_out() {
        let h = headers(&meta(None, None, None), Binding::Amqp);
        let got: Vec<_> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("cloudEvents:id", "evt_1"),
                ("cloudEvents:source", "https://api.stripe.com/v1/account"),
                ("cloudEvents:specversion", "1.0"),
                ("cloudEvents:type", "invoice.paid"),
            ]
        );
        assert_eq!(headers(&meta(None, None, Some(-1)), Binding::Amqp).len(), 4);
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(time(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(time(1_700_000_000).as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(time(-5), None);
    }

    #[test]
    fn header_mode_reads_from_config() {
        #[derive(Deserialize)]
        struct S {
            headers: HeaderMode,
        }
        let s: S = serde_json::from_str(r#"{"headers":"cloudevents"}"#).unwrap();
        assert_eq!(s.headers, HeaderMode::Cloudevents);
        let s: S = serde_json::from_str(r#"{"headers":"stripe"}"#).unwrap();
        assert_eq!(s.headers, HeaderMode::Stripe);
        assert!(serde_json::from_str::<S>(r#"{"headers":"ce"}"#).is_err());
        assert_eq!(HeaderMode::default(), HeaderMode::Stripe);
    }
}
