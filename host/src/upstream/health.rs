//! Active health checks: each target of an upstream gets `GET path` every `interval`; after
//! `unhealthy_threshold` failures in a row it stops receiving traffic, after `healthy_threshold`
//! successes in a row it gets traffic again. Any status below 400 answered within `timeout`
//! counts as a success.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Uri, header};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{Target, Upstream};
use crate::config::HealthCheckConfig;
use crate::proxy::body::RequestBody;

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

impl HealthCheck {
    pub fn from_config(config: &HealthCheckConfig) -> Result<Self, String> {
        let path: PathAndQuery = config.path.get_ref().parse().map_err(|_| {
            format!(
                "health check path `{}` is not a valid path",
                config.path.get_ref()
            )
        })?;
        if !path.as_str().starts_with('/') {
            return Err(format!("health check path `{}` must start with `/`", path));
        }
        Ok(HealthCheck {
            path,
            interval: config.interval.get().max(Duration::from_millis(10)),
            timeout: config.timeout.get(),
            unhealthy_threshold: config.unhealthy_threshold.max(1),
            healthy_threshold: config.healthy_threshold.max(1),
        })
    }
}

/// Runs the checks of one upstream until the upstream is dropped (a reload that removes it, or
/// shutdown).
pub fn spawn(upstream: &Arc<Upstream>, check: HealthCheck) {
    let weak = Arc::downgrade(upstream);
    tokio::spawn(run(weak, upstream.targets_changed.clone(), check));
}

async fn run(weak: Weak<Upstream>, targets_changed: Arc<Notify>, check: HealthCheck) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Every interval all targets; when discovery changed the list, at once the ones never
        // checked (a new target is not left unchecked for a whole interval).
        let only_new = tokio::select! {
            _ = ticker.tick() => false,
            () = targets_changed.notified() => true,
        };
        let Some(upstream) = weak.upgrade() else {
            return;
        };
        let set = upstream.targets();
        let due: Vec<&Arc<Target>> = set
            .targets
            .iter()
            .filter(|target| !only_new || target.state.health_streak.load(Ordering::Relaxed) == 0)
            .collect();
        let probes = due.iter().map(|target| probe(&upstream, target, &check));
        let results = futures_util::future::join_all(probes).await;
        for (target, ok) in due.into_iter().zip(results) {
            let streak = &target.state.health_streak;
            let now = match (ok, streak.load(Ordering::Relaxed)) {
                (Ok(()), s) if s > 0 => s + 1,
                (Ok(()), _) => 1,
                (Err(_), s) if s < 0 => s - 1,
                (Err(_), _) => -1,
            };
            streak.store(now, Ordering::Relaxed);
            if target.is_healthy() && -now >= i64::from(check.unhealthy_threshold) {
                target.set_healthy(false);
                let reason = format!("{} failed checks in a row", -now);
                warn!(upstream = %upstream.name, target = %target.addr, %reason, "health check: target is unhealthy");
            } else if !target.is_healthy() && now >= i64::from(check.healthy_threshold) {
                target.set_healthy(true);
                info!(upstream = %upstream.name, target = %target.addr, "health check: target is healthy again");
            }
        }
    }
}

async fn probe(
    upstream: &Upstream,
    target: &Arc<Target>,
    check: &HealthCheck,
) -> Result<(), String> {
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = Uri::from(check.path.clone());
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("wasmgate-health-check"),
    );
    let exchange = async {
        let (head, body) = request.into_parts();
        let (response, lease) = upstream
            .transport
            .send(target, &head, body)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        // Read the (small) body so the connection can go back to the pool.
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
        if http_body_util::BodyExt::collect(body).await.is_ok() {
            lease.release();
        }
        Ok::<_, String>(status)
    };
    let status = tokio::time::timeout(check.timeout, exchange)
        .await
        .map_err(|_| "timed out".to_owned())??;
    if status.as_u16() < 400 {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
