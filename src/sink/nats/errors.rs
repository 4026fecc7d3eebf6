//! How the NATS client's errors become retryable (503) or permanent (500) sink errors.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::ErrorCode;

use crate::sink::SinkError;

/// The JetStream API error inside a publish error, when the server sent one.
fn api_error(e: &PublishError) -> Option<&async_nats::jetstream::Error> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
}

/// Sorts a failed publish to `subject`.
pub fn classify(subject: &str, e: &PublishError) -> SinkError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => {
            SinkError::permanent(format!("no JetStream stream stores subject {subject}"))
        }
        PublishErrorKind::MaxPayloadExceeded => SinkError::permanent(format!(
            "the message is larger than the NATS server's max_payload ({subject})"
        )),
        PublishErrorKind::TimedOut => SinkError::retryable(format!(
            "JetStream did not acknowledge the message to {subject} in time"
        )),
        PublishErrorKind::BrokenPipe => SinkError::retryable(format!(
            "the NATS connection was lost before JetStream acknowledged the message to {subject}"
        )),
        PublishErrorKind::MaxAckPending => {
            SinkError::retryable("too many publishes awaiting a JetStream acknowledgement")
        }
        _ => match api_error(e) {
            Some(api) => classify_api(subject, api.error_code(), &api.to_string()),
            None => SinkError::retryable(format!("publishing to {subject} failed: {e}")),
        },
    }
}

/// Sorts a JetStream API error answered to a publish.
pub fn classify_api(subject: &str, code: ErrorCode, text: &str) -> SinkError {
    let permanent = [
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_NOT_FOUND,
        ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        ErrorCode::JETSTREAM_NOT_ENABLED,
    ];
    let message = format!("JetStream refused the message to {subject}: {text}");
    if permanent.contains(&code) {
        SinkError::permanent(message)
    } else {
        // Storage or account limits reached, a stream without a leader, a store failure: may pass.
        SinkError::retryable(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ErrorClass;

    #[test]
    fn kinds_sort_into_classes() {
        let class = |k| classify("stripe.x", &PublishError::new(k)).class;
        assert_eq!(class(PublishErrorKind::StreamNotFound), ErrorClass::Permanent);
        assert_eq!(class(PublishErrorKind::MaxPayloadExceeded), ErrorClass::Permanent);
        assert_eq!(class(PublishErrorKind::TimedOut), ErrorClass::Retryable);
        assert_eq!(class(PublishErrorKind::BrokenPipe), ErrorClass::Retryable);
        assert_eq!(class(PublishErrorKind::MaxAckPending), ErrorClass::Retryable);
        assert_eq!(class(PublishErrorKind::Other), ErrorClass::Retryable);
    }

    #[test]
    fn api_codes_sort_into_classes() {
        let class = |c| classify_api("s", c, "t").class;
        assert_eq!(class(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM), ErrorClass::Permanent);
        assert_eq!(class(ErrorCode::STORAGE_RESOURCES_EXCEEDED), ErrorClass::Retryable);
        assert_eq!(class(ErrorCode::STREAM_STORE_FAILED), ErrorClass::Retryable);
    }
}
