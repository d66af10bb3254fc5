//! When a failed exchange is tried again, as `CONFIG.md` states it:
//!
//! - a connect failure (nothing was sent) is retried for any method;
//! - a reset, a per-try timeout or a listed status only for the listed methods, and only if the
//!   request body could be kept for replay;
//! - retries wait a fully jittered exponential backoff and draw from a budget so that retries
//!   add at most `budget` (a fraction) to the upstream's load. Connect failures do not draw from
//!   the budget: nothing reached the upstream, so they add no load to it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use rand::Rng;

use crate::config::{Diagnostics, RetryConfig, Size};
use crate::error::{ErrorKind, ProxyError, RetrySafety};
use crate::upstream::clock_ms;

pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    on_connect_failure: bool,
    on_reset: bool,
    on_timeout: bool,
    on_status: Vec<StatusCode>,
    methods: Vec<Method>,
    pub per_try_timeout: Option<Duration>,
    backoff: Duration,
    /// Bodies up to this size are kept so the request can be replayed.
    pub max_replay_body: usize,
    budget: RetryBudget,
}

impl RetryPolicy {
    /// The policy of an upstream; without a `retry` table only connect failures are retried
    /// (once), because that is always safe.
    pub fn from_config(
        config: Option<&RetryConfig>,
        diagnostics: &mut Diagnostics,
        upstream: &str,
    ) -> Option<Self> {
        let Some(config) = config else {
            return Some(RetryPolicy {
                attempts: 1,
                on_connect_failure: true,
                on_reset: false,
                on_timeout: false,
                on_status: Vec::new(),
                methods: Vec::new(),
                per_try_timeout: None,
                backoff: Duration::from_millis(25),
                max_replay_body: 0,
                budget: RetryBudget::new(0.2),
            });
        };
        let errors_before = diagnostics.error_count();
        let mut policy = RetryPolicy {
            attempts: config.attempts,
            on_connect_failure: false,
            on_reset: false,
            on_timeout: false,
            on_status: Vec::new(),
            methods: Vec::new(),
            per_try_timeout: config.per_try_timeout.map(|d| d.get()),
            backoff: config.backoff.get(),
            max_replay_body: Size::as_usize(config.max_replay_body),
            budget: RetryBudget::new(config.budget),
        };
        for condition in &config.on {
            match condition.get_ref().as_str() {
                "connect-failure" => policy.on_connect_failure = true,
                "reset" => policy.on_reset = true,
                "timeout" => policy.on_timeout = true,
                "5xx" => policy.on_status.extend((500..600).filter_map(|c| StatusCode::from_u16(c).ok())),
                code => match code.parse::<u16>().ok().filter(|c| (500..600).contains(c)) {
                    Some(c) => policy.on_status.extend(StatusCode::from_u16(c).ok()),
                    None => diagnostics.error(
                        condition.span(),
                        format!(
                            "upstreams.{upstream}.retry.on: unknown condition `{code}` (use connect-failure, reset, timeout, 5xx or a 5xx status code)"
                        ),
                    ),
                },
            }
        }
        // A per-try timeout is answered with 504 by the gateway, so listing 504 covers it too.
        policy.on_timeout |= policy.on_status.contains(&StatusCode::GATEWAY_TIMEOUT);
        for method in &config.methods {
            match Method::from_bytes(method.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(m) => policy.methods.push(m),
                Err(_) => diagnostics.error(
                    method.span(),
                    format!("`{}` is not an HTTP method", method.get_ref()),
                ),
            }
        }
        (diagnostics.error_count() == errors_before).then_some(policy)
    }

    /// Whether a request with this method may have its body kept for a replay.
    pub fn may_replay(&self, method: &Method) -> bool {
        self.attempts > 0 && self.methods.contains(method)
    }

    /// Whether to try again after `error`, given what was sent and whether the body can be replayed.
    pub fn retries_error(
        &self,
        error: &ProxyError,
        method: &Method,
        body_replayable: bool,
    ) -> bool {
        match error.retry {
            RetrySafety::Never => false,
            RetrySafety::NothingSent => self.on_connect_failure && body_replayable,
            RetrySafety::MaybeProcessed => {
                let listed = match error.kind {
                    ErrorKind::UpstreamTimeout => self.on_timeout,
                    ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => self.on_reset,
                    _ => false,
                };
                listed && body_replayable && self.methods.contains(method)
            }
        }
    }

    /// Whether to try again after the upstream answered with `status`.
    pub fn retries_status(
        &self,
        status: StatusCode,
        method: &Method,
        body_replayable: bool,
    ) -> bool {
        self.on_status.contains(&status) && body_replayable && self.methods.contains(method)
    }

    /// Counts a first try for the budget.
    pub fn record_request(&self) {
        self.budget.deposit();
    }

    /// Asks the budget for one retry (connect failures are free, see the module docs).
    pub fn take_budget(&self, error: Option<&ProxyError>) -> bool {
        if error.is_some_and(|e| e.retry == RetrySafety::NothingSent) {
            return true;
        }
        self.budget.withdraw()
    }

    /// Fully jittered exponential backoff before retry number `retry` (1-based), capped at 10x base.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.backoff.saturating_mul(10));
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// A token bucket in thousandths of a retry: every first try deposits `ratio`, every retry
/// withdraws one. A small reserve refilled over time keeps retries possible on quiet upstreams.
struct RetryBudget {
    ratio_milli: i64,
    balance_milli: AtomicI64,
    last_refill_ms: AtomicU64,
}

/// Retries always available on top of the ratio, refilled at one per second.
const RESERVE_RETRIES: i64 = 10;
/// The balance never exceeds this many retries, so a long quiet period cannot buy a storm.
const MAX_BANKED_RETRIES: i64 = 100;

impl RetryBudget {
    fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio_milli: (ratio.clamp(0.0, 1.0) * 1000.0) as i64,
            balance_milli: AtomicI64::new(RESERVE_RETRIES * 1000),
            last_refill_ms: AtomicU64::new(clock_ms()),
        }
    }

    fn cap_milli(&self) -> i64 {
        (MAX_BANKED_RETRIES * self.ratio_milli).max(RESERVE_RETRIES * 1000)
    }

    fn deposit(&self) {
        if self.ratio_milli > 0 {
            let before = self
                .balance_milli
                .fetch_add(self.ratio_milli, Ordering::Relaxed);
            if before + self.ratio_milli > self.cap_milli() {
                self.balance_milli
                    .fetch_min(self.cap_milli(), Ordering::Relaxed);
            }
        }
    }

    fn refill(&self) {
        let now = clock_ms();
        let last = self.last_refill_ms.load(Ordering::Relaxed);
        let seconds = (now.saturating_sub(last) / 1000) as i64;
        if seconds > 0
            && self
                .last_refill_ms
                .compare_exchange(
                    last,
                    last + seconds as u64 * 1000,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let reserve = RESERVE_RETRIES * 1000;
            let _ = self
                .balance_milli
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    (b < reserve).then(|| (b + seconds * 1000).min(reserve))
                });
        }
    }

    fn withdraw(&self) -> bool {
        self.refill();
        self.balance_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_about_the_ratio() {
        let budget = RetryBudget::new(0.2);
        let mut granted = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                granted += 1;
            }
        }
        // 200 from the ratio plus the reserve of 10.
        assert!((200..=211).contains(&granted), "{granted}");
    }

    #[test]
    fn zero_budget_still_has_a_reserve_then_stops() {
        let budget = RetryBudget::new(0.0);
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted as i64, RESERVE_RETRIES);
    }
}
