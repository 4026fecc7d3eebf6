//! Config of the `nats` sink: what serde reads, its validation, and the one-line summary of
//! `check-config`. Compiled with or without the `nats` feature, so a config naming `kind: nats`
//! is always understood (and refused by a build without NATS support).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Deserializer};

use crate::fields::{duration, Problems, SecretSource};
use crate::sink::{BoxError, Destination, Sink, SinkConfig};

/// A NATS connection publishing to JetStream, every message acknowledged by its stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// One server URL or a list: `nats://host:4222`, `tls://host:4222` (TLS required), or
    /// `host:4222`. The client connects to one of them and moves to another when it is lost.
    /// Credentials go in `user`/`password`, `token`, `nkey_seed` or `credentials_file`, not here.
    #[serde(deserialize_with = "servers")]
    pub servers: Vec<String>,
    /// User name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// The password of `user`, from `env`, `file` or `value`.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// A token (the server's `authorization { token }`), from `env`, `file` or `value`.
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// An NKey seed (`SU…`), from `env`, `file` or `value`: the client signs the server's nonce.
    #[serde(default)]
    pub nkey_seed: Option<SecretSource>,
    /// A `.creds` file (a user JWT and its NKey seed), as made by `nsc` for a server in operator
    /// mode (NGS, Synadia Cloud, decentralised auth).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// TLS: a private CA and a client certificate. Setting it requires TLS of every server.
    #[serde(default)]
    pub tls: Option<NatsTlsConfig>,
    /// Create or check the JetStream stream at start and after each reconnection. Absent: the
    /// stream is the platform's business, and a subject that no stream stores is answered 500.
    #[serde(default)]
    pub stream: Option<StreamConfig>,
    /// The most publishes awaiting a JetStream acknowledgement at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The longest one connection attempt (TCP, TLS, handshake) may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts; the backoff starts at 100ms and doubles.
    #[serde(default = "default_reconnect_max_delay", deserialize_with = "duration")]
    pub reconnect_max_delay: Duration,
    /// `cloudevents` adds the CloudEvents attributes as `ce-*` message headers (NATS protocol
    /// binding, binary content mode) to the usual `stripe-*` ones. Default `stripe`.
    #[serde(default)]
    pub headers: crate::sink::cloudevents::HeaderMode,
}

/// TLS of the `nats` sink (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// The CA certificate(s) that signed the servers' certificates. When set, only these are
    /// trusted, not the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain) to present, for a server that verifies clients. Needs
    /// `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PKCS#8, PKCS#1 or SEC1; not encrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// The stream the sink publishes into, managed at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Stream name (letters, digits, `-` and `_`).
    pub name: String,
    /// Subjects the stream stores, wildcards allowed (`stripe.>`): every subject the routes
    /// render must fall under one of them.
    pub subjects: Vec<String>,
    /// `create` (default): create the stream when it is missing, with the settings below; an
    /// existing stream is used as it is if it stores every subject listed. `check`: only check
    /// that it exists and stores them. Either way a failure shows in `/readyz`.
    #[serde(default)]
    pub mode: StreamMode,
    /// Replicas of a stream created by the sink (1, 3 or 5; more than 1 needs a cluster).
    /// The acknowledgement comes once the replicas the stream demands stored the message.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long the stream remembers `Nats-Msg-Id`s to drop duplicates (default 2m, the
    /// server's). A created stream only.
    #[serde(default = "default_duplicate_window", deserialize_with = "duration")]
    pub duplicate_window: Duration,
    /// Largest message the stream accepts, in bytes (0: the server's `max_payload`). A created
    /// stream only.
    #[serde(default)]
    pub max_msg_size: u32,
    /// How long messages are kept (0: forever, until `max_bytes`). A created stream only.
    #[serde(default, deserialize_with = "duration")]
    pub max_age: Duration,
    /// Most bytes the stream keeps; the oldest are dropped beyond it (0: no limit). A created
    /// stream only.
    #[serde(default)]
    pub max_bytes: u64,
}

/// What the sink does with its stream at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    #[default]
    Create,
    Check,
}

fn default_max_in_flight() -> usize {
    1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_max_delay() -> Duration {
    Duration::from_secs(2)
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

/// One URL, a comma-separated list in one string (handy in an environment override), or a list.
fn servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = crate::fields::strings(d, "expected a server URL or a list of server URLs")?;
    Ok(match list.as_slice() {
        [one] => one.split(',').map(|s| s.trim().to_string()).collect(),
        _ => list,
    })
}

/// Whether `name` is a valid stream name: no whitespace, `.`, `*`, `>`, path separators.
fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a subject: dot-separated non-empty tokens of printable ASCII other than space;
/// `wildcards` allows `*` tokens and a final `>`.
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("a subject must not be empty".into());
    }
    // Every published subject passes here: one pass over its tokens, nothing allocated.
    let mut tokens = subject.split('.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() {
            return Err(format!("`{subject}` has an empty token (`..` or a dot at an end)"));
        }
        if t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(format!(
                "`{subject}` holds a space or a character that is not printable ASCII"
            ));
        }
        let wild = t == "*" || (t == ">" && tokens.peek().is_none());
        if t.contains(['*', '>']) && !(wildcards && wild) {
            return Err(if wildcards {
                format!("`{subject}`: `*` must be a whole token and `>` the last one")
            } else {
                format!("`{subject}` has a wildcard; a message goes to one concrete subject")
            });
        }
    }
    Ok(())
}

