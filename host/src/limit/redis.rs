//! A route's rate limit shared through Redis (`rate_limit.store = "redis://HOST:PORT"`): the
//! same GCRA as the local limiter, with each key's theoretical arrival time kept in Redis, so
//! that every gateway using the store draws from one bucket per key.
//!
//! A check is one Lua script (EVALSHA, loaded again after NOSCRIPT), so it is atomic however many
//! gateways run it, and it reads Redis's clock (`TIME`), so gateways whose clocks disagree still
//! agree on the bucket. A key expires once its bucket would be full again.
//!
//! Redis never fails a request: a check that errs or does not answer within the route's
//! `store_timeout` marks the store down and is decided by the route's local limiter. While the
//! store is down, checks go straight to the local limiter; one background task per store
//! reconnects and marks it up again.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, Script};
use tokio::sync::Notify;

use super::Key;
use crate::telemetry::metrics::metrics;

/// How long a check waits for Redis when the route sets no `store_timeout`. A check on the
/// request path: past this, the local limiter decides.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Connecting (and the PING that proves it) in the background, never on the request path.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first reconnect attempt after the store went down; later ones back off to
/// [`RETRY_AT_MOST_EVERY`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_AT_MOST_EVERY: Duration = Duration::from_secs(5);

/// GCRA as governor implements it, in microseconds of Redis's clock. KEYS[1] holds the
/// theoretical arrival time (TAT); ARGV[1] is the emission interval, ARGV[2] the tolerance
/// (interval * (burst - 1)). Returns {1, TAT - now} when allowed, {0, wait} when limited.
const GCRA: &str = r"
if redis.replicate_commands then
  -- Redis before 5 replicates scripts verbatim and refuses writes after TIME without this.
  redis.replicate_commands()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local allow_at = tat - tau
if now < allow_at then
  return {0, allow_at - now}
end
tat = math.max(tat, now) + interval
-- %d: a plain tostring would write 1.7e+15 and lose the microseconds.
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
return {1, tat - now}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// A Redis server that shared limits keep their buckets in: one connection, multiplexed over
/// every check of every route that names the same URL.
pub struct Store {
    client: redis::Client,
    /// The URL without its password: the metric label and what the logs name.
    name: String,
    /// The live connection while the store is up, `None` while it is down.
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Wakes the reconnect task when a check finds the store down, and when the store is
    /// dropped (the task then ends).
    wake: Arc<Notify>,
    started: AtomicBool,
    up: Gauge,
}

impl Store {
    /// The store for `url`, shared with every limit that names the same URL, across reloads
    /// too. Only parses: connecting waits for [`Store::start`], so `wasmgate check` needs no
    /// Redis.
    pub fn get(url: &str) -> Result<Arc<Store>, String> {
        static STORES: Mutex<BTreeMap<String, Weak<Store>>> =
            parking_lot::const_mutex(BTreeMap::new());
        let mut stores = STORES.lock();
        stores.retain(|_, store| store.strong_count() > 0);
        if let Some(store) = stores.get(url).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let (client, name) = parse_url(url)?;
        let store = Arc::new(Store {
            up: metrics().rate_limit_store.store_up(&name),
            client,
            name,
            connection: ArcSwapOption::empty(),
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
        });
        stores.insert(url.to_owned(), Arc::downgrade(&store));
        Ok(store)
    }

    /// Starts connecting, once; the task lives as long as the store.
    pub fn start(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::Relaxed) {
            tokio::spawn(keep_connected(Arc::downgrade(self), self.wake.clone()));
        }
    }

    /// A check on `failed` went wrong. Only the first check to see a connection fail takes the
    /// store down and reports it; the others found it down already.
    fn mark_down(&self, failed: &Arc<MultiplexedConnection>, error: &dyn Display) {
        let previous = self.connection.compare_and_swap(failed, None);
        if previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, failed))
        {
            self.up.set(0);
            self.report_down(error);
            self.wake.notify_one();
        }
    }

    fn report_down(&self, error: &dyn Display) {
        tracing::warn!(
            store = %self.name,
            "rate-limit store unavailable, each gateway limits its routes alone until it \
             answers again: {error}"
        );
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        // Checks time out on their own (`store_timeout`); this only bounds a stuck connection.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(connection)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        metrics().rate_limit_store.forget_store(&self.name);
        self.wake.notify_one();
    }
}

