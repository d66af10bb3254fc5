//! One upstream target (an address) and the state the balancer, health checker and outlier
//! detector share about it. All of it is atomics: the request path never takes a lock here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use http::uri::Authority;

use super::transport::ConnectionPool;

/// Milliseconds since the process started: a cheap monotonic clock for deadlines kept in atomics.
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
pub struct Target {
    /// As written in the config (`127.0.0.1:9001`, `users.internal:80`); shared with the
    /// access log of every request that goes there.
    pub addr: std::sync::Arc<str>,
    pub authority: Authority,
    /// At least 1. Discovery may change it in place (the target keeps its state).
    weight: AtomicU32,
    pub state: TargetState,
    /// Idle connections to this target.
    pub pool: ConnectionPool,
}

#[derive(Debug)]
pub struct TargetState {
    /// Set by active health checks; targets start healthy so a fresh gateway serves at once.
    healthy: AtomicBool,
    /// Outlier ejection: the target gets no traffic until this clock_ms() value.
    ejected_until: AtomicU64,
    /// How many times in a row the target has been ejected (the ejection time doubles).
    pub(crate) ejections: AtomicU32,
    pub(crate) consecutive_failures: AtomicU32,
    /// Requests currently using the target (least-request balancing).
    in_flight: AtomicUsize,
    /// Active health checks in a row with the same result: positive = successes, negative =
    /// failures. Kept here so that it follows the target across discovery's lists.
    pub(crate) health_streak: AtomicI64,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            health_streak: AtomicI64::new(0),
        }
    }
}

impl Target {
    pub fn new(addr: &str, weight: u32) -> Result<Self, String> {
        let authority: Authority = addr
            .parse()
            .map_err(|_| format!("target address `{addr}` is not `host:port`"))?;
        if authority.port_u16().is_none() {
            return Err(format!("target address `{addr}` needs a port"));
        }
        if authority.as_str().contains('@') {
            return Err(format!(
                "target address `{addr}` must not contain credentials"
            ));
        }
        Ok(Target {
            addr: std::sync::Arc::from(addr),
            authority,
            weight: AtomicU32::new(weight.max(1)),
            state: TargetState::default(),
            pool: ConnectionPool::default(),
        })
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Healthy by active checks and not currently ejected.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.state.healthy.load(Ordering::Relaxed) && !self.is_ejected(now_ms)
    }

    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.state.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    pub fn ejected_until(&self) -> u64 {
        self.state.ejected_until.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ejected_until(&self, until_ms: u64) {
        self.state.ejected_until.store(until_ms, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request against the target until the guard is dropped.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InFlightGuard {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            target: self.clone(),
        }
    }
}

/// Decrements the target's in-flight count when the exchange is over.
#[derive(Debug)]
pub struct InFlightGuard {
    target: std::sync::Arc<Target>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.target.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
