//! Configuration in three shapes: what serde reads ([`raw`]), what validation proves
//! ([`Settings`]), and what the runtime builds from it (in `app`).
//!
//! Layering: serde defaults, then the YAML file (which must exist), then `HOOKBRIDGE__…`
//! environment overrides with `__` between levels. [`validate`] is pure (it reads no file and no
//! environment variable) and reports every problem with its key path; [`read_secrets`] then reads
//! what the config names outside itself (signing secrets, sink credentials, the webhook TLS
//! certificate) when the runtime is built, reporting problems the same way.

pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Yaml};
use figment::Figment;

pub use crate::fields::{Problem, Problems, Secret, SecretSource};
pub use crate::sink::SinkSettings;
pub use raw::RawConfig;

use crate::route::{Filters, Glob, Route, Router, Target, Template};

/// The default config path when neither `--config` nor `$HOOKBRIDGE_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/hookbridge.yaml";
/// Prefix of environment overrides. Ends in `__` so that Kubernetes' `HOOKBRIDGE_PORT=tcp://…`
/// service variables are not read as config.
pub const ENV_PREFIX: &str = "HOOKBRIDGE__";

/// Why the config could not be loaded. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    NotFound(String),
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("invalid config {}: {}", .file, join(.problems))]
    Invalid { file: String, problems: Vec<Problem> },
}

impl ConfigError {
    /// Problems as one line, separated by `; `.
    pub fn join(problems: &[Problem]) -> String {
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    }

    /// The problems found, for tests and tools.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn join(problems: &[Problem]) -> String {
    ConfigError::join(problems)
}

/// Which file to read: `--config`, else `$HOOKBRIDGE_CONFIG`, else `config/hookbridge.yaml`.
pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| {
        std::env::var_os("HOOKBRIDGE_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Reads and validates the config at `path` with environment overrides.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let raw = load_raw(path)?;
    validate(raw).map_err(|problems| ConfigError::Invalid {
        file: path.display().to_string(),
        problems,
    })
}

/// Reads the config at `path` with environment overrides, without validating it.
pub fn load_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(ConfigError::Unreadable {
                path: path.display().to_string(),
                reason: "not a regular file".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::NotFound(path.display().to_string()))
        }
        Err(e) => {
            return Err(ConfigError::Unreadable {
                path: path.display().to_string(),
                reason: crate::fields::io_reason(&e),
            })
        }
    }
    // Read the file ourselves so an unreadable file is an error, not an empty layer.
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        path: path.display().to_string(),
        reason: crate::fields::io_reason(&e),
    })?;
    from_figment(
        Figment::new()
            .merge(Yaml::string(&text))
            .merge(Env::prefixed(ENV_PREFIX).split("__")),
        &path.display().to_string(),
    )
}

/// Parses config text (YAML) without environment overrides; for tests and examples.
pub fn parse_str(yaml: &str) -> Result<RawConfig, ConfigError> {
    from_figment(Figment::new().merge(Yaml::string(yaml)), "<string>")
}