/// The store's background task: connects, then waits until a check finds it down and
/// reconnects, backing off while Redis does not answer. Holds the store only while it works
/// with it, and ends when the store is dropped.
async fn keep_connected(store: Weak<Store>, wake: Arc<Notify>) {
    let mut ever_up = false;
    loop {
        let down_since = Instant::now();
        let mut pause = RETRY_FIRST;
        // At the start, connect at once. After a failure, not at once: a Redis that was only
        // slow would be up again straight away, and down again with the next slow answer.
        let mut wait = ever_up;
        let mut attempts = 0u32;
        loop {
            if wait {
                tokio::select! {
                    () = tokio::time::sleep(jittered(pause)) => {}
                    () = wake.notified() => {}
                }
                pause = (pause * 2).min(RETRY_AT_MOST_EVERY);
            }
            wait = true;
            let Some(live) = store.upgrade() else { return };
            attempts += 1;
            match live.connect().await {
                Ok(connection) => {
                    live.connection.store(Some(Arc::new(connection)));
                    live.up.set(1);
                    if ever_up {
                        tracing::info!(
                            store = %live.name,
                            down_for = ?down_since.elapsed(),
                            "rate-limit store reachable again, limits are shared again"
                        );
                    } else {
                        tracing::info!(store = %live.name, "rate-limit store connected");
                    }
                    ever_up = true;
                    break;
                }
                // After a failed check, the check has said so already.
                Err(error) if !ever_up && attempts == 1 => live.report_down(&error),
                Err(error) => tracing::debug!(
                    store = %live.name,
                    attempts,
                    "rate-limit store still unavailable: {error}"
                ),
            }
        }
        wake.notified().await;
    }
}

/// ±20 %, so that the gateways of a fleet do not reconnect in step after an outage.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Checks a `store` URL: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`. Returns the client and the
/// URL without its password.
fn parse_url(url: &str) -> Result<(redis::Client, String), String> {
    match url.split_once("://") {
        Some(("redis", _)) => {}
        Some(("rediss", _)) => {
            return Err(format!(
                "`{url}`: TLS to Redis (rediss://) is not supported; use redis://"
            ));
        }
        _ => return Err(format!("`{url}` is not a redis://HOST:PORT URL")),
    }
    let client = redis::Client::open(url).map_err(|err| format!("`{url}`: {err}"))?;
    let info = client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(format!("`{url}` is not a redis://HOST:PORT URL"));
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let name = format!("redis://{host}:{port}/{}", info.redis_settings().db());
    Ok((client, name))
}

/// What the script decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Allowed { remaining: u32 },
    Limited { wait: Duration },
}

/// A route's limit in a store.
pub(super) struct SharedLimit {
    store: Arc<Store>,
    /// `wasmgate:rl:ROUTE:`, the start of every key of the route.
    prefix: Vec<u8>,
    /// The emission interval, in microseconds (at least 1).
    interval_us: u64,
    burst: u32,
    timeout: Duration,
    fallbacks: Counter,
}

impl SharedLimit {
    pub(super) fn new(
        store: Arc<Store>,
        route: &str,
        interval: Duration,
        burst: u32,
        timeout: Duration,
    ) -> SharedLimit {
        SharedLimit {
            store,
            prefix: format!("wasmgate:rl:{route}:").into_bytes(),
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst,
            timeout,
            fallbacks: metrics().rate_limit_store.fallbacks(route),
        }
    }

    pub(super) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Takes one unit of `key`'s shared bucket; `None` when the store is unavailable and the
    /// local limiter must decide (counted as a fallback).
    pub(super) async fn take(&self, key: &Key) -> Option<Reply> {
        let reply = self.ask(key).await;
        if reply.is_none() {
            self.fallbacks.inc();
        }
        reply
    }

