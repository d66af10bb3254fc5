//! Upstreams: a named set of targets, how to choose among them, how to reach them, and what is
//! known about their health.
//!
//! The targets are listed in the config or found by [`discovery`]; either way requests read
//! them as one immutable [`TargetSet`] (an `ArcSwap` load, no lock), which discovery replaces as
//! a whole. A request keeps the set it started with, so the indexes it tried stay valid across
//! its retries.

mod balance;
pub mod discovery;
mod h1;
mod health;
mod outlier;
mod target;
mod transport;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use tokio::sync::Notify;

pub use balance::{
    Balancer, ConsistentHash, LeastRequest, PickContext, SmoothRoundRobin, WeightedRandom,
};
pub use health::HealthCheck;
pub use outlier::OutlierPolicy;
pub use target::{InFlightGuard, Target, clock_ms};
pub use transport::{Lease, Transport, TransportCache, TransportKey, UpstreamBody};

use crate::config::{Diagnostics, Protocol, Spanned, UpstreamConfig};
use crate::proxy::retry::RetryPolicy;
use crate::telemetry::metrics::{UpstreamMetrics, metrics};

pub struct Upstream {
    pub name: Arc<str>,
    /// The targets now: as listed, or as discovery last reported them.
    set: ArcSwap<TargetSet>,
    balance: BalanceKind,
    /// For `hash:header:NAME` balancing.
    hash_header: Option<HeaderName>,
    /// Where the targets come from when the config does not list them.
    pub source: Option<discovery::Source>,
    /// Wakes requests that wait for discovery's first list.
    first_list: Notify,
    /// Wakes the health checks when discovery changed the targets, so new ones are checked
    /// at once rather than a whole `interval` later.
    targets_changed: Arc<Notify>,
    has_list: AtomicBool,
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

/// An upstream's targets at one moment, with the balancer built for them.
pub struct TargetSet {
    pub targets: Vec<Arc<Target>>,
    /// Per target: 0 for listed targets, as the source says for discovered ones (SRV).
    priorities: Vec<u32>,
    /// Whether the priorities differ, so that picking must prefer the lowest.
    prioritized: bool,
    balancer: Box<dyn Balancer>,
}

impl TargetSet {
    fn new(balance: &BalanceKind, targets: Vec<Arc<Target>>, priorities: Vec<u32>) -> TargetSet {
        let balancer: Box<dyn Balancer> = match balance {
            BalanceKind::RoundRobin => Box::new(SmoothRoundRobin::new(targets.len())),
            BalanceKind::LeastRequest => Box::new(LeastRequest),
            BalanceKind::Random => Box::new(WeightedRandom),
            BalanceKind::HashHeader(_) => Box::new(ConsistentHash::new(&targets)),
        };
        let prioritized = priorities.iter().any(|&p| p != priorities[0]);
        TargetSet {
            targets,
            priorities,
            prioritized,
            balancer,
        }
    }

    /// The lowest priority among the targets `eligible` allows, when priorities differ.
    fn best_priority(&self, eligible: &dyn Fn(usize) -> bool) -> Option<u32> {
        if !self.prioritized {
            return None;
        }
        (0..self.targets.len())
            .filter(|&i| eligible(i))
            .map(|i| self.priorities[i])
            .min()
    }
}

/// What a new target list changed.
#[derive(Debug, Default)]
pub struct TargetChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same addresses, other weights or priorities.
    pub reweighted: bool,
}

