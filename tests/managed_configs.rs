//! Every managed-service example under config/managed/ (documented in docs/kafka.md and
//! docs/rabbitmq.md) loads and validates, as `check-config` would: so the documented configs
//! cannot rot. librdkafka checks every Kafka property name and value, OIDC included.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use hookbridge::sink::SinkKind;

#[test]
fn every_managed_service_example_is_a_valid_config() {
    // The secrets the examples read from the environment.
    for (name, value) in [
        ("STRIPE_WEBHOOK_SECRET", "whsec_example"),
        ("KAFKA_SASL_PASSWORD", "example-password"),
        ("KAFKA_OAUTH_CLIENT_SECRET", "example-client-secret"),
        ("RABBITMQ_PASSWORD", "example-password"),
    ] {
        std::env::set_var(name, value);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/managed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "kafka-confluent-cloud.yaml",
        "kafka-confluent-cloud-oauth.yaml",
        "kafka-msk-scram.yaml",
        "kafka-msk-mtls.yaml",
        "kafka-aiven.yaml",
        "kafka-redpanda-cloud.yaml",
        "rabbitmq-amazon-mq.yaml",
        "rabbitmq-cloudamqp.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is missing from {names:?}"
        );
    }
    for file in &files {
        let settings = hookbridge::config::load(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(settings.sinks.len(), 1, "{}", file.display());
        match &settings.sinks[0].config {
            SinkKind::Kafka(k) => {
                let props = k.properties(settings.ack_timeout);
                let protocol = props["security.protocol"].to_ascii_uppercase();
                assert!(
                    protocol == "SASL_SSL" || protocol == "SSL",
                    "{}: a managed cluster is reached over TLS",
                    file.display()
                );
            }
            SinkKind::Rabbitmq(r) => assert!(r.url.starts_with("amqps://"), "{}", file.display()),
            _ => panic!("{}: a kafka or rabbitmq sink", file.display()),
        }
    }
}
