//! Prometheus metrics, served as text on the admin API's `GET /metrics`.
//!
//! One process-wide registry: metrics outlive snapshots (a reload must not reset a counter).
//! The families live in [`Metrics`]; code that counts something takes [`metrics()`].

use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        Metrics { registry, reloads }
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
}