fn from_figment(figment: Figment, file: &str) -> Result<RawConfig, ConfigError> {
    figment.extract::<RawConfig>().map_err(|err| ConfigError::Invalid {
        file: file.to_string(),
        problems: err
            .into_iter()
            .map(|e| Problem {
                path: e.path.join("."),
                message: one_line(&e.kind.to_string()),
            })
            .collect(),
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A validated config: every name resolved, every template compiled. Nothing outside the config
/// has been read yet: [`read_secrets`] does that when the runtime is built.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: u64,
    pub ack_timeout: Duration,
    pub endpoints: Vec<EndpointSettings>,
    /// Sinks sorted by name; [`Target::sink`] indexes this list.
    pub sinks: Vec<SinkSettings>,
    pub router: Router,
    pub dedup: raw::RawDedup,
    pub log: LogSettings,
    pub http: HttpSettings,
}

/// Validated hardening settings of the webhook port.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_header_bytes: usize,
    pub max_buffered_bytes: usize,
    pub max_connections: usize,
    pub tls: Option<raw::RawTls>,
    /// Empty allows every address.
    pub allow_networks: Vec<ipnet::IpNet>,
    /// Lower-case header name, when set.
    pub client_ip_header: Option<http::HeaderName>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A validated endpoint.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub path: String,
    pub tolerance: Duration,
    /// How far in the future the signed timestamp may be.
    pub future_tolerance: Duration,
    /// Where each secret comes from; read by [`read_secrets`] (and again on rotation).
    pub sources: Vec<SecretSource>,
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub json: bool,
    pub level: String,
}

fn valid_sink_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The signing secrets of each endpoint, read when the runtime is built (same order as
/// [`Settings::endpoints`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<Vec<Secret>>);

/// Reads what a validated config names outside itself, now: every endpoint's signing secrets
/// (returned), and each sink's secrets and credential files and the webhook TLS certificate and
/// key (checked; they are read again where they are used). Runs when the runtime is built
/// (`serve`, `check-config`, `route`, `replay`, a reload), after [`validate`]; problems name their
/// key like validation's, so a missing file is the same one-line config error.
pub fn read_secrets(settings: &Settings) -> Result<Secrets, Vec<Problem>> {
    let mut p = Problems::default();
    let mut secrets = Vec::with_capacity(settings.endpoints.len());
    for (i, ep) in settings.endpoints.iter().enumerate() {
        let mut read = Vec::with_capacity(ep.sources.len());
        for (j, src) in ep.sources.iter().enumerate() {
            match src.load() {
                Ok(s) => read.push(s),
                Err(e) => p.push(format!("endpoints[{i}].secrets[{j}]"), e.to_string()),
            }
        }
        secrets.push(read);
    }
    for sink in &settings.sinks {
        let path = format!("sinks.{}", sink.name);
        sink.config.config().read_files(&path, settings.ack_timeout, &mut p);
    }
    if let Some(tls) = &settings.http.tls {
        if let Err(e) = crate::tls::load_certified_key(&tls.cert_file, &tls.key_file) {
            p.push("http.tls", e.to_string());
        }
    }
    if p.is_empty() {
        Ok(Secrets(secrets))
    } else {
        Err(p.into_vec())
    }
}

/// Reads and validates the config at `path`, then reads its secrets: what `check-config` and
/// `route` need, with the same one-line error for both kinds of problem.
pub fn load_with_secrets(path: &Path) -> Result<(Settings, Secrets), ConfigError> {
    let settings = load(path)?;
    let secrets = read_secrets(&settings).map_err(|problems| ConfigError::Invalid {
        file: path.display().to_string(),
        problems,
    })?;
    Ok((settings, secrets))
}

/// Proves a raw config usable, or lists every problem with its key path. Pure: reads nothing.
pub fn validate(raw: RawConfig) -> Result<Settings, Vec<Problem>> {
    let mut p = Problems::default();

    let listen = parse_addr("listen", &raw.listen, &mut p);
    let admin_listen = parse_addr("admin_listen", &raw.admin_listen, &mut p);
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        let overlap = l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified();
        if l.port() == a.port() && l.port() != 0 && overlap {
            p.push("admin_listen", "must not be the webhook port (`listen`)");
        }
    }
    if raw.max_body_bytes == 0 {
        p.push("max_body_bytes", "must be greater than 0");
    }
    if raw.ack_timeout.is_zero() {
        p.push("ack_timeout", "must be greater than 0");
    }
    at_most(&mut p, "ack_timeout", raw.ack_timeout, MAX_ACK_TIMEOUT);
    at_most(&mut p, "dedup.ttl", raw.dedup.ttl, Duration::from_secs(7 * 24 * 3600));
    at_most(
        &mut p,
        "http.header_read_timeout",
        raw.http.header_read_timeout,
        Duration::from_secs(3600),
    );
    at_most(
        &mut p,
        "http.body_read_timeout",
        raw.http.body_read_timeout,
        Duration::from_secs(3600),
    );

    let endpoints = validate_endpoints(&raw, &mut p);

    let mut sinks = Vec::new();
    if raw.sinks.is_empty() {
        p.push("sinks", "define at least one sink");
    }
    for (name, sink) in &raw.sinks {
        let path = format!("sinks.{name}");
        if !valid_sink_name(name) {
            p.push(&path, "sink names use letters, digits, `_` and `-` only");
        }
        sink.config().validate(&path, raw.ack_timeout, &mut p);
        sinks.push(SinkSettings {
            name: name.clone(),
            config: sink.clone(),
        });
    }

    let router = validate_routes(&raw, &sinks, &mut p);

    if raw.dedup.capacity > 0 && raw.dedup.ttl.is_zero() {
        p.push(
            "dedup.ttl",
            "must be greater than 0 (set dedup.capacity to 0 to turn dedup off)",
        );
    }
    if raw.dedup.capacity > 0 && raw.dedup.max_bytes < 4096 {
        p.push(
            "dedup.max_bytes",
            "must be at least 4096 (set dedup.capacity to 0 to turn dedup off)",
        );
    }
    let json = match raw.log.format.as_str() {
        "text" => false,
        "json" => true,
        _ => {
            p.push("log.format", "must be `text` or `json`");
            false
        }
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        p.push("log.level", format!("is not a valid filter: {e}"));
    }

    let http = validate_http(&raw.http, &mut p);
    if (http.max_buffered_bytes as u64) < raw.max_body_bytes {
        p.push(
            "http.max_buffered_bytes",
            format!("must be at least max_body_bytes ({})", raw.max_body_bytes),
        );
    }

    if !p.is_empty() {
        return Err(p.into_vec());
    }
    Ok(Settings {
        listen: listen.expect("checked above"),
        admin_listen: admin_listen.expect("checked above"),
        max_body_bytes: raw.max_body_bytes,
        ack_timeout: raw.ack_timeout,
        endpoints,
        sinks,
        router,
        dedup: raw.dedup,
        log: LogSettings {
            json,
            level: raw.log.level,
        },
        http,
    })
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (a /32 or /128 network).
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn validate_http(raw: &raw::RawHttp, p: &mut Problems) -> HttpSettings {
    if raw.header_read_timeout.is_zero() {
        p.push("http.header_read_timeout", "must be greater than 0");
    }
    if raw.body_read_timeout.is_zero() {
        p.push("http.body_read_timeout", "must be greater than 0");
    }
    if raw.max_concurrent_requests == 0 {
        p.push("http.max_concurrent_requests", "must be at least 1");
    }
    if raw.max_header_bytes < 8192 {
        p.push("http.max_header_bytes", "must be at least 8192");
    }
    if raw.max_connections == 0 {
        p.push("http.max_connections", "must be at least 1");
    }
    let mut networks = |key: &str, list: &[String]| -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, n) in list.iter().enumerate() {
            match parse_network(n) {
                Some(net) => out.push(net.trunc()),
                None => p.push(
                    format!("http.{key}[{i}]"),
                    format!("`{n}` is not a CIDR such as 10.0.0.0/8 or an IP"),
                ),
            }
        }
        out
    };
    let allow_networks = networks("allow_networks", &raw.allow_networks);
    let trusted_proxies = networks("trusted_proxies", &raw.trusted_proxies);
    let client_ip_header = if raw.client_ip_header.trim().is_empty() {
        None
    } else {
        match http::HeaderName::from_bytes(raw.client_ip_header.trim().to_ascii_lowercase().as_bytes()) {
            Ok(h) => {
                if trusted_proxies.is_empty() {
                    p.push(
                        "http.trusted_proxies",
                        "list the proxies allowed to set http.client_ip_header (otherwise any client could)",
                    );
                }
                Some(h)
            }
            Err(_) => {
                p.push("http.client_ip_header", "is not a valid header name");
                None
            }
        }
    };
    HttpSettings {
        header_read_timeout: raw.header_read_timeout,
        body_read_timeout: raw.body_read_timeout,
        max_concurrent_requests: raw.max_concurrent_requests,
        max_header_bytes: raw.max_header_bytes,
        max_buffered_bytes: raw.max_buffered_bytes,
        max_connections: raw.max_connections,
        tls: raw.tls.clone(),
        allow_networks,
        client_ip_header,
        trusted_proxies,
    }
}

