//! Prometheus metrics, served as text on the admin API's `GET /metrics`.
//!
//! One process-wide registry: metrics outlive snapshots (a reload must not reset a counter).
//! The families live in [`Metrics`]; code that counts something takes [`metrics()`].
//!
//! The request path never looks a series up by its labels: a route, an upstream and a plugin
//! resolve their series once, when a snapshot is built ([`RouteMetrics`], [`UpstreamMetrics`],
//! [`PluginMetrics`]), so counting a request is an atomic add and a histogram observation
//! (an uncontended lock). A reload resolves the same series again, by the same labels.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Request latency buckets, in seconds: 500 µs to 10 s.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Plugin call buckets, in seconds: 5 µs (a header plugin) to 50 ms (far past a time limit).
const PLUGIN_BUCKETS: [f64; 13] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05,
];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    applied,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

/// The methods counted by name; any other is `OTHER`, so a client cannot create series.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
enum MethodLabel {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    PATCH,
    OPTIONS,
    OTHER,
}

const METHODS: [MethodLabel; 8] = [
    MethodLabel::GET,
    MethodLabel::HEAD,
    MethodLabel::POST,
    MethodLabel::PUT,
    MethodLabel::DELETE,
    MethodLabel::PATCH,
    MethodLabel::OPTIONS,
    MethodLabel::OTHER,
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// 1xx..5xx as 0..4. hyper accepts 600-999 from an upstream; they are counted as 5xx (a
/// response no client understands).
fn status_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: MethodLabel,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    target: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Phase {
    on_request,
    on_response,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    phase: Phase,
}

/// Why a plugin call failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PluginErrorKind {
    /// Stopped at its `time_limit`.
    time_limit,
    /// Asked for more memory than its `memory_limit`.
    memory_limit,
    /// Trapped (a panic in the plugin, an out-of-bounds access) or a host call refused.
    trap,
    /// A fresh instance (`isolation = "per-request"`) could not be made.
    instantiate,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginErrorLabels {
    plugin: String,
    kind: PluginErrorKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Listener {
    http,
    https,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Listener,
}

pub struct Metrics {
    registry: Registry,
    reloads: Family<ReloadLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    rate_limited: Family<RouteLabels, Counter>,
    upstream_duration: Histograms<UpstreamLabels>,
    retries: Family<UpstreamLabels, Counter>,
    ejections: Family<TargetLabels, Counter>,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_duration: Histograms<PluginLabels>,
    plugin_errors: Family<PluginErrorLabels, Counter>,
    connections: Family<ListenerLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    targets: Arc<TargetStates>,
    discovery_updates: Family<UpstreamLabels, Counter>,
    discovery_errors: Family<UpstreamLabels, Counter>,
    discovery_up: Family<UpstreamLabels, Gauge>,
    discovery_targets: Family<UpstreamLabels, Gauge>,
    /// Shared rate limits (`rate_limit.store`).
    pub rate_limit_store: RateLimitStoreMetrics,
    /// One scrape at a time: the target rows are lent to the collector for the scrape.
    scrape: Mutex<()>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasmgate");
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Config reloads by result (applied, or failed and the old config kept)",
            reloads.clone(),
        );
        // Both results exist from the start, so a dashboard sees 0 rather than no series.
        for result in [ReloadResult::applied, ReloadResult::failed] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route (empty when none matched), method and status class",
            requests.clone(),
        );
        let request_duration: Histograms<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register_with_unit(
            "request_duration",
            "Time from the request's arrival to the end of the response body, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by the route's rate limit",
            rate_limited.clone(),
        );
        let upstream_duration: Histograms<UpstreamLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register_with_unit(
            "upstream_response",
            "Time from sending a request to a target until its response head (or the \
             failure), per attempt, by upstream",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let retries = Family::default();
        registry.register(
            "upstream_retries",
            "Attempts after the first, by upstream",
            retries.clone(),
        );
        let ejections = Family::default();
        registry.register(
            "upstream_ejections",
            "Times outlier detection ejected a target",
            ejections.clone(),
        );
        let plugin_calls = Family::default();
        registry.register(
            "plugin_calls",
            "Calls into a plugin, by plugin and phase",
            plugin_calls.clone(),
        );
        let plugin_duration: Histograms<PluginLabels> =
            Family::new_with_constructor(|| Histogram::new(PLUGIN_BUCKETS));
        registry.register_with_unit(
            "plugin_call_duration",
            "Wall-clock time of one plugin call (per-request instantiation included)",
            Unit::Seconds,
            plugin_duration.clone(),
        );
        let plugin_errors = Family::default();
        registry.register(
            "plugin_errors",
            "Plugin calls that failed, by plugin and cause",
            plugin_errors.clone(),
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "Client connections accepted, by listener",
            connections.clone(),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections open now, by listener",
            open_connections.clone(),
        );
        let discovery_updates = Family::default();
        registry.register(
            "discovery_updates",
            "Target lists received from an upstream's discovery source (changed or not)",
            discovery_updates.clone(),
        );
        let discovery_errors = Family::default();
        registry.register(
            "discovery_errors",
            "Failed reads of an upstream's discovery source (the last list kept serving)",
            discovery_errors.clone(),
        );
        let discovery_up = Family::default();
        registry.register(
            "discovery_source_up",
            "1 while the upstream's discovery source is read without error, 0 while the last \
             good list serves",
            discovery_up.clone(),
        );
        let discovery_targets = Family::default();
        registry.register(
            "discovery_targets",
            "Targets in the last list from the upstream's discovery source",
            discovery_targets.clone(),
        );
        let targets = Arc::new(TargetStates::default());
        registry.register_collector(Box::new(targets.clone()));
        let rate_limit_store = RateLimitStoreMetrics::register(&mut registry);
        Metrics {
            registry,
            reloads,
            requests,
            request_duration,
            rate_limited,
            upstream_duration,
            retries,
            ejections,
            plugin_calls,
            plugin_duration,
            plugin_errors,
            connections,
            open_connections,
            targets,
            discovery_updates,
            discovery_errors,
            discovery_up,
            discovery_targets,
            rate_limit_store,
            scrape: Mutex::new(()),
        }
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The series of route `name`.
    pub fn route(&self, name: Arc<str>) -> RouteMetrics {
        let labels = RouteLabels {
            route: name.to_string(),
        };
        RouteMetrics {
            duration: self.request_duration.get_or_create_owned(&labels),
            rate_limited: self.rate_limited.get_or_create_owned(&labels),
            requests: Default::default(),
            name,
        }
    }

    /// The series of requests that matched no route (`route=""`).
    pub fn unrouted(&self) -> &'static RouteMetrics {
        static UNROUTED: OnceLock<RouteMetrics> = OnceLock::new();
        UNROUTED.get_or_init(|| self.route(Arc::from("")))
    }

    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels {
            upstream: name.to_owned(),
        };
        UpstreamMetrics {
            duration: self.upstream_duration.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
        }
    }

    /// The series of upstream `name`'s discovery source.
    pub fn discovery(&self, name: &str) -> DiscoveryMetrics {
        let labels = UpstreamLabels {
            upstream: name.to_owned(),
        };
        DiscoveryMetrics {
            updates: self.discovery_updates.get_or_create_owned(&labels),
            errors: self.discovery_errors.get_or_create_owned(&labels),
            up: self.discovery_up.get_or_create_owned(&labels),
            targets: self.discovery_targets.get_or_create_owned(&labels),
        }
    }

    /// Outlier detection ejected `target` of `upstream` (rare: looked up by label).
    pub fn ejected(&self, upstream: &str, target: &str) {
        self.ejections
            .get_or_create(&TargetLabels {
                upstream: upstream.to_owned(),
                target: target.to_owned(),
            })
            .inc();
    }

    pub fn plugin(&self, name: &str) -> PluginMetrics {
        let labels = |phase| PluginLabels {
            plugin: name.to_owned(),
            phase,
        };
        let phases = [Phase::on_request, Phase::on_response];
        PluginMetrics {
            name: name.to_owned(),
            calls: phases.map(|phase| self.plugin_calls.get_or_create_owned(&labels(phase))),
            duration: phases.map(|phase| self.plugin_duration.get_or_create_owned(&labels(phase))),
        }
    }

    /// A connection accepted on `listener`; the count of open ones drops when the guard does.
    pub fn connection_opened(&self, listener: Listener) -> OpenConnection {
        let labels = ListenerLabels { listener };
        self.connections.get_or_create(&labels).inc();
        let open = self.open_connections.get_or_create_owned(&labels);
        open.inc();
        OpenConnection(open)
    }

    /// The Prometheus text exposition of every metric; `targets` are the active snapshot's
    /// upstream targets as they are now.
    pub fn encode(&self, targets: Vec<TargetState>) -> String {
        let _one_scrape = self.scrape.lock();
        *self.targets.rows.lock() = targets;
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        self.targets.rows.lock().clear();
        text
    }
}

