//! Time limits that count the CPU a plugin used, not only the wall clock.
//!
//! The watchdog (`watchdog.rs`) advances the engine's epoch when a running call is due, and
//! every running call then stops at its next loop or function entry to ask [`Deadline`] what
//! to do. On a busy machine a thread can lose the CPU for longer than a plugin's whole
//! `time_limit` in the middle of a trivial call, and a pure wall-clock limit would then fail
//! innocent requests. So when the deadline passes, the thread's CPU clock decides: the call gets
//! another `time_limit` of wall time, and is stopped at the next expiry only if it used most of
//! that window's CPU (a plugin that spins is stopped after about twice its limit), or after
//! [`MAX_EXTENSIONS`] windows whatever it used, which bounds the latency a plugin can add on a
//! starved machine. The clocks are read only when the epoch advances, never on the fast path.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use super::watchdog::{self, duration_nanos, nanos_at, now_nanos};

/// Windows granted to a call that was held up rather than busy.
const MAX_EXTENSIONS: u32 = 10;

/// The epoch deadline of every call: the next advance. The watchdog advances the epoch only
/// when some call is due, so a call that is not sees one check per advance, rarely.
pub const NEXT_EPOCH: u64 = 1;

#[derive(Debug, Default)]
pub struct Deadline {
    limit: Duration,
    /// When the current window ends ([`watchdog::now_nanos`]).
    due: u64,
    /// The thread's CPU time when the deadline first passed in this call.
    first_expiry_cpu: Option<Duration>,
    extensions: u32,
}

impl Deadline {
    /// Starts a call with `limit` at `started`; returns when it is due ([`now_nanos`]).
    pub fn begin(&mut self, limit: Duration, started: Instant) -> u64 {
        let due = nanos_at(started).saturating_add(duration_nanos(limit));
        *self = Deadline {
            limit,
            due,
            first_expiry_cpu: None,
            extensions: 0,
        };
        due
    }

    /// The epoch advanced during the call: go on, give the call another window, or stop it.
    pub fn on_expiry(&mut self) -> UpdateDeadline {
        let now = now_nanos();
        if now < self.due {
            // Another call was due (the epoch is the engine's, not this store's).
            return UpdateDeadline::Continue(NEXT_EPOCH);
        }
        let cpu = thread_cpu_time();
        match self.first_expiry_cpu {
            None => self.extensions = 1,
            Some(first) => {
                // Busy for most of the last window.
                let busy = self.limit - self.limit / 4;
                if cpu.saturating_sub(first) >= busy || self.extensions >= MAX_EXTENSIONS {
                    return UpdateDeadline::Interrupt;
                }
                self.extensions += 1;
            }
        }
        self.first_expiry_cpu = Some(cpu);
        self.due = now.saturating_add(duration_nanos(self.limit));
        watchdog::extend(self.due);
        UpdateDeadline::Continue(NEXT_EPOCH)
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

    /// Waits on the wall clock until `deadline`'s window has passed.
    fn sleep_past(deadline: &Deadline) {
        while now_nanos() < deadline.due {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn a_call_that_is_not_due_goes_on() {
        let mut deadline = Deadline::default();
        deadline.begin(Duration::from_secs(60), Instant::now());
        assert!(matches!(
            deadline.on_expiry(),
            UpdateDeadline::Continue(NEXT_EPOCH)
        ));
        assert_eq!(deadline.extensions, 0);
    }

    #[test]
    fn a_busy_call_is_stopped_and_an_idle_one_extended() {
        let mut deadline = Deadline::default();
        let limit = Duration::from_millis(5);
        deadline.begin(limit, Instant::now());
        sleep_past(&deadline);
        // First expiry: always extended.
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Continue(_)));
        assert_eq!(deadline.extensions, 1);
        // The thread slept (was held up): extended again.
        sleep_past(&deadline);
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Continue(_)));
        assert_eq!(deadline.extensions, 2);
        // The thread used the CPU for a whole window (measured on its own CPU clock, so a busy
        // test machine that preempts it does not matter): stopped.
        let start = thread_cpu_time();
        while thread_cpu_time() - start < Duration::from_millis(6) {
            std::hint::spin_loop();
        }
        sleep_past(&deadline);
        assert!(matches!(deadline.on_expiry(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn a_starved_call_is_stopped_after_the_last_extension() {
        let mut deadline = Deadline::default();
        deadline.begin(Duration::from_millis(1), Instant::now());
        let mut expiries = 0;
        loop {
            sleep_past(&deadline);
            if matches!(deadline.on_expiry(), UpdateDeadline::Interrupt) {
                break;
            }
            expiries += 1;
            assert!(expiries <= MAX_EXTENSIONS, "never stopped");
        }
        assert_eq!(expiries, MAX_EXTENSIONS);
    }
}
