//! Prometheus metrics, served as text on the admin API's `GET /metrics`.
//!
//! One process-wide registry: metrics outlive snapshots (a reload must not reset a counter).
//! The families live in [`Metrics`]; code that counts something takes [`metrics()`].

use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    applied,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

pub struct Metrics {
    registry: Registry,
    /// `wasmgate_reloads_total{result}`: reload attempts that rebuilt the config.
    pub reloads: Family<ReloadLabels, Counter>,

    // Shared rate limits (`rate_limit.store`): one block, see [`RateLimitStoreMetrics`].
    pub rate_limit_store: RateLimitStoreMetrics,
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

        // Shared rate limits (`rate_limit.store`).
        let rate_limit_store = RateLimitStoreMetrics::register(&mut registry);
        Metrics {
            registry,
            reloads,
            rate_limit_store,
        }
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitStoreLabels {
    /// The store's URL without its password.
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitRouteLabels {
    pub route: String,
}

/// The Redis stores of shared rate limits. Their users keep the series handles they get here,
/// so a check never looks a series up by its labels.
pub struct RateLimitStoreMetrics {
    /// `wasmgate_rate_limit_store_up{store}`: 1 while the store answers, 0 while the limits
    /// using it fall back to each gateway's local buckets.
    pub up: Family<RateLimitStoreLabels, Gauge>,
    /// `wasmgate_rate_limit_store_fallbacks_total{route}`: checks decided by the route's local
    /// limiter because its store was unavailable.
    pub fallbacks: Family<RateLimitRouteLabels, Counter>,
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
        let fallbacks = Family::<RateLimitRouteLabels, Counter>::default();
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
        self.up
            .get_or_create(&RateLimitStoreLabels {
                store: store.to_owned(),
            })
            .clone()
    }

    /// Drops the `up` series of a store that no config uses any more.
    pub fn forget_store(&self, store: &str) {
        self.up.remove(&RateLimitStoreLabels {
            store: store.to_owned(),
        });
    }

    /// The `fallbacks` series of one route (kept across reloads, like every counter).
    pub fn fallbacks(&self, route: &str) -> Counter {
        self.fallbacks
            .get_or_create(&RateLimitRouteLabels {
                route: route.to_owned(),
            })
            .clone()
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
        let text = metrics.encode();
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
        let text = metrics.encode();
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
        assert!(
            !metrics.encode().contains("store=\"redis://"),
            "{}",
            metrics.encode()
        );
    }
}