/// The longest `ack_timeout` accepted: Stripe itself gives up on an answer long before.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(600);

fn at_most(p: &mut Problems, key: &str, value: Duration, max: Duration) {
    p.at_most(key, value, max);
}

fn parse_addr(key: &str, value: &str, p: &mut Problems) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(key, format!("`{value}` is not an IP:PORT address such as 0.0.0.0:8080"));
            None
        }
    }
}

fn validate_endpoints(raw: &RawConfig, p: &mut Problems) -> Vec<EndpointSettings> {
    if raw.endpoints.is_empty() {
        p.push("endpoints", "define at least one endpoint");
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, ep) in raw.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        if !ep.path.starts_with('/') || ep.path.contains(['?', '#', ' ']) {
            p.push(
                format!("{path}.path"),
                "must be a URL path starting with `/`, without query",
            );
        } else if !seen.insert(ep.path.clone()) {
            p.push(
                format!("{path}.path"),
                format!("`{}` is used by another endpoint", ep.path),
            );
        }
        if ep.tolerance.is_zero() {
            p.push(format!("{path}.tolerance"), "must be greater than 0");
        }
        at_most(
            p,
            &format!("{path}.tolerance"),
            ep.tolerance,
            Duration::from_secs(24 * 3600),
        );
        at_most(
            p,
            &format!("{path}.future_tolerance"),
            ep.future_tolerance,
            Duration::from_secs(24 * 3600),
        );
        if ep.secrets.is_empty() {
            p.push(
                format!("{path}.secrets"),
                "list at least one secret (env, file or value)",
            );
        }
        for (j, src) in ep.secrets.iter().enumerate() {
            if let Err(e) = src.check() {
                p.push(format!("{path}.secrets[{j}]"), e.to_string());
            }
        }
        out.push(EndpointSettings {
            path: ep.path.clone(),
            tolerance: ep.tolerance,
            future_tolerance: ep.future_tolerance,
            sources: ep.secrets.clone(),
        });
    }
    out
}