/// Whether `subject` falls under the subject filter `filter` (`*` one token, `>` the rest).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl NatsSinkConfig {
    /// Checks; `path` is the key path of this sink, e.g. `sinks.nats`. Pure: the secrets, the
    /// credentials file and the TLS files are read by [`Self::read_files`].
    pub fn validate(&self, path: &str, _ack_timeout: Duration, problems: &mut Problems) {
        if !cfg!(feature = "nats") {
            problems.push(format!("{path}.kind"), "this build of hookbridge has no nats support");
        }
        if self.servers.is_empty() {
            problems.push(format!("{path}.servers"), "list at least one server URL");
        }
        for (i, s) in self.servers.iter().enumerate() {
            if let Err(e) = check_server(s) {
                problems.push(format!("{path}.servers[{i}]"), e);
            }
        }
        let methods = [
            ("user", self.user.is_some() || self.password.is_some()),
            ("token", self.token.is_some()),
            ("nkey_seed", self.nkey_seed.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
        ];
        let chosen: Vec<&str> = methods.iter().filter(|(_, set)| *set).map(|(k, _)| *k).collect();
        if chosen.len() > 1 {
            problems.push(
                format!("{path}.{}", chosen[1]),
                format!("set one way to log in, not {}", chosen.join(" and ")),
            );
        }
        match (&self.user, &self.password) {
            (Some(_), None) => problems.push(format!("{path}.password"), "is needed with user"),
            (None, Some(_)) => problems.push(format!("{path}.user"), "is needed with password"),
            (Some(u), Some(_)) if u.is_empty() => problems.push(format!("{path}.user"), "must not be empty"),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => problems.push(format!("{path}.tls.key_file"), "is needed with cert_file"),
                (None, Some(_)) => problems.push(format!("{path}.tls.cert_file"), "is needed with key_file"),
                _ => {}
            }
        }
        if let Some(stream) = &self.stream {
            stream.validate(&format!("{path}.stream"), problems);
        }
        if self.max_in_flight == 0 || self.max_in_flight > 65_536 {
            problems.push(format!("{path}.max_in_flight"), "must be between 1 and 65536");
        }
        if self.connect_timeout.is_zero() {
            problems.push(format!("{path}.connect_timeout"), "must be greater than 0");
        }
        if self.reconnect_max_delay < Duration::from_millis(100) {
            problems.push(format!("{path}.reconnect_max_delay"), "must be at least 100ms");
        }
    }

    /// Reads the secrets, the credentials file and the TLS files now (when the runtime is built,
    /// never while validating), pushing a problem at the key of each that cannot be used.
    pub fn read_files(&self, path: &str, problems: &mut Problems) {
        for (key, source) in [
            ("password", &self.password),
            ("token", &self.token),
            ("nkey_seed", &self.nkey_seed),
        ] {
            if let Some(source) = source {
                match source.load() {
                    Err(e) => problems.push(format!("{path}.{key}"), e.to_string()),
                    Ok(secret) if key == "nkey_seed" => {
                        if let Err(e) = check_nkey_seed(secret.expose()) {
                            problems.push(format!("{path}.{key}"), e);
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        if let Some(file) = &self.credentials_file {
            if let Err(e) = read_credentials(file) {
                problems.push(format!("{path}.credentials_file"), e);
            }
        }
        if let Some(tls) = &self.tls {
            if let Err((key, e)) = crate::sink::tls::client_config(
                tls.ca_file.as_deref(),
                tls.cert_file.as_deref(),
                tls.key_file.as_deref(),
            ) {
                problems.push(format!("{path}.tls.{key}"), e);
            }
        }
    }

    /// Files the sink reads its credentials from; when one changes the sink is rebuilt (see
    /// `app::State::poll_files`).
    pub fn credential_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [&self.password, &self.token, &self.nkey_seed]
            .into_iter()
            .flatten()
            .filter_map(|s| s.file.clone())
            .collect();
        files.extend(self.credentials_file.iter().cloned());
        if let Some(tls) = &self.tls {
            files.extend(
                [&tls.ca_file, &tls.cert_file, &tls.key_file]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        files
    }

    /// How the sink logs in, for `check-config` and logs (never a secret).
    pub fn auth_label(&self) -> String {
        if let (Some(user), Some(p)) = (&self.user, &self.password) {
            format!("user {user} password {p}")
        } else if let Some(t) = &self.token {
            format!("token {t}")
        } else if let Some(n) = &self.nkey_seed {
            format!("nkey_seed {n}")
        } else if let Some(f) = &self.credentials_file {
            format!("credentials_file {}", f.display())
        } else {
            "no credentials".into()
        }
    }

    /// One line for `check-config`: servers, login, TLS files and stream (secrets redacted).
    pub fn summary(&self) -> String {
        let mut out = format!(
            "servers {} {} max_in_flight {}",
            self.servers.join(","),
            self.auth_label(),
            self.max_in_flight
        );
        if let Some(tls) = &self.tls {
            let files: Vec<String> = [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ]
            .into_iter()
            .filter_map(|(k, f)| f.as_ref().map(|f| format!("{k} {}", f.display())))
            .collect();
            out.push_str(&format!(" tls {{{}}}", files.join(", ")));
        }
        if let Some(s) = &self.stream {
            out.push_str(&format!(
                "; stream {} ({}) <- {}",
                s.name,
                match s.mode {
                    StreamMode::Create => "create",
                    StreamMode::Check => "check",
                },
                s.subjects.join(", ")
            ));
        }
        out
    }
}

impl StreamConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if !valid_stream_name(&self.name) {
            problems.push(format!("{path}.name"), "use 1 to 255 letters, digits, `-` and `_`");
        }
        if self.subjects.is_empty() {
            problems.push(format!("{path}.subjects"), "list at least one subject");
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if let Err(e) = check_subject(s, true) {
                problems.push(format!("{path}.subjects[{i}]"), e);
            }
        }
        if ![1, 3, 5].contains(&self.replicas) {
            problems.push(format!("{path}.replicas"), "must be 1, 3 or 5");
        }
        if self.duplicate_window.is_zero() {
            problems.push(
                format!("{path}.duplicate_window"),
                "must be greater than 0 (it is what drops Stripe's redeliveries)",
            );
        }
        if self.max_msg_size > i32::MAX as u32 {
            problems.push(format!("{path}.max_msg_size"), "must be at most 2147483647");
        }
        if self.max_bytes > i64::MAX as u64 {
            problems.push(format!("{path}.max_bytes"), "is too large");
        }
    }
}

impl SinkConfig for NatsSinkConfig {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn destination(&self) -> Destination {
        Destination::Subject
    }

    fn validate(&self, path: &str, ack_timeout: Duration, problems: &mut Problems) {
        NatsSinkConfig::validate(self, path, ack_timeout, problems);
    }

    fn read_files(&self, path: &str, _ack_timeout: Duration, problems: &mut Problems) {
        NatsSinkConfig::read_files(self, path, problems);
    }

    fn credential_files(&self) -> Vec<PathBuf> {
        NatsSinkConfig::credential_files(self)
    }

    fn describe(&self, _ack_timeout: Duration) -> String {
        self.summary()
    }

    fn build<'a>(&'a self, name: &'a str, ack_timeout: Duration) -> BoxFuture<'a, Result<Arc<dyn Sink>, BoxError>> {
        #[cfg(feature = "nats")]
        {
            async move {
                super::NatsSink::new(name, self, ack_timeout)
                    .await
                    .map(|sink| Arc::new(sink) as Arc<dyn Sink>)
                    .map_err(BoxError::from)
            }
            .boxed()
        }
        #[cfg(not(feature = "nats"))]
        {
            let _ = (name, ack_timeout);
            futures::future::ready(Err(BoxError::from("this build has no nats support"))).boxed()
        }
    }
}

/// A server URL as the client reads it: `nats://`, `tls://` or no scheme, then `host:port`
/// without credentials.
fn check_server(url: &str) -> Result<(), String> {
    let rest = match url.split_once("://") {
        Some(("nats" | "tls", rest)) => rest,
        Some((scheme, _)) => return Err(format!("scheme `{scheme}://` is not nats:// or tls://")),
        None => url,
    };
    if rest.contains('@') {
        return Err("put credentials in user/password, token, nkey_seed or credentials_file, not in the URL".into());
    }
    let host = rest
        .rsplit_once(':')
        .map_or(rest, |(h, port)| if port.parse::<u16>().is_err() { "" } else { h });
    if host.is_empty() || rest.contains(['/', ' ', '?']) {
        return Err(format!("`{url}` is not a server URL such as nats://127.0.0.1:4222"));
    }
    Ok(())
}

/// An NKey seed of a user: `SU` and base32. The error never echoes it.
fn check_nkey_seed(seed: &[u8]) -> Result<(), String> {
    #[cfg(feature = "nats")]
    {
        let seed = std::str::from_utf8(seed).map_err(|_| "is not an NKey seed (not UTF-8)".to_string())?;
        if !seed.starts_with("SU") {
            return Err("is not a user NKey seed (it starts with SU)".into());
        }
        nkeys::KeyPair::from_seed(seed)
            .map(|_| ())
            .map_err(|_| "is not a valid NKey seed".to_string())
    }
    #[cfg(not(feature = "nats"))]
    {
        let _ = seed;
        Ok(())
    }
}

/// Reads and parses a `.creds` file (its JWT and seed); the error names the file, never its
/// content.
pub fn read_credentials(file: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {}", file.display(), crate::fields::io_reason(&e)))?;
    #[cfg(feature = "nats")]
    async_nats::ConnectOptions::with_credentials(&text).map_err(|_| {
        format!(
            "{} is not a NATS credentials file (a user JWT and an NKey seed)",
            file.display()
        )
    })?;
    Ok(text)
}

#[cfg(test)]
mod tests;
