//! Time limits that count the CPU a plugin used, not only the wall clock.
//!
//! wasmtime's epoch interruption is a wall clock: every [`EPOCH_TICK`] the epoch advances, and
//! a call past its deadline stops at its next loop or function entry. On a busy machine a
//! thread can lose the CPU for longer than a plugin's whole `time_limit` in the middle of a
//! trivial call, and a pure wall-clock limit would then fail innocent requests. So when the
//! deadline passes, the thread's CPU clock decides: the call gets another `time_limit` of
//! wall time, and is stopped at the next expiry only if it used most of that window's CPU
//! (a plugin that spins is stopped after one to two times its limit), or after
//! [`MAX_EXTENSIONS`] windows whatever it used, which bounds the latency a plugin can add on a
//! starved machine. The clock is read only when a deadline passes, never on the fast path.

use std::time::Duration;

use wasmtime::UpdateDeadline;

use super::engine::{EPOCH_TICK, ticks};

/// Windows granted to a call that was held up rather than busy.
const MAX_EXTENSIONS: u32 = 10;

#[derive(Debug, Default)]
pub struct Deadline {
    limit: Duration,
    /// The thread's CPU time when the deadline first passed in this call.
    first_expiry_cpu: Option<Duration>,
    extensions: u32,
}

impl Deadline {
    /// Starts a call with `limit`; returns the epoch ticks until the first expiry.
    pub fn begin(&mut self, limit: Duration) -> u64 {
        *self = Deadline {
            limit,
            first_expiry_cpu: None,
            extensions: 0,
        };
        ticks(limit)
    }

    /// The deadline passed: extend it, or stop the call.
    pub fn on_expiry(&mut self) -> UpdateDeadline {
        let now = thread_cpu_time();
        let Some(first) = self.first_expiry_cpu else {
            self.first_expiry_cpu = Some(now);
            self.extensions = 1;
            return UpdateDeadline::Continue(ticks(self.limit));
        };
        // Busy for most of the last window (one tick of slack for the tick's own jitter).
        let busy = self.limit.saturating_sub(EPOCH_TICK).max(EPOCH_TICK / 2);
        if now.saturating_sub(first) >= busy || self.extensions >= MAX_EXTENSIONS {
            return UpdateDeadline::Interrupt;
        }
        self.first_expiry_cpu = Some(now);
        self.extensions += 1;
        UpdateDeadline::Continue(ticks(self.limit))
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on
    // Linux (if the call failed, `now` stays zero and the call is treated as idle).
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_call_is_stopped_and_an_idle_one_extended() {
        let mut deadline = Deadline::default();
        let limit = Duration::from_millis(5);
        assert_eq!(deadline.begin(limit), 5);
        // First expiry: always extended.
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Continue(5)));
        // The thread slept (was held up): extended again.
        std::thread::sleep(Duration::from_millis(6));
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Continue(5)));
        // The thread used the CPU for a whole window (measured on its own CPU clock, so a busy
        // test machine that preempts it does not matter): stopped.
        let start = thread_cpu_time();
        while thread_cpu_time() - start < Duration::from_millis(6) {
            std::hint::spin_loop();
        }
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn a_starved_call_is_stopped_after_the_last_extension() {
        let mut deadline = Deadline::default();
        deadline.begin(Duration::from_millis(5));
        let mut expiries = 0;
        while matches!(deadline.on_expiry(), UpdateDeadline::Continue(_)) {
            expiries += 1;
            assert!(expiries <= MAX_EXTENSIONS, "never stopped");
        }
        assert_eq!(expiries, MAX_EXTENSIONS);
    }
}
