//! Passive outlier detection (circuit breaking) per target, after Envoy's consecutive-5xx
//! detector: a target that fails `consecutive_failures` times in a row is ejected for `eject`,
//! doubled on each repeat ejection up to `max_eject`. At most `max_ejected_percent` of the
//! targets are ejected at once (but always at least one may be), and the last available target
//! is never ejected: a degraded answer beats a certain 503.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::target::Target;
use crate::config::OutlierConfig;

#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    consecutive_failures: u32,
    base_eject_ms: u64,
    max_eject_ms: u64,
    max_ejected_percent: u32,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl OutlierPolicy {
    pub fn from_config(config: &OutlierConfig) -> Self {
        OutlierPolicy {
            consecutive_failures: config.consecutive_failures.max(1),
            base_eject_ms: millis(config.eject.get()),
            max_eject_ms: millis(config.max_eject.get().max(config.eject.get())),
            max_ejected_percent: config.max_ejected_percent.min(100),
        }
    }

    /// A response that was not a failure: the streak is over, and a target that has behaved
    /// since its last ejection ended is forgiven its ejection history.
    pub fn record_success(&self, target: &Target, now_ms: u64) {
        if target.state.consecutive_failures.load(Ordering::Relaxed) != 0 {
            target
                .state
                .consecutive_failures
                .store(0, Ordering::Relaxed);
        }
        if target.state.ejections.load(Ordering::Relaxed) != 0
            && now_ms > target.ejected_until().saturating_add(self.base_eject_ms)
        {
            target.state.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A 5xx, reset, timeout or connect failure. Returns the ejection time if the target was
    /// ejected by it.
    pub fn record_failure(
        &self,
        targets: &[Arc<Target>],
        index: usize,
        now_ms: u64,
    ) -> Option<Duration> {
        let target = &targets[index];
        let failures = target
            .state
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < self.consecutive_failures || target.is_ejected(now_ms) {
            return None;
        }
        let ejected = targets.iter().filter(|t| t.is_ejected(now_ms)).count();
        let others_available = targets
            .iter()
            .enumerate()
            .any(|(i, t)| i != index && t.is_available(now_ms));
        // At least one target may always be ejected, unless the percentage is zero (off).
        let within_percent = self.max_ejected_percent > 0
            && (ejected == 0
                || (ejected + 1) * 100 <= targets.len() * self.max_ejected_percent as usize);
        if !others_available || !within_percent {
            return None;
        }
        let repeats = target
            .state
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .min(20);
        let eject_ms = self
            .base_eject_ms
            .saturating_mul(1 << repeats)
            .min(self.max_eject_ms);
        target.set_ejected_until(now_ms + eject_ms);
        target
            .state
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        Some(Duration::from_millis(eject_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as ConfigDuration;

    fn policy(failures: u32, percent: u32) -> OutlierPolicy {
        OutlierPolicy::from_config(&OutlierConfig {
            consecutive_failures: failures,
            eject: ConfigDuration::from_secs(10),
            max_eject: ConfigDuration::from_secs(25),
            max_ejected_percent: percent,
        })
    }

    fn targets(n: usize) -> Vec<Arc<Target>> {
        (0..n)
            .map(|i| Arc::new(Target::new(&format!("127.0.0.1:{}", 9000 + i), 1).unwrap()))
            .collect()
    }

    #[test]
    fn ejects_after_streak_and_doubles_up_to_cap() {
        let t = targets(2);
        let p = policy(3, 50);
        assert_eq!(p.record_failure(&t, 0, 1000), None);
        assert_eq!(p.record_failure(&t, 0, 1000), None);
        assert_eq!(p.record_failure(&t, 0, 1000), Some(Duration::from_secs(10)));
        assert!(t[0].is_ejected(1000) && !t[0].is_ejected(11_000));
        for _ in 0..3 {
            p.record_failure(&t, 0, 12_000);
        }
        assert!(t[0].is_ejected(31_000), "second ejection doubles to 20s");
        for _ in 0..3 {
            p.record_failure(&t, 0, 40_000);
        }
        assert_eq!(t[0].ejected_until(), 65_000, "third ejection capped at 25s");
    }

    #[test]
    fn success_resets_streak() {
        let t = targets(2);
        let p = policy(2, 50);
        p.record_failure(&t, 0, 0);
        p.record_success(&t[0], 0);
        assert_eq!(p.record_failure(&t, 0, 0), None);
    }

    #[test]
    fn never_ejects_last_target_or_past_percent() {
        let t = targets(2);
        let p = policy(1, 100);
        assert!(p.record_failure(&t, 0, 0).is_some());
        assert_eq!(
            p.record_failure(&t, 1, 0),
            None,
            "the last available target stays"
        );
        let t = targets(4);
        let p = policy(1, 50);
        assert!(p.record_failure(&t, 0, 0).is_some());
        assert!(p.record_failure(&t, 1, 0).is_some());
        assert_eq!(p.record_failure(&t, 2, 0), None, "50% of 4 are already out");
        let t = targets(4);
        assert_eq!(
            policy(1, 0).record_failure(&t, 0, 0),
            None,
            "0% turns ejection off"
        );
    }
}
