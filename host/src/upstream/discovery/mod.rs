//! Service discovery: where an upstream's targets come from when the config does not list them
//! (`[upstreams.NAME.discovery]`).
//!
//! A [`Provider`] follows one source (DNS, etcd, Consul) in a background task and reports each
//! complete target list to its upstream's [`Feed`]. The upstream keeps the list as an immutable
//! [`super::TargetSet`] that requests read without a lock; a new list replaces the set as a
//! whole, keeping the [`super::Target`] (health, ejection, pooled connections) of every address
//! that stays. When the source cannot be read, the provider says so ([`Feed::failed`]) and the
//! last good list keeps serving.
//!
//! The task ends when the upstream is dropped (a reload that removed or changed it, shutdown):
//! [`Feed::stopped`] resolves then, and [`Feed::update`] returns false.

mod consul;
mod dns;
mod etcd;

use std::fmt::Display;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Upstream;
use crate::config::{DiscoveryConfig, Spanned};
use crate::telemetry::metrics::{DiscoveryMetrics, metrics};

/// One target as a source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` (usually an IP address).
    pub addr: String,
    pub weight: u32,
    /// Lower is preferred: targets of a higher priority get traffic only while no target of a
    /// lower one is available (SRV). Sources without priorities use 0.
    pub priority: u32,
}

impl Endpoint {
    pub fn new(addr: impl Into<String>, weight: u32) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            weight,
            priority: 0,
        }
    }
}

/// A source of targets.
pub trait Provider: Send + Sync + 'static {
    /// What `GET /upstreams` shows as the upstream's source, e.g.
    /// `{"kind": "dns", "name": "users.internal", "port": 9001}`.
    fn describe(&self) -> Value;

    /// Follows the source, reporting every change to `feed`, until [`Feed::stopped`] resolves
    /// or [`Feed::update`] returns false. Reconnecting and backing off are the provider's own
    /// business; it never returns early because the source is unreachable.
    fn run(self: Arc<Self>, feed: Feed) -> BoxFuture<'static, ()>;
}

/// What `GET /upstreams` and the metrics know about a source.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    /// Lists received (each complete; unchanged ones included).
    pub updates: u64,
    /// When the last list arrived.
    pub updated_at: Option<SystemTime>,
    /// The source's last error while it is failing; `None` once a list arrives again.
    pub error: Option<String>,
    /// When it started failing.
    pub failing_since: Option<SystemTime>,
}

/// An upstream's source: the provider, its status, and the token that stops its task.
pub struct Source {
    pub provider: Arc<dyn Provider>,
    pub status: Mutex<SourceStatus>,
    stop: CancellationToken,
    metrics: DiscoveryMetrics,
}

impl Source {
    pub fn new(upstream: &str, provider: Arc<dyn Provider>) -> Source {
        Source {
            provider,
            status: Mutex::new(SourceStatus::default()),
            stop: CancellationToken::new(),
            metrics: metrics().discovery(upstream),
        }
    }

    /// Runs the provider for `upstream` (once; see [`Upstream::start`]).
    pub fn spawn(&self, upstream: &Arc<Upstream>) {
        let feed = Feed {
            upstream: Arc::downgrade(upstream),
            stop: self.stop.clone(),
        };
        tokio::spawn(self.provider.clone().run(feed));
    }

    /// The source for `GET /upstreams`.
    pub fn to_json(&self) -> Value {
        let status = self.status.lock().clone();
        let mut value = self.provider.describe();
        value["updates"] = json!(status.updates);
        value["updated_at"] = json!(status.updated_at.map(rfc3339));
        value["error"] = json!(status.error);
        value["failing_since"] = json!(status.failing_since.map(rfc3339));
        value
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Where a provider reports to.
#[derive(Clone)]
pub struct Feed {
    upstream: Weak<Upstream>,
    stop: CancellationToken,
}

impl Feed {
    /// A complete, current list from the source. Returns false when the upstream is gone and
    /// the provider should end.
    pub fn update(&self, endpoints: Vec<Endpoint>) -> bool {
        let Some(upstream) = self.upstream.upgrade() else {
            return false;
        };
        let Some(source) = &upstream.source else {
            return false;
        };
        let change = upstream.replace_targets(&endpoints);
        {
            let mut status = source.status.lock();
            if let Some(error) = status.error.take() {
                tracing::info!(upstream = %upstream.name, was = %error, "discovery: source readable again");
            }
            status.failing_since = None;
            status.updates += 1;
            status.updated_at = Some(SystemTime::now());
        }
        source.metrics.updated(endpoints.len());
        if change.changed() {
            tracing::info!(
                upstream = %upstream.name,
                targets = endpoints.len(),
                added = ?change.added,
                removed = ?change.removed,
                "discovery: targets changed"
            );
            if endpoints.is_empty() {
                tracing::warn!(upstream = %upstream.name, "discovery: the source lists no targets; requests get 503");
            }
        }
        true
    }

    /// The source could not be read: the last good list stays. Logged once per failing spell
    /// (and at debug level after that). Returns false when the upstream is gone.
    pub fn failed(&self, error: impl Display) -> bool {
        let Some(upstream) = self.upstream.upgrade() else {
            return false;
        };
        let Some(source) = &upstream.source else {
            return false;
        };
        let error = error.to_string();
        source.metrics.failed();
        let mut status = source.status.lock();
        if status.error.is_none() {
            status.failing_since = Some(SystemTime::now());
            tracing::warn!(
                upstream = %upstream.name,
                targets = upstream.targets().targets.len(),
                "discovery: cannot read the source, the last list stays: {error}"
            );
        } else {
            tracing::debug!(upstream = %upstream.name, "discovery: still cannot read the source: {error}");
        }
        status.error = Some(error);
        true
    }

    /// Resolves when the upstream is gone: the provider's task should end.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The upstream's name, for the provider's own log lines.
    pub fn upstream_name(&self) -> Option<Arc<str>> {
        self.upstream
            .upgrade()
            .map(|upstream| upstream.name.clone())
    }
}

/// Builds the provider `discovery` names, or returns what is wrong with its table.
pub fn provider(
    config: &Spanned<DiscoveryConfig>,
) -> Result<Arc<dyn Provider>, (std::ops::Range<usize>, String)> {
    let sources = {
        let c = config.get_ref();
        usize::from(c.dns.is_some())
            + usize::from(c.etcd.is_some())
            + usize::from(c.consul.is_some())
    };
    if sources != 1 {
        return Err((
            config.span(),
            "`discovery` needs exactly one of `dns`, `etcd` or `consul`".into(),
        ));
    }
    let config = config.get_ref();
    if let Some(dns) = &config.dns {
        return Ok(Arc::new(dns::DnsProvider::from_config(dns)?));
    }
    if let Some(etcd) = &config.etcd {
        return etcd::provider(etcd);
    }
    if let Some(consul) = &config.consul {
        return Ok(Arc::new(consul::Consul::from_config(consul)?));
    }
    unreachable!("exactly one source is set")
}
