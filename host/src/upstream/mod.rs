//! Upstreams: a named set of targets, how to choose among them, how to reach them, and what is
//! known about their health.

mod balance;
mod health;
mod outlier;
mod target;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName};

pub use balance::{
    Balancer, ConsistentHash, LeastRequest, PickContext, SmoothRoundRobin, WeightedRandom,
};
pub use health::HealthCheck;
pub use outlier::OutlierPolicy;
pub use target::{InFlightGuard, Target, clock_ms};
pub use transport::{Lease, Transport, TransportCache, TransportKey};

use crate::config::{Diagnostics, Protocol, Spanned, UpstreamConfig};
use crate::proxy::retry::RetryPolicy;
use crate::telemetry::metrics::{UpstreamMetrics, metrics};

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Arc<Target>>,
    balancer: Box<dyn Balancer>,
    /// For `hash:header:NAME` balancing.
    hash_header: Option<HeaderName>,
    pub transport: Arc<Transport>,
    pub protocol: Protocol,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub outlier: Option<OutlierPolicy>,
    health_check: Option<HealthCheck>,
    /// Attempt latency and retries.
    pub metrics: UpstreamMetrics,
    /// Background work started (so a reload that keeps this upstream does not start it twice).
    started: AtomicBool,
}

/// How targets are chosen, as written in `balance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceKind {
    RoundRobin,
    LeastRequest,
    Random,
    HashHeader(HeaderName),
}

impl BalanceKind {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "round_robin" => Ok(BalanceKind::RoundRobin),
            "least_request" => Ok(BalanceKind::LeastRequest),
            "random" => Ok(BalanceKind::Random),
            other => match other.strip_prefix("hash:header:") {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(BalanceKind::HashHeader)
                    .map_err(|_| format!("`{name}` is not a valid header name")),
                None => Err(format!(
                    "unknown balance `{other}` (use round_robin, least_request, random or hash:header:NAME)"
                )),
            },
        }
    }
}

impl Upstream {
    /// Builds an upstream from its config, reporting every problem to `diagnostics`.
    pub fn build(
        name: &str,
        config: &Spanned<UpstreamConfig>,
        diagnostics: &mut Diagnostics,
        transports: &mut TransportCache,
    ) -> Option<Upstream> {
        let span = config.span();
        let config = config.get_ref();
        let errors_before = diagnostics.error_count();
        let fail =
            |diagnostics: &mut Diagnostics, span: std::ops::Range<usize>, message: String| {
                diagnostics.error(span, format!("upstreams.{name}: {message}"));
            };

        let mut targets = Vec::new();
        match (&config.targets, &config.discovery) {
            (Some(list), None) if !list.is_empty() => {
                for target in list {
                    if *target.weight.get_ref() == 0 {
                        fail(
                            diagnostics,
                            target.weight.span(),
                            "target weight must be at least 1".into(),
                        );
                    }
                    match Target::new(target.addr.get_ref(), *target.weight.get_ref()) {
                        Ok(t) => targets.push(Arc::new(t)),
                        Err(message) => fail(diagnostics, target.addr.span(), message),
                    }
                }
            }
            (Some(_), None) => fail(diagnostics, span.clone(), "`targets` is empty".into()),
            (None, Some(discovery)) => fail(
                diagnostics,
                discovery.span(),
                "service discovery is not available in this build yet; list `targets` instead"
                    .into(),
            ),
            (Some(_), Some(discovery)) => fail(
                diagnostics,
                discovery.span(),
                "give either `targets` or `discovery`, not both".into(),
            ),
            (None, None) => fail(
                diagnostics,
                span.clone(),
                "needs `targets` (or `discovery`)".into(),
            ),
        }

        let balance = BalanceKind::parse(config.balance.get_ref())
            .map_err(|message| fail(diagnostics, config.balance.span(), message))
            .ok();
        let health_check = config.health_check.as_ref().and_then(|hc| {
            HealthCheck::from_config(hc)
                .map_err(|message| fail(diagnostics, hc.path.span(), message))
                .ok()
        });
        let retry = RetryPolicy::from_config(config.retry.as_ref(), diagnostics, name);
        let ca_file = config
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.as_deref())
            .map(|ca| diagnostics.input(ca));
        if config.tls.is_some() && !config.protocol.is_tls() {
            fail(
                diagnostics,
                span.clone(),
                "`tls` settings need protocol \"https\" or \"h2\"".into(),
            );
        }
        let transport = transports
            .get_or_build(TransportKey {
                protocol: config.protocol,
                connect_timeout: config.connect_timeout.get(),
                ca_file,
            })
            .map_err(|message| fail(diagnostics, span.clone(), message))
            .ok();

        let (Some(balance), Some(transport), Some(retry)) = (balance, transport, retry) else {
            return None;
        };
        if diagnostics.error_count() > errors_before {
            return None;
        };
        let (balancer, hash_header): (Box<dyn Balancer>, _) = match balance {
            BalanceKind::RoundRobin => (Box::new(SmoothRoundRobin::new(targets.len())), None),
            BalanceKind::LeastRequest => (Box::new(LeastRequest), None),
            BalanceKind::Random => (Box::new(WeightedRandom), None),
            BalanceKind::HashHeader(header) => {
                (Box::new(ConsistentHash::new(&targets)), Some(header))
            }
        };
        Some(Upstream {
            name: Arc::from(name),
            targets,
            balancer,
            hash_header,
            transport,
            protocol: config.protocol,
            timeout: config.timeout.get(),
            retry,
            outlier: config.outlier.as_ref().map(OutlierPolicy::from_config),
            health_check,
            metrics: metrics().upstream(name),
            started: AtomicBool::new(false),
        })
    }

    /// Starts the upstream's background work (active health checks), once. It stops by itself
    /// when the upstream is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(check) = &self.health_check {
            health::spawn(self, check.clone());
        }
    }

    /// Chooses a target for a request, avoiding the ones this request already tried when
    /// another is available. `None` when every target is unhealthy or ejected.
    pub fn pick(&self, headers: &HeaderMap, tried: &[usize]) -> Option<usize> {
        let now = clock_ms();
        let ctx = PickContext {
            hash_key: self
                .hash_header
                .as_ref()
                .and_then(|name| headers.get(name))
                .map(|value| value.as_bytes()),
        };
        let available = |i: usize| self.targets[i].is_available(now);
        self.balancer
            .pick(
                &self.targets,
                &|i| available(i) && !tried.contains(&i),
                &ctx,
            )
            .or_else(|| {
                if tried.is_empty() {
                    None
                } else {
                    self.balancer.pick(&self.targets, &available, &ctx)
                }
            })
    }

    /// Feeds the outcome of one exchange with a target to outlier detection.
    pub fn record_outcome(&self, index: usize, failed: bool) {
        let Some(outlier) = &self.outlier else {
            return;
        };
        let now = clock_ms();
        if failed {
            if let Some(ejected_for) = outlier.record_failure(&self.targets, index, now) {
                metrics().ejected(&self.name, &self.targets[index].addr);
                tracing::warn!(
                    upstream = %self.name,
                    target = %self.targets[index].addr,
                    ejected_for_ms = ejected_for.as_millis() as u64,
                    "outlier detection: target ejected"
                );
            }
        } else {
            outlier.record_success(&self.targets[index], now);
        }
    }
}
