//! Route rate limits (`rate_limit = { rate, burst, key }`): GCRA (governor), one state per
//! key, in this process, or shared by every gateway through Redis with `store` (see [`redis`]).
//!
//! A request whose key is missing (no such header or context value) is limited under one
//! shared "unknown" key, never let through unlimited. Keys that are back to a full bucket are
//! evicted every [`EVICT_EVERY`], and at once when the map passes [`MAX_KEYS`], so a flood of
//! distinct client addresses costs memory only for the keys active within a refill period.

pub mod redis;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderMap, HeaderName, HeaderValue};

use self::redis::{Reply, SharedLimit, Store};
use crate::plugin::Context;
use crate::upstream::clock_ms;

/// Keys kept per route before an eviction pass runs out of turn.
const MAX_KEYS: usize = 100_000;
/// How often idle keys are dropped (checked on the request path, no timer task).
const EVICT_EVERY: Duration = Duration::from_secs(10);
/// Past [`MAX_KEYS`], passes run sooner, but never more often than this: a pass walks every
/// key, and a flood of keys that are all still active must not make every request pay for one.
const EVICT_AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// What a limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    ClientIp,
    Header(HeaderName),
    Ctx(String),
    Route,
}

impl KeyKind {
    pub fn parse(text: &str) -> Result<KeyKind, String> {
        match text {
            "client_ip" => Ok(KeyKind::ClientIp),
            "route" => Ok(KeyKind::Route),
            other => {
                if let Some(name) = other.strip_prefix("header:") {
                    HeaderName::from_bytes(name.as_bytes())
                        .map(KeyKind::Header)
                        .map_err(|_| format!("`{name}` is not a valid header name"))
                } else if let Some(name) = other.strip_prefix("ctx:").filter(|n| !n.is_empty()) {
                    Ok(KeyKind::Ctx(name.to_owned()))
                } else {
                    Err(format!(
                        "unknown key `{other}` (use client_ip, header:NAME, ctx:NAME or route)"
                    ))
                }
            }
        }
    }

    /// The context value the key needs: the limit then runs after the plugins' request phase.
    pub fn needs_plugins(&self) -> bool {
        matches!(self, KeyKind::Ctx(_))
    }
}

/// One bucket's identity. Addresses are kept as they are (no allocation per request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Text(Box<[u8]>),
    Unknown,
    Route,
}

/// `rate` as written: so many per second, minute or hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("`{text}` is not a rate like \"100/s\", \"6000/m\" or \"10/h\"");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

pub struct RateLimit {
    key: KeyKind,
    rate: Rate,
    burst: NonZeroU32,
    limiter: DefaultKeyedRateLimiter<Key, StateInformationMiddleware>,
    /// `RateLimit-Policy`, the same for every response of the route.
    policy: HeaderValue,
    /// [`clock_ms`] of the last eviction pass.
    last_eviction: AtomicU64,
    /// [`clock_ms`] of the last look at the map's size (which walks every shard, so it is not
    /// done per request).
    last_size_check: AtomicU64,
    /// With `store`, the bucket every gateway shares; [`Self::limiter`] then decides only the
    /// checks made while the store is unavailable.
    shared: Option<SharedLimit>,
}

/// What the limiter decided.
pub enum Verdict {
    /// Allowed; these headers go on the response.
    Allowed(HeaderMap),
    /// Over the limit: 429 with these headers.
    Limited {
        headers: HeaderMap,
        retry_after: Duration,
    },
}

impl RateLimit {
    /// `burst` defaults to the rate's count: "100/s" allows 100 at once, then 100 per second.
    pub fn new(key: KeyKind, rate: Rate, burst: Option<u32>) -> Result<RateLimit, String> {
        let burst = match burst {
            Some(burst) => NonZeroU32::new(burst).ok_or("`burst` must be at least 1")?,
            None => rate.count,
        };
        let interval = rate.per / rate.count.get();
        let quota = Quota::with_period(interval)
            .ok_or("the rate is too high (under a nanosecond per request)")?
            .allow_burst(burst);
        let policy = HeaderValue::from_str(&format!(
            "\"route\";q={};w={}",
            rate.count,
            rate.per.as_secs()
        ))
        .map_err(|err| err.to_string())?;
        Ok(RateLimit {
            key,
            rate,
            burst,
            limiter: DefaultKeyedRateLimiter::keyed(quota)
                .with_middleware::<StateInformationMiddleware>(),
            policy,
            last_eviction: AtomicU64::new(0),
            last_size_check: AtomicU64::new(0),
            shared: None,
        })
    }

