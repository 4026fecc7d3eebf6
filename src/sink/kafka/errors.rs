//! Sorting librdkafka errors into retryable (503, Stripe retries) and permanent (500).
//!
//! The rule is "permanent only when the same record can never succeed without a change of
//! config or of the record": too large, a topic that does not exist or cannot exist, missing
//! authorisation. Wrong credentials are *retryable*: fixing the credential (a rotated file) recovers
//! without a restart, and Stripe's retry then succeeds. Everything else (timeouts, transport, full queue, not enough replicas, no
//! leader, brokers down, fatal producer state that a new producer clears) is retryable, and so
//! is anything unknown, because a 503 makes Stripe retry while a wrongly permanent answer would
//! only hide a transient failure.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::sink::{ErrorClass, SinkError};

/// Why the Kafka sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Secret(#[from] crate::sink::kafka::config::SecretOptionError),
    /// librdkafka refused the client config. The reason names the property, never its value:
    /// rdkafka's own error quotes the value, which may be a password, so it is not kept.
    #[error("cannot create the kafka producer: {0}")]
    Producer(String),
}

/// Why the cluster's `auto.create.topics.enable` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AutoCreateError {
    #[error("metadata request failed: {0}")]
    Join(#[source] tokio::task::JoinError),
    #[error("no metadata: {0}")]
    Metadata(#[source] KafkaError),
    #[error("the cluster reports no brokers")]
    NoBrokers,
    /// The reason names the property, never its value (see [`BuildError::Producer`]).
    #[error("cannot create an admin client: {0}")]
    Admin(String),
    #[error("DescribeConfigs failed: {0}")]
    Describe(#[source] KafkaError),
    #[error("DescribeConfigs returned nothing")]
    Nothing,
    #[error("DescribeConfigs for broker {broker}: {code:?}")]
    Refused { broker: i32, code: RDKafkaErrorCode },
    #[error("the broker config has no auto.create.topics.enable")]
    NoSetting,
}

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
        // Not authorised (the credentials are right; the ACLs are not).
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::UnsupportedSASLMechanism
        // The cluster cannot do what the config asks.
        | C::InvalidRequiredAcks
        | C::UnsupportedCompressionType
        | C::UnsupportedVersion => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

/// The cause, in a few plain words first, of a client error that is about credentials or TLS
/// (librdkafka reports these through the client's error callback, not with the records, which
/// only time out). `None` for any other error. librdkafka's reason names files and mechanisms,
/// never a password.
pub fn security_cause(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<String> {
    let r = reason.to_ascii_lowercase();
    let cause = if matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    ) || r.contains("sasl authentication error")
    {
        "authentication failed"
    } else if code == Some(RDKafkaErrorCode::SSL) || r.contains("ssl handshake failed") || r.contains("ssl routines") {
        // With TLS 1.3 the broker refuses a client certificate after the client finished its
        // handshake: the alert arrives as a failed receive ("sslv3 alert certificate unknown").
        if r.contains("certificate verify failed") {
            if r.contains("expired") {
                "broker certificate expired"
            } else {
                "certificate not trusted (the broker's certificate is not signed by a CA in ssl.ca.location)"
            }
        } else if r.contains("alert") {
            "client certificate refused by the broker"
        } else {
            "TLS handshake failed"
        }
    } else {
        return None;
    };
    Some(format!("{cause}: {reason}"))
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
            C::Authentication,
            C::SaslAuthenticationFailed,
        ] {
            assert_eq!(classify_code(c), ErrorClass::Retryable, "{c:?}");
        }
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Retryable);
    }

    #[test]
    fn security_failures_are_named_first() {
        let sasl = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed \
                    during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512";
        let c = security_cause(Some(RDKafkaErrorCode::Authentication), sasl).unwrap();
        assert!(c.starts_with("authentication failed: sasl_ssl://"), "{c}");
        let untrusted = "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::\
                         certificate verify failed: broker certificate could not be verified";
        let c = security_cause(Some(RDKafkaErrorCode::SSL), untrusted).unwrap();
        assert!(c.starts_with("certificate not trusted"), "{c}");
        let refused =
            "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: error:0A000418:SSL routines::tlsv1 alert unknown ca";
        let c = security_cause(Some(RDKafkaErrorCode::SSL), refused).unwrap();
        assert!(c.starts_with("client certificate refused by the broker"), "{c}");
        let after_handshake = "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000416:SSL routines::\
                               sslv3 alert certificate unknown: SSL alert number 46 (after 17ms in state APIVERSION_QUERY)";
        let c = security_cause(Some(RDKafkaErrorCode::BrokerTransportFailure), after_handshake).unwrap();
        assert!(c.starts_with("client certificate refused by the broker"), "{c}");
        assert_eq!(
            security_cause(Some(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down"),
            None
        );
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
