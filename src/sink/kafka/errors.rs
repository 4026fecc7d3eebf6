//! Sorting librdkafka errors into retryable (503, Stripe retries) and permanent (500).
//!
//! The rule is "permanent only when the same record can never succeed without a change of
//! config or of the record": too large, a topic that does not exist or cannot exist, missing
//! authorisation. Everything else (timeouts, transport, full queue, not enough replicas, no
//! leader, brokers down, fatal producer state that a new producer clears) is retryable, and so
//! is anything unknown, because a 503 makes Stripe retry while a wrongly permanent answer would
//! only hide a transient failure.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::sink::{ErrorClass, SinkError};

/// The class of an error code.
pub fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        // The record itself is refused.
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidMessage
        | C::UnsupportedForMessageFormat
        | C::InvalidTimestamp
        // The destination does not exist and will not be created, or cannot be named so.
        | C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::InvalidTopic
        | C::PolicyViolation
        // Not authorised, or the credentials are wrong.
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnsupportedSASLMechanism
        // The cluster cannot do what the config asks.
        | C::InvalidRequiredAcks
        | C::UnsupportedCompressionType
        | C::UnsupportedVersion => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

/// Whether librdkafka says the topic does not exist.
pub fn is_unknown_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
    )
}

/// The class of any error rdkafka returns.
pub fn classify(error: &KafkaError) -> ErrorClass {
    match error.rdkafka_error_code() {
        Some(code) => classify_code(code),
        // Client dropped, no message received, and the like: nothing about the record.
        None => ErrorClass::Retryable,
    }
}

/// A [`SinkError`] for a failed publish to `topic`. rdkafka's messages carry no payload.
pub fn publish_error(sink: &str, topic: &str, error: &KafkaError) -> SinkError {
    let message = match error.rdkafka_error_code() {
        Some(code) => format!("kafka sink {sink}: topic {topic}: {code}"),
        None => format!("kafka sink {sink}: topic {topic}: {error}"),
    };
    SinkError {
        class: classify(error),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_failures_are_permanent_and_transient_ones_retryable() {
        use RDKafkaErrorCode as C;
        for c in [
            C::MessageSizeTooLarge,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::InvalidTopic,
            C::MessageBatchTooLarge,
        ] {
            assert_eq!(classify_code(c), ErrorClass::Permanent, "{c:?}");
        }
        for c in [
            C::MessageTimedOut,
            C::RequestTimedOut,
            C::BrokerTransportFailure,
            C::QueueFull,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::AllBrokersDown,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::PurgeQueue,
            C::PurgeInflight,
            C::Fatal,
            C::OutOfOrderSequenceNumber,
        ] {
            assert_eq!(classify_code(c), ErrorClass::Retryable, "{c:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Retryable);
    }

    #[test]
    fn messages_name_the_sink_topic_and_code() {
        let e = publish_error(
            "events",
            "stripe.x",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.message.starts_with("kafka sink events: topic stripe.x: "),
            "{}",
            e.message
        );
        assert!(e.message.contains("MessageSizeTooLarge"), "{}", e.message);
    }
}