/// One route's series. Request counts by method and status class are created on first use,
/// so a route shows only the combinations it has served.
pub struct RouteMetrics {
    name: Arc<str>,
    requests: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHODS.len()],
    duration: Histogram,
    rate_limited: Counter,
}

impl RouteMetrics {
    /// The route's name (`#N` for an unnamed one, empty for no route).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// A response ended (its body sent, or the client gone) after `elapsed`.
    pub fn request_done(&self, method: &Method, status: u16, elapsed: Duration) {
        let (method, status) = (method_index(method), status_index(status));
        self.requests[method][status]
            .get_or_init(|| {
                metrics().requests.get_or_create_owned(&RequestLabels {
                    route: self.name.to_string(),
                    method: METHODS[method],
                    status: STATUS_CLASSES[status],
                })
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }
}

/// One upstream's series.
pub struct UpstreamMetrics {
    duration: Histogram,
    retries: Counter,
}

impl UpstreamMetrics {
    /// One attempt got its response head, or failed, after `elapsed`.
    pub fn attempt_done(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn retried(&self) {
        self.retries.inc();
    }
}

/// One discovery source's series.
pub struct DiscoveryMetrics {
    updates: Counter,
    errors: Counter,
    up: Gauge,
    targets: Gauge,
}

impl DiscoveryMetrics {
    pub fn updated(&self, targets: usize) {
        self.updates.inc();
        self.up.set(1);
        self.targets.set(i64::try_from(targets).unwrap_or(i64::MAX));
    }

    pub fn failed(&self) {
        self.errors.inc();
        self.up.set(0);
    }
}

/// One plugin's series (shared by every route that uses it).
pub struct PluginMetrics {
    name: String,
    calls: [Counter; 2],
    duration: [Histogram; 2],
}

impl PluginMetrics {
    pub fn call_done(&self, phase: Phase, elapsed: Duration) {
        self.calls[phase as usize].inc();
        self.duration[phase as usize].observe(elapsed.as_secs_f64());
    }

    /// A failed call (rare: looked up by label).
    pub fn failed(&self, kind: PluginErrorKind) {
        metrics()
            .plugin_errors
            .get_or_create(&PluginErrorLabels {
                plugin: self.name.clone(),
                kind,
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitStoreLabels {
    /// The store's URL without its password.
    store: String,
}

/// The Redis stores of shared rate limits. Their users keep the series handles they get here,
/// so a check never looks a series up by its labels.
pub struct RateLimitStoreMetrics {
    /// `wasmgate_rate_limit_store_up{store}`: 1 while the store answers, 0 while the limits
    /// using it fall back to each gateway's local buckets.
    up: Family<RateLimitStoreLabels, Gauge>,
    /// `wasmgate_rate_limit_store_fallbacks_total{route}`: checks decided by the route's local
    /// limiter because its store was unavailable.
    fallbacks: Family<RouteLabels, Counter>,
}

impl RateLimitStoreMetrics {
    fn register(registry: &mut Registry) -> RateLimitStoreMetrics {
        let up = Family::<RateLimitStoreLabels, Gauge>::default();
        registry.register(
            "rate_limit_store_up",
            "Whether a shared rate limit's Redis store answers (1) or its routes are limited \
             by each gateway alone (0)",
            up.clone(),
        );
        let fallbacks = Family::<RouteLabels, Counter>::default();
        registry.register(
            "rate_limit_store_fallbacks",
            "Rate limit checks decided by the gateway's local limiter because the route's store \
             was unavailable",
            fallbacks.clone(),
        );
        RateLimitStoreMetrics { up, fallbacks }
    }

    /// The `up` series of one store.
    pub fn store_up(&self, store: &str) -> Gauge {
        self.up.get_or_create_owned(&RateLimitStoreLabels {
            store: store.to_owned(),
        })
    }

    /// Drops the `up` series of a store that no config uses any more.
    pub fn forget_store(&self, store: &str) {
        self.up.remove(&RateLimitStoreLabels {
            store: store.to_owned(),
        });
    }

    /// The `fallbacks` series of one route (kept across reloads, like every counter).
    pub fn fallbacks(&self, route: &str) -> Counter {
        self.fallbacks.get_or_create_owned(&RouteLabels {
            route: route.to_owned(),
        })
    }
}

/// Counts a connection as open while it lives.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An upstream target's state at scrape time.
#[derive(Debug)]
pub struct TargetState {
    pub upstream: Arc<str>,
    pub target: Arc<str>,
    pub healthy: bool,
    pub ejected: bool,
}

/// `upstream_target_healthy` and `upstream_target_ejected`, read from the active snapshot at
/// each scrape (so a target a reload removed disappears with it).
#[derive(Debug, Default)]
struct TargetStates {
    rows: Mutex<Vec<TargetState>>,
}

impl Collector for TargetStates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.rows.lock();
        type Reading = fn(&TargetState) -> bool;
        let gauges: [(&str, &str, Reading); 2] = [
            (
                "upstream_target_healthy",
                "1 if the target passes its active health checks (or has none)",
                |row| row.healthy,
            ),
            (
                "upstream_target_ejected",
                "1 while outlier detection keeps the target out of rotation",
                |row| row.ejected,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in rows.iter() {
                let labels = TargetLabels {
                    upstream: row.upstream.to_string(),
                    target: row.target.to_string(),
                };
                ConstGauge::new(i64::from(value(row))).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_are_counted_by_result() {
        let metrics = Metrics::new();
        metrics.reload(ReloadResult::applied);
        metrics.reload(ReloadResult::applied);
        let text = metrics.encode(Vec::new());
        assert!(
            text.contains("wasmgate_reloads_total{result=\"applied\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wasmgate_reloads_total{result=\"failed\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn rate_limit_store_series_exist_once_resolved_and_go_with_their_store() {
        let metrics = Metrics::new();
        metrics
            .rate_limit_store
            .store_up("redis://127.0.0.1:6379/0")
            .set(1);
        metrics.rate_limit_store.fallbacks("api").inc();
        let text = metrics.encode(Vec::new());
        assert!(
            text.contains("wasmgate_rate_limit_store_up{store=\"redis://127.0.0.1:6379/0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wasmgate_rate_limit_store_fallbacks_total{route=\"api\"} 1"),
            "{text}"
        );
        metrics
            .rate_limit_store
            .forget_store("redis://127.0.0.1:6379/0");
        let text = metrics.encode(Vec::new());
        assert!(!text.contains("store=\"redis://"), "{text}");
    }

    #[test]
    fn status_classes_and_methods_are_bounded() {
        assert_eq!(status_index(101), 0);
        assert_eq!(status_index(204), 1);
        assert_eq!(status_index(429), 3);
        assert_eq!(status_index(503), 4);
        assert_eq!(status_index(999), 4);
        assert_eq!(method_index(&Method::from_bytes(b"PROPFIND").unwrap()), 7);
    }

    #[test]
    fn target_rows_are_encoded_at_scrape_time() {
        let metrics = Metrics::new();
        let row = |target: &str, healthy, ejected| TargetState {
            upstream: Arc::from("users"),
            target: Arc::from(target),
            healthy,
            ejected,
        };
        let text = metrics.encode(vec![row("a:1", true, false), row("b:2", false, true)]);
        for line in [
            "wasmgate_upstream_target_healthy{upstream=\"users\",target=\"a:1\"} 1",
            "wasmgate_upstream_target_healthy{upstream=\"users\",target=\"b:2\"} 0",
            "wasmgate_upstream_target_ejected{upstream=\"users\",target=\"b:2\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        // Rows live for one scrape.
        assert!(!metrics.encode(Vec::new()).contains("target=\"a:1\""));
    }
}
