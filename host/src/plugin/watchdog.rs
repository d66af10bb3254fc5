//! The thread that stops plugin calls running past their time limit.
//!
//! wasmtime interrupts a call when the engine's epoch reaches the store's deadline, so
//! something has to advance the epoch. A thread that advanced it every millisecond (the first
//! design) woke a thousand times a second under load and preempted the worker on its core
//! each time: 0.5-1 us of CPU per request with one plugin (docs/benchmarks.md). The watchdog
//! instead knows when each running call is due: a thread that runs plugin code publishes the
//! call's deadline in its [`CallSlot`] for the length of the call, and the watchdog sleeps
//! until the earliest deadline, or, with no call running, for the shortest time limit a recent
//! call has had (a call that starts meanwhile with a shorter one wakes it to look again). It
//! advances the epoch only when a call is overdue. Every running store's epoch deadline is the
//! next epoch, so an advance reaches each running call at its next loop or function entry: the
//! overdue one decides what to do (`deadline.rs`), the others find their own deadline has not
//! passed and go on.
//!
//! So under load the watchdog wakes a couple of hundred times a second at most and advances
//! nothing, and a call is stopped at its deadline plus the sleep's wake-up latency, not at the
//! next whole tick. After [`IDLE`] without a call it parks; the next call wakes it.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::Engine;

/// Without a plugin call for this long, the watchdog parks.
const IDLE: Duration = Duration::from_millis(100);
/// While a call is overdue but has not reached an epoch check yet (it is in a host call, or
/// its thread is not running), the epoch is advanced again this often.
const OVERDUE_RETRY: Duration = Duration::from_millis(1);
/// The longest sleep: the idle check's granularity.
const MAX_SLEEP: Duration = IDLE;
/// How long the shortest time limit is remembered: after a reload lengthens the limits, the
/// watchdog sleeps for the new ones within this long (the first call after a reset wakes it
/// once, to learn the limit).
const FORGET_LIMITS: Duration = Duration::from_secs(1);
/// A slot's deadline when its thread runs no plugin code.
const NOT_RUNNING: u64 = u64::MAX;

/// Nanoseconds on a monotonic clock, zero at the first reading in this process. Plugins read
/// it too (`wasi:clocks/monotonic-clock#now`).
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// [`now_nanos`] of an instant already read.
pub fn nanos_at(instant: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    duration_nanos(instant.saturating_duration_since(start))
}

/// A duration in nanoseconds, at most half of `u64::MAX`: a time plus a limit never reaches
/// [`NOT_RUNNING`], nor wraps.
pub fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).map_or(u64::MAX / 2, |nanos| nanos.min(u64::MAX / 2))
}

/// One thread's running plugin call, as the watchdog sees it.
struct CallSlot {
    /// When the call is due ([`now_nanos`]), or [`NOT_RUNNING`].
    deadline: AtomicU64,
}

thread_local! {
    /// This thread's slot, registered with the watchdog on first use (there is one watchdog,
    /// the engine's). The watchdog holds it weakly, so a slot goes when its thread ends.
    static SLOT: OnceCell<Arc<CallSlot>> = const { OnceCell::new() };
}

pub struct Watchdog {
    slots: Mutex<Vec<Weak<CallSlot>>>,
    /// Calls begun: a change between two looks is activity, and it is the handshake with
    /// parking (see [`Watchdog::park_while_idle`]).
    started: AtomicU64,
    parked: AtomicBool,
    /// The shortest time limit a call has had since the last reset (every [`FORGET_LIMITS`]),
    /// in nanoseconds.
    shortest_limit: AtomicU64,
    thread: std::thread::Thread,
}

impl Watchdog {
    pub fn start(engine: &Engine) -> Result<Arc<Watchdog>, String> {
        Self::start_forgetting_after(engine, FORGET_LIMITS)
    }

    /// [`Watchdog::start`], forgetting the shortest limit every `forget_limits`.
    fn start_forgetting_after(
        engine: &Engine,
        forget_limits: Duration,
    ) -> Result<Arc<Watchdog>, String> {
        let engine = engine.weak();
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Arc<Watchdog>>(1);
        let thread = std::thread::Builder::new()
            .name("wasm-watchdog".into())
            .spawn(move || {
                let Ok(watchdog) = receiver.recv() else {
                    return;
                };
                let mut idle = Idle {
                    last_started: 0,
                    since: now_nanos(),
                };
                let forget_after = duration_nanos(forget_limits);
                let mut limits_since = now_nanos();
                loop {
                    let now = now_nanos();
                    if now.saturating_sub(limits_since) >= forget_after {
                        watchdog.forget_limits();
                        limits_since = now;
                    }
                    let earliest = watchdog.earliest_deadline();
                    let sleep = if earliest <= now {
                        let Some(engine) = engine.upgrade() else {
                            return;
                        };
                        engine.increment_epoch();
                        OVERDUE_RETRY
                    } else {
                        watchdog.park_while_idle(&mut idle, now, earliest);
                        let now = now_nanos();
                        let shortest = watchdog.shortest_limit.load(Ordering::Relaxed);
                        let wake = earliest.min(now.saturating_add(shortest));
                        Duration::from_nanos(wake.saturating_sub(now)).min(MAX_SLEEP)
                    };
                    // A park, so that a call with a shorter limit than any before can cut it short.
                    std::thread::park_timeout(sleep);
                }
            })
            .map_err(|err| format!("cannot start the plugin watchdog: {err}"))?;
        let watchdog = Arc::new(Watchdog {
            slots: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            shortest_limit: AtomicU64::new(u64::MAX),
            thread: thread.thread().clone(),
        });
        sender
            .send(watchdog.clone())
            .map_err(|_| "the plugin watchdog stopped at start".to_owned())?;
        Ok(watchdog)
    }