fn validate_routes(raw: &RawConfig, sinks: &[SinkSettings], p: &mut Problems) -> Router {
    if raw.routes.is_empty() {
        p.push(
            "routes",
            "define at least one route (use match: \"*\" to send every event somewhere)",
        );
    }
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if r.patterns.is_empty() {
            p.push(format!("{path}.match"), "list at least one glob");
        }
        for (j, g) in r.patterns.iter().enumerate() {
            if g.is_empty() {
                p.push(format!("{path}.match[{j}]"), "a glob must not be empty");
            }
        }
        if r.to.is_empty() {
            p.push(format!("{path}.to"), "list at least one target");
        }
        let targets =
            r.to.iter()
                .enumerate()
                .filter_map(|(j, t)| validate_target(&format!("{path}.to[{j}]"), t, sinks, p))
                .collect();
        let filters = validate_filters(&path, r, raw, p);
        let dead_letter = r
            .dead_letter
            .as_ref()
            .and_then(|t| validate_target(&format!("{path}.dead_letter"), t, sinks, p));
        routes.push(Route {
            patterns: r.patterns.iter().map(|g| Glob::new(g)).collect(),
            filters,
            targets,
            dead_letter,
        });
    }
    let dead_letter = raw
        .dead_letter
        .as_ref()
        .and_then(|t| validate_target("dead_letter", t, sinks, p));
    Router::new(routes).with_dead_letter(dead_letter)
}

/// A route's `livemode`, `account` and `endpoint` conditions.
fn validate_filters(path: &str, r: &raw::RawRoute, raw: &RawConfig, p: &mut Problems) -> Filters {
    let mut filters = Filters {
        livemode: r.livemode,
        ..Filters::default()
    };
    if let Some(accounts) = &r.account {
        if accounts.is_empty() {
            p.push(
                format!("{path}.account"),
                "list at least one account glob (`platform` for events without an account), or leave it out",
            );
        }
        for (j, a) in accounts.iter().enumerate() {
            if a.trim().is_empty() {
                p.push(format!("{path}.account[{j}]"), "an account glob must not be empty");
            }
            filters.accounts.push(Glob::new(a));
        }
    }
    if let Some(endpoints) = &r.endpoint {
        if endpoints.is_empty() {
            p.push(
                format!("{path}.endpoint"),
                "list at least one endpoint path, or leave it out",
            );
        }
        for (j, e) in endpoints.iter().enumerate() {
            if !raw.endpoints.iter().any(|ep| &ep.path == e) {
                let known: Vec<_> = raw.endpoints.iter().map(|ep| ep.path.as_str()).collect();
                p.push(
                    format!("{path}.endpoint[{j}]"),
                    format!("no endpoint has path `{e}` (known: {})", known.join(", ")),
                );
            }
            filters.endpoints.push(e.clone());
        }
    }
    filters
}

/// One target (of a route's `to`, or a `dead_letter`): its sink must exist and its destination
/// field fit the sink's kind.
fn validate_target(tpath: &str, t: &raw::RawTarget, sinks: &[SinkSettings], p: &mut Problems) -> Option<Target> {
    let Some(index) = sinks.iter().position(|s| s.name == t.sink) else {
        let known: Vec<_> = sinks.iter().map(|s| s.name.as_str()).collect();
        p.push(
            format!("{tpath}.sink"),
            format!("no sink named `{}` (known: {})", t.sink, known.join(", ")),
        );
        return None;
    };
    let kind = sinks[index].config.kind();
    let key = sinks[index].config.config().destination().key();
    let given = [
        ("topic", &t.topic),
        ("routing_key", &t.routing_key),
        ("subject", &t.subject),
    ];
    if let Some((other, _)) = given.iter().find(|(f, v)| v.is_some() && *f != key) {
        p.push(
            format!("{tpath}.{other}"),
            format!("a {kind} sink takes `{key}`, not `{other}`"),
        );
        return None;
    }
    let Some(value) = given.iter().find(|(f, _)| *f == key).and_then(|(_, v)| v.as_ref()) else {
        p.push(format!("{tpath}.{key}"), format!("a {kind} sink needs a `{key}`"));
        return None;
    };
    match Template::parse(value) {
        Ok(destination) => Some(Target {
            sink: index,
            sink_name: t.sink.clone(),
            destination,
        }),
        Err(e) => {
            p.push(format!("{tpath}.{key}"), format!("template `{value}` {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests;