    /// Keeps the buckets in `store`, under the route's name, shared with every gateway that
    /// uses it; each check waits for Redis at most `timeout`.
    pub fn with_store(mut self, store: Arc<Store>, route: &str, timeout: Duration) -> RateLimit {
        self.shared = Some(SharedLimit::new(
            store,
            route,
            self.interval(),
            self.burst.get(),
            timeout,
        ));
        self
    }

    /// Starts the background work of the limit's store (connecting), if it has one.
    pub fn start(&self) {
        if let Some(shared) = &self.shared {
            shared.store().start();
        }
    }

    pub fn key_kind(&self) -> &KeyKind {
        &self.key
    }

    /// Takes one unit for this request's key. Without a store this never waits.
    pub async fn check(&self, client_ip: IpAddr, headers: &HeaderMap, ctx: &Context) -> Verdict {
        let key = match &self.key {
            KeyKind::ClientIp => Key::Ip(client_ip),
            KeyKind::Route => Key::Route,
            KeyKind::Header(name) => headers
                .get(name)
                .map_or(Key::Unknown, |value| Key::Text(value.as_bytes().into())),
            KeyKind::Ctx(name) => ctx
                .get(name)
                .map_or(Key::Unknown, |value| Key::Text(value.as_bytes().into())),
        };
        if let Some(shared) = &self.shared {
            // Boxed: the Redis call's state is large, and inline it would grow the future of
            // every request, on routes without a store too.
            match Box::pin(shared.take(&key)).await {
                Some(Reply::Allowed { remaining }) => return self.allowed(remaining),
                Some(Reply::Limited { wait }) => return self.limited(wait),
                None => {}
            }
        }
        self.check_local(&key)
    }