impl TargetChange {
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty() || self.reweighted
    }
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
        let mut provider = None;
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
            (None, Some(discovery)) => match discovery::provider(discovery) {
                Ok(built) => provider = Some(built),
                Err((span, message)) => fail(diagnostics, span, message),
            },
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
        let hash_header = match &balance {
            BalanceKind::HashHeader(header) => Some(header.clone()),
            _ => None,
        };
        let priorities = vec![0; targets.len()];
        Some(Upstream {
            name: Arc::from(name),
            set: ArcSwap::from_pointee(TargetSet::new(&balance, targets, priorities)),
            balance,
            hash_header,
            has_list: AtomicBool::new(provider.is_none()),
            source: provider.map(|provider| discovery::Source::new(name, provider)),
            first_list: Notify::new(),
            targets_changed: Arc::new(Notify::new()),
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

    /// Starts the upstream's background work (active health checks, following its discovery
    /// source), once. It stops by itself when the upstream is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(source) = &self.source {
            source.spawn(self);
        }
        if let Some(check) = &self.health_check {
            health::spawn(self, check.clone());
        }
    }

    /// The targets now.
    pub fn targets(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }

    /// The targets for a request. Until discovery has delivered its first list (just after
    /// the start, or after a reload that added the upstream), the request waits for it, up to
    /// `deadline`, rather than failing for a list that is a moment away.
    pub async fn targets_for_request(&self, deadline: Instant) -> Arc<TargetSet> {
        if !self.has_list.load(Ordering::Acquire) {
            let first = self.first_list.notified();
            if !self.has_list.load(Ordering::Acquire) {
                let _ = tokio::time::timeout_at(deadline.into(), first).await;
            }
        }
        self.targets()
    }

    /// Replaces the targets with `endpoints` (discovery). An address that stays keeps its
    /// [`Target`]: its health, ejection state, in-flight count and pooled connections.
    pub fn replace_targets(&self, endpoints: &[discovery::Endpoint]) -> TargetChange {
        let current = self.targets();
        // Index in the current set of every address not yet taken over.
        let mut kept: HashMap<&str, usize> = current
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| (&*target.addr, index))
            .collect();
        let mut listed = HashSet::with_capacity(endpoints.len());
        let mut change = TargetChange::default();
        let mut targets = Vec::with_capacity(endpoints.len());
        let mut priorities = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            if !listed.insert(endpoint.addr.as_str()) {
                continue; // listed twice: the first one counts
            }
            let target = match kept.remove(endpoint.addr.as_str()) {
                Some(index) => {
                    let existing = &current.targets[index];
                    if existing.weight() != endpoint.weight.max(1)
                        || current.priorities[index] != endpoint.priority
                    {
                        change.reweighted = true;
                    }
                    existing.set_weight(endpoint.weight);
                    existing.clone()
                }
                None => match Target::new(&endpoint.addr, endpoint.weight) {
                    Ok(target) => {
                        change.added.push(endpoint.addr.clone());
                        Arc::new(target)
                    }
                    Err(message) => {
                        tracing::warn!(upstream = %self.name, "discovery: skipped: {message}");
                        continue;
                    }
                },
            };
            targets.push(target);
            priorities.push(endpoint.priority);
        }
        change.removed = kept.keys().map(|addr| (*addr).to_owned()).collect();
        change.removed.sort();
        if change.changed() || !self.has_list.load(Ordering::Acquire) {
            self.set
                .store(Arc::new(TargetSet::new(&self.balance, targets, priorities)));
            // One waiter (the health checks); a permit is kept if it is busy probing.
            self.targets_changed.notify_one();
        }
        if !self.has_list.swap(true, Ordering::AcqRel) {
            self.first_list.notify_waiters();
        }
        change
    }

    /// Chooses a target of `set` for a request, avoiding the ones this request already tried
    /// when another is available. `None` when every target is unhealthy or ejected.
    pub fn pick(&self, set: &TargetSet, headers: &HeaderMap, tried: &[usize]) -> Option<usize> {
        let now = clock_ms();
        let ctx = PickContext {
            hash_key: self
                .hash_header
                .as_ref()
                .and_then(|name| headers.get(name))
                .map(|value| value.as_bytes()),
        };
        let available = |i: usize| set.targets[i].is_available(now);
        let pick_among = |eligible: &dyn Fn(usize) -> bool| match set.best_priority(eligible) {
            // Only the most preferred priority that has an eligible target.
            Some(best) => set.balancer.pick(
                &set.targets,
                &|i| set.priorities[i] == best && eligible(i),
                &ctx,
            ),
            None => set.balancer.pick(&set.targets, eligible, &ctx),
        };
        pick_among(&|i| available(i) && !tried.contains(&i)).or_else(|| {
            if tried.is_empty() {
                None
            } else {
                pick_among(&available)
            }
        })
    }

    /// Feeds the outcome of one exchange with target `index` of `set` to outlier detection.
    pub fn record_outcome(&self, set: &TargetSet, index: usize, failed: bool) {
        let Some(outlier) = &self.outlier else {
            return;
        };
        let now = clock_ms();
        if failed {
            if let Some(ejected_for) = outlier.record_failure(&set.targets, index, now) {
                metrics().ejected(&self.name, &set.targets[index].addr);
                tracing::warn!(
                    upstream = %self.name,
                    target = %set.targets[index].addr,
                    ejected_for_ms = ejected_for.as_millis() as u64,
                    "outlier detection: target ejected"
                );
            }
        } else {
            outlier.record_success(&set.targets[index], now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::discovery::Endpoint;
    use super::*;
    use crate::snapshot::Snapshot;

    /// An upstream `app` with a Consul source that is never started: the tests feed it.
    fn discovered() -> Arc<Upstream> {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.app]\n\
             discovery = { consul = { addr = \"127.0.0.1:1\", service = \"app\" } }\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\n";
        let loaded = crate::config::load_str(Path::new("gw.toml"), text.into()).unwrap();
        let snapshot = Snapshot::build(&loaded, None).unwrap_or_else(|e| panic!("{e}"));
        snapshot.upstreams["app"].clone()
    }

    fn endpoint(addr: &str, weight: u32, priority: u32) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            weight,
            priority,
        }
    }

    fn addrs(set: &TargetSet) -> Vec<&str> {
        set.targets.iter().map(|t| &*t.addr).collect()
    }

    #[test]
    fn a_new_list_keeps_the_target_of_every_address_that_stays() {
        let upstream = discovered();
        assert!(upstream.targets().targets.is_empty());
        let first = upstream
            .replace_targets(&[endpoint("10.0.0.1:80", 1, 0), endpoint("10.0.0.2:80", 1, 0)]);
        assert_eq!(first.added.len(), 2);
        let before = upstream.targets();
        before.targets[0].set_healthy(false);

        let change = upstream.replace_targets(&[
            endpoint("10.0.0.1:80", 5, 0),
            endpoint("10.0.0.3:80", 1, 0),
            endpoint("10.0.0.3:80", 9, 0), // listed twice: the first counts
        ]);
        assert_eq!(change.added, ["10.0.0.3:80"]);
        assert_eq!(change.removed, ["10.0.0.2:80"]);
        assert!(change.reweighted);
        let after = upstream.targets();
        assert_eq!(addrs(&after), ["10.0.0.1:80", "10.0.0.3:80"]);
        assert!(Arc::ptr_eq(&before.targets[0], &after.targets[0]));
        assert!(!after.targets[0].is_healthy(), "health was lost");
        assert_eq!(after.targets[0].weight(), 5);
        assert_eq!(after.targets[1].weight(), 1);

        // The same list again changes nothing, not even the set.
        let same = upstream
            .replace_targets(&[endpoint("10.0.0.1:80", 5, 0), endpoint("10.0.0.3:80", 1, 0)]);
        assert!(!same.changed());
        assert!(Arc::ptr_eq(&after, &upstream.targets()));
    }

    #[test]
    fn the_best_priority_with_an_available_target_gets_the_traffic() {
        let upstream = discovered();
        upstream.replace_targets(&[
            endpoint("10.0.0.1:80", 1, 10),
            endpoint("10.0.0.2:80", 1, 10),
            endpoint("10.0.0.3:80", 1, 20),
        ]);
        let set = upstream.targets();
        let headers = HeaderMap::new();
        let picks: Vec<usize> = (0..20)
            .map(|_| upstream.pick(&set, &headers, &[]).unwrap())
            .collect();
        assert!(picks.iter().all(|&i| i < 2), "{picks:?}");
        // A retry avoids the tried one but stays within the priority while it can.
        assert_eq!(upstream.pick(&set, &headers, &[0]), Some(1));
        // With priority 10 down, priority 20 takes over.
        set.targets[0].set_healthy(false);
        set.targets[1].set_healthy(false);
        assert_eq!(upstream.pick(&set, &headers, &[]), Some(2));
    }

    #[tokio::test]
    async fn a_request_waits_for_the_first_list_until_its_deadline() {
        let upstream = discovered();
        let deadline = Instant::now() + Duration::from_millis(50);
        let started = Instant::now();
        assert!(
            upstream
                .targets_for_request(deadline)
                .await
                .targets
                .is_empty()
        );
        assert!(started.elapsed() >= Duration::from_millis(45));

        let waiting = {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                upstream.targets_for_request(deadline).await.targets.len()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        upstream.replace_targets(&[endpoint("10.0.0.1:80", 1, 0)]);
        let found = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiting request was not woken")
            .unwrap();
        assert_eq!(found, 1);
        // Once a list arrived, even an empty one does not make requests wait again.
        upstream.replace_targets(&[]);
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(
            upstream
                .targets_for_request(deadline)
                .await
                .targets
                .is_empty()
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn the_same_list_again_changes_nothing_whatever_its_priorities() {
        let upstream = discovered();
        for list in [
            vec![
                endpoint("10.0.0.1:80", 3, 10),
                endpoint("10.0.0.2:80", 1, 10),
            ],
            vec![
                endpoint("10.0.0.1:80", 3, 10),
                endpoint("10.0.0.2:80", 1, 20),
            ],
        ] {
            assert!(upstream.replace_targets(&list).changed());
            let again = upstream.replace_targets(&list);
            assert!(!again.changed(), "{list:?}: {again:?}");
        }
        let promoted = upstream.replace_targets(&[
            endpoint("10.0.0.1:80", 3, 10),
            endpoint("10.0.0.2:80", 1, 10),
        ]);
        assert!(promoted.reweighted, "a new priority is a change");
    }
}
