//! Secrets: where they come from, and a newtype that never prints its value.

use std::path::PathBuf;

use serde::Deserialize;

/// A secret value. `Debug` prints `Secret(redacted)`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret's bytes. Call sites are few and reviewed: none logs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Where an endpoint secret is read from. Exactly one of the three fields is set.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// Path of a file holding the secret (trailing whitespace is ignored). Re-read when it changes.
    pub file: Option<PathBuf>,
    /// The secret itself. For tests and quick starts only.
    pub value: Option<String>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.env, &self.file, &self.value) {
            (Some(e), None, None) => write!(f, "env:{e}"),
            (None, Some(p), None) => write!(f, "file:{}", p.display()),
            (None, None, Some(_)) => f.write_str("value:redacted"),
            _ => f.write_str("invalid secret source"),
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why a secret could not be read. Names the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("set one of `env`, `file` or `value`")]
    NoSource,
    #[error("set only one of `env`, `file` or `value`")]
    SeveralSources,
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read secret file {}: {}", .path.display(), io_reason(.source))]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Checks that exactly one source is given, without reading it: what validation can know.
    pub fn check(&self) -> Result<(), SecretError> {
        match (&self.env, &self.file, &self.value) {
            (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => Ok(()),
            (None, None, None) => Err(SecretError::NoSource),
            _ => Err(SecretError::SeveralSources),
        }
    }

    /// Reads the secret now. The error names the source, never the value.
    pub fn load(&self) -> Result<Secret, SecretError> {
        self.check()?;
        let raw = match (&self.env, &self.file, &self.value) {
            (Some(name), _, _) => std::env::var(name).map_err(|e| match e {
                std::env::VarError::NotPresent => SecretError::EnvNotSet(name.clone()),
                std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode(name.clone()),
            })?,
            (_, Some(path), _) => std::fs::read_to_string(path).map_err(|source| SecretError::File {
                path: path.clone(),
                source,
            })?,
            (_, _, Some(v)) => v.clone(),
            (None, None, None) => return Err(SecretError::NoSource),
        };
        let trimmed = raw.trim_end_matches(['\n', '\r', ' ', '\t']);
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret::new(trimmed.as_bytes()))
    }
}

/// A short reason for an I/O error, without the OS error number noise.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let s = Secret::new(&b"whsec_abc"[..]);
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
        let src = SecretSource {
            value: Some("whsec_abc".into()),
            ..Default::default()
        };
        assert!(!format!("{src:?}").contains("abc"));
    }

    #[test]
    fn loads_from_each_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "whsec_file\n").unwrap();
        let file = SecretSource {
            file: Some(path),
            ..Default::default()
        };
        assert_eq!(file.load().unwrap().expose(), b"whsec_file");
        let value = SecretSource {
            value: Some("whsec_v".into()),
            ..Default::default()
        };
        assert_eq!(value.load().unwrap().expose(), b"whsec_v");
        let env = SecretSource {
            env: Some("HOOKBRIDGE_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        assert!(env.load().unwrap_err().to_string().contains("is not set"));
    }

    #[test]
    fn rejects_none_both_and_empty() {
        assert!(SecretSource::default().load().is_err());
        let both = SecretSource {
            env: Some("X".into()),
            value: Some("y".into()),
            ..Default::default()
        };
        assert!(both.load().unwrap_err().to_string().contains("only one"));
        assert!(both.check().is_err() && SecretSource::default().check().is_err());
        let empty = SecretSource {
            value: Some(" \n".into()),
            ..Default::default()
        };
        assert!(empty.load().unwrap_err().to_string().contains("empty"));
    }
}
