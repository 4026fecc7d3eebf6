//! Prometheus metrics, served on the admin port at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointReason {
    pub endpoint: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkDestination {
    pub sink: String,
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkError {
    pub sink: String,
    pub destination: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

/// Labels of `hookbridge_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

/// The crate version, and the git commit it was built from ("unknown" without git; build.rs).
pub const BUILD: BuildLabels = BuildLabels {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("HOOKBRIDGE_GIT_COMMIT"),
};

/// A dead-lettered message: the sink of the target that refused it, and the dead-letter sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLettered {
    pub sink: String,
    pub dead_letter_sink: String,
}

/// Every metric hookbridge exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<EndpointStatus, Counter>,
    pub rejected: Family<EndpointReason, Counter>,
    pub unrouted: Family<EndpointLabel, Counter>,
    pub duplicates: Family<EndpointLabel, Counter>,
    pub published: Family<SinkDestination, Counter>,
    pub publish_errors: Family<SinkError, Counter>,
    pub ack_seconds: Histogram,
    pub publish_seconds: Family<SinkLabel, Histogram>,
    pub in_flight: Gauge,
    pub sink_up: Family<SinkLabel, Gauge>,
    pub dead_lettered: Family<DeadLettered, Counter>,
    // The webhook port's edge: connections and the request-body memory budget.
    pub connections: Gauge,
    pub connections_refused: Family<ReasonLabel, Counter>,
    pub buffered_bytes: Gauge,
    pub budget_refused: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookbridge");
        let requests = Family::<EndpointStatus, Counter>::default();
        registry.register(
            "requests",
            "Webhook requests answered, by endpoint and HTTP status",
            requests.clone(),
        );
        let rejected = Family::<EndpointReason, Counter>::default();
        registry.register(
            "rejected",
            "Webhook requests refused before publishing, by reason",
            rejected.clone(),
        );
        let unrouted = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "unrouted",
            "Verified events that no route matched (answered 200, dropped)",
            unrouted.clone(),
        );
        let duplicates = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "duplicates",
            "Events already published within the dedup window (answered 200)",
            duplicates.clone(),
        );
        let published = Family::<SinkDestination, Counter>::default();
        registry.register("published", "Messages confirmed durable by a sink", published.clone());
        let publish_errors = Family::<SinkError, Counter>::default();
        registry.register(
            "publish_errors",
            "Publishes that failed or timed out, by class",
            publish_errors.clone(),
        );
        let ack_seconds = Histogram::new(latency_buckets());
        registry.register("ack_seconds", "Time from request start to answer", ack_seconds.clone());
        let publish_seconds =
            Family::<SinkLabel, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "publish_seconds",
            "Time from request start to the sink's confirmation",
            publish_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Webhook requests being handled",
            in_flight.clone(),
        );
        let sink_up = Family::<SinkLabel, Gauge>::default();
        registry.register("sink_up", "1 when the sink's last health check passed", sink_up.clone());
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BUILD).set(1);
        registry.register("build_info", "Always 1; the labels name the running build", build_info);
        let dead_lettered = Family::<DeadLettered, Counter>::default();
        registry.register(
            "dead_lettered",
            "Messages a target refused for good that the dead-letter sink confirmed instead",
            dead_lettered.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections open on the webhook port",
            connections.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept, unread (max_connections, allow_networks)",
            connections_refused.clone(),
        );
        let buffered_bytes = Gauge::default();
        registry.register(
            "buffered_body_bytes",
            "Request-body bytes held now, against http.max_buffered_bytes",
            buffered_bytes.clone(),
        );
        let budget_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "body_budget_refused",
            "Requests answered 503 for want of body memory (refused) or cut off to make room (evicted)",
            budget_refused.clone(),
        );
        Metrics {
            registry,
            requests,
            rejected,
            unrouted,
            duplicates,
            published,
            publish_errors,
            ack_seconds,
            publish_seconds,
            in_flight,
            sink_up,
            dead_lettered,
            connections,
            connections_refused,
            buffered_bytes,
            budget_refused,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
