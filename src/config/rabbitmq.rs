//! Config of the `rabbitmq` sink.

use serde::Deserialize;

use super::Problems;

/// An AMQP 0-9-1 connection with publisher confirms.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqSinkConfig {
    /// `amqp://user:pass@host:port/vhost` or `amqps://…`. Printed with the password redacted.
    pub url: String,
    /// Exchange to publish to; declared durable unless it exists.
    pub exchange: String,
}

impl std::fmt::Debug for RabbitMqSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSinkConfig")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl RabbitMqSinkConfig {
    /// Pure checks; `path` is the key path of this sink, e.g. `sinks.amqp`.
    pub fn validate(&self, path: &str, _ack_timeout: std::time::Duration, problems: &mut Problems) {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            problems.push(format!("{path}.url"), "must start with amqp:// or amqps://");
        }
    }
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let redacted = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!(
                "{}://{}@{}{}",
                &url[..scheme_end],
                redacted,
                &authority[at + 1..],
                &rest[authority_end..]
            )
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqps://u@h/v"), "amqps://u@h/v");
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("amqp://u:p@ss@h/"), "amqp://u:***@h/");
    }
}
