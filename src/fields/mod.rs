//! The pieces every config is made of, shared by the whole-file config ([`crate::config`]) and
//! each sink's own config (`sink::*::config`): problems named by their key path, secret sources,
//! duration and scalar fields. Depends on nothing else in the crate, so both can use it.

pub mod secret;

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use secret::{io_reason, Secret, SecretError, SecretSource};

/// A problem found in the config, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects problems during validation.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A problem at `key` when `value` is longer than `max`.
    pub fn at_most(&mut self, key: &str, value: Duration, max: Duration) {
        if value > max {
            self.push(key, format!("must be at most {}", humantime::format_duration(max)));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// Reads a duration written as `300s`, `5s`, `250ms`, `1m` (also accepts a bare number of seconds).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Like [`duration`], for optional fields.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Parses `300s`, `5s`, `250ms`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, NotADuration> {
    humantime::parse_duration(text.trim()).map_err(|source| NotADuration {
        text: text.to_string(),
        source,
    })
}

/// A duration field that does not read as one.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a duration; write it like 300s, 5s or 250ms")]
pub struct NotADuration {
    text: String,
    #[source]
    source: humantime::DurationError,
}

/// One string or a list of strings, as a list; `expected` is the error otherwise.
pub fn strings<'de, D: Deserializer<'de>>(d: D, expected: &str) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    match Raw::deserialize(d) {
        Ok(Raw::One(s)) => Ok(vec![s]),
        Ok(Raw::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(expected)),
    }
}

/// A scalar option value (string, number or boolean) kept as text, e.g. librdkafka properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
        }
        Ok(Scalar(
            match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a string, number or boolean"))? {
                Raw::S(s) => s,
                Raw::I(i) => i.to_string(),
                Raw::U(u) => u.to_string(),
                Raw::F(f) => f.to_string(),
                Raw::B(b) => b.to_string(),
            },
        ))
    }
}