    async fn ask(&self, key: &Key) -> Option<Reply> {
        let live = self.store.connection.load_full()?;
        let mut connection = MultiplexedConnection::clone(&live);
        // The tolerance: how far ahead of now the TAT may be and still allow a request.
        let tau_us = self.interval_us.saturating_mul(u64::from(self.burst - 1));
        let mut invocation = SCRIPT.key(self.redis_key(key));
        invocation.arg(self.interval_us).arg(tau_us);
        let answer =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await;
        let error = match answer {
            Ok(Ok(reply)) => match self.parse_reply(reply) {
                Ok(reply) => return Some(reply),
                Err(error) => error,
            },
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.store.mark_down(&live, &error);
        None
    }

    /// The Redis key of a bucket. Each kind has its own form, so that a header whose value is
    /// "unknown" is not the bucket of requests without the header, as in the local limiter.
    fn redis_key(&self, key: &Key) -> Vec<u8> {
        let mut name = self.prefix.clone();
        match key {
            Key::Ip(ip) => name.extend_from_slice(format!("ip:{ip}").as_bytes()),
            Key::Text(value) => {
                name.extend_from_slice(b"v:");
                name.extend_from_slice(value);
            }
            Key::Unknown => name.extend_from_slice(b"unknown"),
            Key::Route => name.extend_from_slice(b"route"),
        }
        name
    }

    /// The script's `{allowed, microseconds}`: the time until the bucket is full again when
    /// allowed (governor's `remaining_burst_capacity` from it), the wait when limited.
    fn parse_reply(&self, (allowed, micros): (i64, i64)) -> Result<Reply, String> {
        let micros = u64::try_from(micros)
            .map_err(|_| format!("unexpected reply from the rate-limit script: {micros}"))?;
        match allowed {
            1 => {
                let capacity = self.interval_us.saturating_mul(u64::from(self.burst));
                let remaining = capacity.saturating_sub(micros) / self.interval_us;
                Ok(Reply::Allowed {
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.burst),
                })
            }
            0 => Ok(Reply::Limited {
                wait: Duration::from_micros(micros),
            }),
            other => Err(format!(
                "unexpected reply from the rate-limit script: {other}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn limit(per_minute: u32, burst: u32) -> SharedLimit {
        let store = Store::get("redis://127.0.0.1:1/").unwrap();
        SharedLimit::new(
            store,
            "api",
            Duration::from_secs(60) / per_minute,
            burst,
            DEFAULT_TIMEOUT,
        )
    }

    #[test]
    fn urls_are_checked_and_named_without_their_password() {
        let name = |url| parse_url(url).map(|(_, name)| name);
        assert_eq!(name("redis://10.1.2.3").unwrap(), "redis://10.1.2.3:6379/0");
        assert_eq!(
            name("redis://:secret@cache.internal:6380/2").unwrap(),
            "redis://cache.internal:6380/2"
        );
        assert_eq!(
            name("redis://user:secret@[::1]:7000").unwrap(),
            "redis://[::1]:7000/0"
        );
        assert!(
            name("http://127.0.0.1:6379")
                .unwrap_err()
                .contains("not a redis://")
        );
        assert!(name("127.0.0.1:6379").is_err());
        assert!(name("rediss://127.0.0.1").unwrap_err().contains("TLS"));
        assert!(name("redis+unix:///run/redis.sock").is_err());
        assert!(name("redis://127.0.0.1:6379/zero").is_err());
        assert!(name("redis://127.0.0.1:99999").is_err());
    }

    #[test]
    fn one_store_per_url() {
        let a = Store::get("redis://127.0.0.1:2/").unwrap();
        let b = Store::get("redis://127.0.0.1:2/").unwrap();
        let c = Store::get("redis://127.0.0.1:2/1").unwrap();
        assert!(Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn keys_name_the_route_and_keep_kinds_apart() {
        let limit = limit(3, 3);
        let name = |key: &Key| String::from_utf8(limit.redis_key(key)).unwrap();
        assert_eq!(
            name(&Key::Ip(IpAddr::from([10, 0, 0, 1]))),
            "wasmgate:rl:api:ip:10.0.0.1"
        );
        assert_eq!(
            name(&Key::Ip("::1".parse().unwrap())),
            "wasmgate:rl:api:ip:::1"
        );
        assert_eq!(
            name(&Key::Text((*b"unknown").into())),
            "wasmgate:rl:api:v:unknown"
        );
        assert_eq!(name(&Key::Unknown), "wasmgate:rl:api:unknown");
        assert_eq!(name(&Key::Route), "wasmgate:rl:api:route");
    }

    #[test]
    fn replies_give_what_governor_would() {
        // 3/m, burst 3: one unit every 20 s.
        let limit = limit(3, 3);
        // (TAT - now after the check, units left): a fresh bucket has the TAT one interval
        // ahead and two units left; the third unit of a burst leaves none; part of an interval
        // refilled is not a unit yet.
        for (ahead_s, remaining) in [(20, 2), (60, 0), (45, 0), (39, 1)] {
            assert_eq!(
                limit.parse_reply((1, ahead_s * 1_000_000)),
                Ok(Reply::Allowed { remaining }),
                "{ahead_s} s ahead"
            );
        }
        assert_eq!(
            limit.parse_reply((0, 19_500_000)),
            Ok(Reply::Limited {
                wait: Duration::from_millis(19_500)
            })
        );
        assert!(limit.parse_reply((2, 0)).is_err());
        assert!(limit.parse_reply((1, -5)).is_err());
    }
}