    fn check_local(&self, key: &Key) -> Verdict {
        self.evict_idle_keys();
        match self.limiter.check_key(key) {
            Ok(state) => self.allowed(state.remaining_burst_capacity()),
            // The limiter's own clock: a new DefaultClock (quanta) runs CPUID on every 429 to
            // detect its counter, and CPUID traps to the hypervisor on a VM.
            Err(not_until) => self.limited(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }

    fn interval(&self) -> Duration {
        self.rate.per / self.rate.count.get()
    }

    fn allowed(&self, remaining: u32) -> Verdict {
        // Seconds until the bucket is full again.
        let reset = self.interval() * self.burst.get().saturating_sub(remaining);
        Verdict::Allowed(self.headers(remaining, reset))
    }

    fn limited(&self, wait: Duration) -> Verdict {
        let mut headers = self.headers(0, wait);
        headers.insert(http::header::RETRY_AFTER, seconds_up(wait).into());
        Verdict::Limited {
            headers,
            retry_after: wait,
        }
    }

    fn headers(&self, remaining: u32, reset: Duration) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(
            HeaderName::from_static("ratelimit-policy"),
            self.policy.clone(),
        );
        let state = format!("\"route\";r={remaining};t={}", seconds_up(reset));
        if let Ok(value) = HeaderValue::from_str(&state) {
            headers.insert(HeaderName::from_static("ratelimit"), value);
        }
        headers
    }

    fn evict_idle_keys(&self) {
        let now = clock_ms();
        let checked = self.last_size_check.load(Ordering::Relaxed);
        // At most one look every EVICT_AT_MOST_EVERY, by the one request that claims it.
        if now.saturating_sub(checked) < EVICT_AT_MOST_EVERY.as_millis() as u64
            || self
                .last_size_check
                .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let since_pass = now.saturating_sub(self.last_eviction.load(Ordering::Relaxed));
        if since_pass >= EVICT_EVERY.as_millis() as u64 || self.limiter.len() > MAX_KEYS {
            self.last_eviction.store(now, Ordering::Relaxed);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Keys held now (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// Whole seconds, rounded up (a client told "0" would retry at once).
fn seconds_up(duration: Duration) -> u64 {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        seconds + 1
    } else {
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn rates_and_keys_parse() {
        assert_eq!(Rate::parse("100/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(Rate::parse("6000/m").unwrap().count.get(), 6000);
        assert!(Rate::parse("0/s").is_err() && Rate::parse("5/week").is_err());
        assert_eq!(
            KeyKind::parse("header:X-Api-Key").unwrap(),
            KeyKind::Header(HeaderName::from_static("x-api-key"))
        );
        assert_eq!(
            KeyKind::parse("ctx:user_id").unwrap(),
            KeyKind::Ctx("user_id".into())
        );
        assert!(KeyKind::parse("cookie").is_err() && KeyKind::parse("ctx:").is_err());
    }

    #[tokio::test]
    async fn burst_then_limited_per_key_with_headers() {
        let limit =
            RateLimit::new(KeyKind::ClientIp, Rate::parse("1/m").unwrap(), Some(2)).unwrap();
        let (headers, ctx) = (HeaderMap::new(), Context::new());
        let Verdict::Allowed(first) = limit.check(ip(1), &headers, &ctx).await else {
            panic!("first request limited")
        };
        assert_eq!(first["ratelimit-policy"], "\"route\";q=1;w=60");
        assert_eq!(first["ratelimit"], "\"route\";r=1;t=60");
        assert!(matches!(
            limit.check(ip(1), &headers, &ctx).await,
            Verdict::Allowed(_)
        ));
        let Verdict::Limited {
            headers: limited,
            retry_after,
        } = limit.check(ip(1), &headers, &ctx).await
        else {
            panic!("third request allowed")
        };
        assert!(retry_after > Duration::from_secs(55), "{retry_after:?}");
        assert_eq!(limited["retry-after"], "60");
        // Another client has its own bucket.
        assert!(matches!(
            limit.check(ip(2), &headers, &ctx).await,
            Verdict::Allowed(_)
        ));
    }

    #[tokio::test]
    async fn a_missing_key_shares_the_unknown_bucket() {
        let limit = RateLimit::new(
            KeyKind::Ctx("user_id".into()),
            Rate::parse("1/m").unwrap(),
            Some(1),
        )
        .unwrap();
        let headers = HeaderMap::new();
        let mut ctx = Context::new();
        assert!(matches!(
            limit.check(ip(1), &headers, &ctx).await,
            Verdict::Allowed(_)
        ));
        // A different client without the value: the same "unknown" bucket, already empty.
        assert!(matches!(
            limit.check(ip(2), &headers, &ctx).await,
            Verdict::Limited { .. }
        ));
        ctx.insert("user_id".into(), "alice".into());
        assert!(matches!(
            limit.check(ip(2), &headers, &ctx).await,
            Verdict::Allowed(_)
        ));
    }

    #[tokio::test]
    async fn a_store_that_is_down_leaves_the_decision_to_the_local_limiter() {
        let rate = Rate::parse("1/m").unwrap();
        let local = RateLimit::new(KeyKind::ClientIp, rate, Some(2)).unwrap();
        // Never started, so never connected: down from the start.
        let store = Store::get("redis://127.0.0.1:1").unwrap();
        let shared = RateLimit::new(KeyKind::ClientIp, rate, Some(2))
            .unwrap()
            .with_store(store, "down-store-test", Duration::from_millis(50));
        let (headers, ctx) = (HeaderMap::new(), Context::new());
        for _ in 0..2 {
            let (Verdict::Allowed(expected), Verdict::Allowed(got)) = (
                local.check(ip(1), &headers, &ctx).await,
                shared.check(ip(1), &headers, &ctx).await,
            ) else {
                panic!("limited within the burst")
            };
            assert_eq!(got, expected);
        }
        assert!(matches!(
            shared.check(ip(1), &headers, &ctx).await,
            Verdict::Limited { .. }
        ));
        let text = crate::telemetry::metrics::metrics().encode(Vec::new());
        assert!(
            text.contains("wasmgate_rate_limit_store_fallbacks_total{route=\"down-store-test\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("wasmgate_rate_limit_store_up{store=\"redis://127.0.0.1:1/0\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_million_distinct_clients_leave_a_bounded_map() {
        // 100/s, burst 20: a client seen once is back to a full bucket 10 ms later.
        let limit =
            RateLimit::new(KeyKind::ClientIp, Rate::parse("100/s").unwrap(), Some(20)).unwrap();
        let (headers, ctx) = (HeaderMap::new(), Context::new());
        let rss_before = rss_kib();
        let mut peak = 0;
        for n in 0..1_000_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            assert!(matches!(
                limit.check(ip, &headers, &ctx).await,
                Verdict::Allowed(_)
            ));
            peak = peak.max(limit.keys());
        }
        let rss_after = rss_kib();
        eprintln!(
            "1,000,000 distinct clients: peak {peak} keys, {} keys at the end, RSS {} -> {} KiB",
            limit.keys(),
            rss_before,
            rss_after
        );
        // Between two passes (at most 100 ms apart past the bound) new keys pile up; the bound
        // holds within that slack.
        assert!(peak <= 2 * MAX_KEYS, "peak {peak} keys");
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmRSS:"))
                    .and_then(|kib| kib.trim().trim_end_matches(" kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}