    /// Publishes that this thread runs plugin code due at `deadline` ([`now_nanos`]) with a
    /// time limit of `limit`, until the guard drops.
    pub fn watch(&self, deadline: u64, limit: Duration) -> Watched {
        let previous = SLOT.with(|slot| {
            slot.get_or_init(|| self.register())
                .deadline
                .swap(deadline, Ordering::SeqCst)
        });
        // After the deadline is published, as the watchdog forgets the limits before it looks
        // at the deadlines (both sequentially consistent): either it sees this call's deadline,
        // or this load sees the forgotten limit and wakes it.
        let limit = duration_nanos(limit);
        if limit < self.shortest_limit.load(Ordering::SeqCst) {
            // The watchdog may be asleep for longer than this call may take: wake it to look.
            self.shortest_limit.fetch_min(limit, Ordering::SeqCst);
            self.thread.unpark();
        }
        // After the deadline is published: either the watchdog's look after `parked` sees
        // this call, or this load sees `parked` and wakes it.
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Watched { previous }
    }

    fn register(&self) -> Arc<CallSlot> {
        let slot = Arc::new(CallSlot {
            deadline: AtomicU64::new(NOT_RUNNING),
        });
        let mut slots = self.slots.lock();
        slots.retain(|slot| slot.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// The earliest deadline of a running call, or [`NOT_RUNNING`].
    fn earliest_deadline(&self) -> u64 {
        let slots = self.slots.lock();
        slots
            .iter()
            .filter_map(Weak::upgrade)
            .map(|slot| slot.deadline.load(Ordering::SeqCst))
            .min()
            .unwrap_or(NOT_RUNNING)
    }

    /// Lets the limits of calls from now on decide how long the watchdog may sleep (see
    /// [`Watchdog::watch`] for the handshake).
    fn forget_limits(&self) {
        self.shortest_limit.store(u64::MAX, Ordering::SeqCst);
    }

    /// Parks once no call has begun for [`IDLE`]. The park is a Dekker-style handshake with
    /// [`Watchdog::watch`] (sequentially consistent on both sides): either the second look at
    /// `started` here sees a new call, or that call's load sees `parked` and unparks. `park`
    /// keeps an early unpark's token, so no wake-up is lost.
    fn park_while_idle(&self, idle: &mut Idle, now: u64, earliest: u64) {
        let started = self.started.load(Ordering::SeqCst);
        if earliest != NOT_RUNNING || started != idle.last_started {
            *idle = Idle {
                last_started: started,
                since: now,
            };
            return;
        }
        if now.saturating_sub(idle.since) < duration_nanos(IDLE) {
            return;
        }
        self.parked.store(true, Ordering::SeqCst);
        if self.started.load(Ordering::SeqCst) == started {
            std::thread::park();
        }
        self.parked.store(false, Ordering::SeqCst);
        idle.since = now_nanos();
    }
}

/// The watchdog's record of recent activity.
struct Idle {
    last_started: u64,
    since: u64,
}

/// Moves this thread's running call's deadline (the call was given another window).
pub fn extend(deadline: u64) {
    SLOT.with(|slot| {
        if let Some(slot) = slot.get() {
            slot.deadline.store(deadline, Ordering::Release);
        }
    });
}

/// Plugin code runs on this thread; see [`Watchdog::watch`].
pub struct Watched {
    /// The deadline of a call this one runs inside (none today: calls do not nest, but an
    /// instantiation inside a call would).
    previous: u64,
}

impl Drop for Watched {
    fn drop(&mut self) {
        SLOT.with(|slot| {
            if let Some(slot) = slot.get() {
                slot.deadline.store(self.previous, Ordering::Release);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_publishes_its_running_call_and_withdraws_it() {
        // Threads register their slot with the first watchdog they meet (there is one per
        // process outside tests): a fresh thread for this one.
        std::thread::spawn(publish_and_withdraw).join().unwrap();
    }

    fn publish_and_withdraw() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        // Limits forgotten only when the test says so.
        let watchdog = Watchdog::start_forgetting_after(&engine, Duration::MAX).unwrap();
        // Far in the future, so that the watchdog never finds these calls overdue.
        let due = now_nanos() + 3_600_000_000_000;
        let limit = Duration::from_secs(3600);
        {
            let _outer = watchdog.watch(due, limit);
            assert_eq!(watchdog.earliest_deadline(), due);
            {
                // An instantiation inside a call: its deadline, then the call's again.
                let _inner = watchdog.watch(due - 1, limit);
                assert_eq!(watchdog.earliest_deadline(), due - 1);
            }
            assert_eq!(watchdog.earliest_deadline(), due);
            extend(due + 1);
            assert_eq!(watchdog.earliest_deadline(), due + 1);
            // Another thread's call counts too, and its slot goes with the thread.
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let _other = watchdog.watch(due - 2, limit);
                    assert_eq!(watchdog.earliest_deadline(), due - 2);
                });
            });
            assert_eq!(watchdog.earliest_deadline(), due + 1);
        }
        assert_eq!(watchdog.earliest_deadline(), NOT_RUNNING);
        assert_eq!(
            watchdog.shortest_limit.load(Ordering::Relaxed),
            duration_nanos(limit)
        );
        assert_eq!(watchdog.started.load(Ordering::Relaxed), 3);
        // Forgotten (as after a reload that lengthened the limits), the limit is learnt again
        // from the next call.
        watchdog.forget_limits();
        let longer = Duration::from_secs(7200);
        drop(watchdog.watch(due, longer));
        assert_eq!(
            watchdog.shortest_limit.load(Ordering::Relaxed),
            duration_nanos(longer)
        );
    }
}
