//! Rate limits shared through Redis (`rate_limit.store`): two real gateways and a real
//! redis-server that the tests kill and start again.

use std::time::{Duration, Instant};

use http::Method;

use crate::support::client::Reply;
use crate::support::redis::Redis;
use crate::support::*;

/// A gateway with an admin listener and the routes `/shared` (in `store`) and `/local` (the
/// same limit, in the process).
fn config(upstream: &TestUpstream, store: &str, key: &str) -> String {
    let limit = format!("rate = \"3/m\", burst = 3, key = \"{key}\"");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}\n\
         [[routes]]\nname = \"shared\"\npath = \"/shared\"\nupstream = \"app\"\n\
         rate_limit = {{ {limit}, store = \"{store}\" }}\n\n\
         [[routes]]\nname = \"local\"\npath = \"/local\"\nupstream = \"app\"\n\
         rate_limit = {{ {limit} }}\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    )
}

async fn get(client: &HttpClient, gateway: &GatewayProcess, path: &str) -> Reply {
    client.send(Method::GET, &gateway.url(path), &[], "").await
}

fn store_up(redis: &Redis) -> String {
    format!(
        "wasmgate_rate_limit_store_up{{store=\"{}/0\"}}",
        redis.url()
    )
}

const FALLBACKS: &str = "wasmgate_rate_limit_store_fallbacks_total{route=\"shared\"}";

/// Waits until the gateway's store gauge reads `value`; returns how long that took.
async fn wait_store_up(
    client: &HttpClient,
    gateway: &GatewayProcess,
    redis: &Redis,
    value: f64,
) -> Duration {
    let start = Instant::now();
    loop {
        if metric(client, gateway, &store_up(redis)).await == Some(value) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "store_up is not {value} after 15 s:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two gateways with the same config, both connected to `redis`.
async fn two_gateways(
    redis: &Redis,
    key: &str,
) -> (TestUpstream, GatewayProcess, GatewayProcess, HttpClient) {
    let upstream = TestUpstream::start("app").await;
    let config = config(&upstream, &redis.url(), key);
    let (a, b) = (
        GatewayProcess::start(&config),
        GatewayProcess::start(&config),
    );
    let client = HttpClient::http1();
    for gateway in [&a, &b] {
        wait_store_up(&client, gateway, redis, 1.0).await;
    }
    (upstream, a, b, client)
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.headers[name].to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_draw_from_one_bucket_with_the_local_limiters_headers() {
    let Some(redis) = Redis::start() else { return };
    let (upstream, a, b, client) = two_gateways(&redis, "client_ip").await;

    // The local route on one gateway gives the expected sequence of headers.
    let mut local = Vec::new();
    for _ in 0..4 {
        local.push(get(&client, &a, "/local").await);
    }
    let statuses: Vec<u16> = local.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);

    // The shared route, alternating gateways: three allowed in all, then 429 on either.
    let shared = [
        get(&client, &a, "/shared").await,
        get(&client, &b, "/shared").await,
        get(&client, &a, "/shared").await,
        get(&client, &b, "/shared").await,
    ];
    for (n, (shared, local)) in shared.iter().zip(&local).enumerate() {
        assert_eq!(
            shared.status,
            local.status,
            "request {n}: {}",
            shared.text()
        );
        for name in ["ratelimit-policy", "ratelimit", "retry-after"] {
            assert_eq!(
                shared.headers.get(name),
                local.headers.get(name),
                "request {n}: {name}"
            );
        }
    }
    assert_eq!(header(&shared[0], "ratelimit-policy"), "\"route\";q=3;w=60");
    assert_eq!(header(&shared[0], "ratelimit"), "\"route\";r=2;t=20");
    assert_eq!(header(&shared[2], "ratelimit"), "\"route\";r=0;t=60");
    let limited = &shared[3];
    assert_eq!(limited.json()["error"], "rate_limited");
    assert_eq!(header(limited, "retry-after"), "20");
    assert_eq!(header(limited, "ratelimit"), "\"route\";r=0;t=20");
    assert_eq!(get(&client, &a, "/shared").await.status, 429);
    assert_eq!(
        upstream.hits(),
        6,
        "3 local + 3 shared requests got through"
    );

    // One key per client, that expires once its bucket would be full again.
    let mut connection = redis.connection();
    let key = "wasmgate:rl:shared:ip:127.0.0.1";
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("wasmgate:*")
        .query(&mut connection)
        .unwrap();
    assert_eq!(keys, [key]);
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(key)
        .query(&mut connection)
        .unwrap();
    assert!((55_000..=60_000).contains(&ttl), "PTTL {ttl}");
    assert_eq!(metric(&client, &a, FALLBACKS).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_each_gateway_limits_alone_and_shares_again_when_it_is_back() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (_upstream, a, b, client) = two_gateways(&redis, "route").await;
    assert_eq!(get(&client, &a, "/shared").await.status, 200);

    redis.stop();
    // Each gateway's own bucket decides: a full burst each, then 429; never a 5xx.
    for gateway in [&a, &b] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get(&client, gateway, "/shared").await.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 429], "{}", gateway.stderr());
        assert_eq!(metric(&client, gateway, &store_up(&redis)).await, Some(0.0));
        assert_eq!(metric(&client, gateway, FALLBACKS).await, Some(4.0));
        let warnings = gateway
            .stderr()
            .matches("rate-limit store unavailable")
            .count();
        assert_eq!(
            warnings,
            1,
            "one warning, not one per request:\n{}",
            gateway.stderr()
        );
    }

    redis.restart();
    for gateway in [&a, &b] {
        let took = wait_store_up(&client, gateway, &redis, 1.0).await;
        eprintln!("store up again after {took:?}");
        assert!(
            gateway.stderr().contains("limits are shared again"),
            "{}",
            gateway.stderr()
        );
    }
    // The restarted Redis is empty: one fresh bucket for both gateways again.
    let statuses = [
        get(&client, &a, "/shared").await.status,
        get(&client, &b, "/shared").await.status,
        get(&client, &a, "/shared").await.status,
        get(&client, &b, "/shared").await.status,
        get(&client, &a, "/shared").await.status,
    ];
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(metric(&client, &a, FALLBACKS).await, Some(4.0));
    assert_eq!(metric(&client, &b, FALLBACKS).await, Some(4.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_hangs_costs_a_request_at_most_the_store_timeout() {
    let Some(redis) = Redis::start() else { return };
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(&upstream, &redis.url(), "route"));
    let client = HttpClient::http1();
    wait_store_up(&client, &gateway, &redis, 1.0).await;

    redis.pause();
    let start = Instant::now();
    let reply = get(&client, &gateway, "/shared").await;
    let waited = start.elapsed();
    assert_eq!(
        reply.status,
        200,
        "the local bucket decides: {}",
        reply.text()
    );
    assert!(
        gateway.stderr().contains("no answer within 50 ms"),
        "{}",
        gateway.stderr()
    );
    eprintln!("a request while Redis hangs took {waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    // Down now: the next checks do not wait for Redis at all.
    for _ in 0..2 {
        assert_eq!(get(&client, &gateway, "/shared").await.status, 200);
    }
    assert_eq!(get(&client, &gateway, "/shared").await.status, 429);
    assert_eq!(metric(&client, &gateway, FALLBACKS).await, Some(4.0));
    assert_eq!(
        metric(&client, &gateway, &store_up(&redis)).await,
        Some(0.0)
    );

    redis.resume();
    wait_store_up(&client, &gateway, &redis, 1.0).await;
}

#[test]
fn check_needs_no_redis_and_reports_bad_stores_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let app = upstream_table("app", &[("127.0.0.1:9".parse().unwrap(), 1)], "");
    let route = |path: &str, limit: &str| {
        format!("[[routes]]\npath = \"{path}\"\nupstream = \"app\"\nrate_limit = {{ {limit} }}\n")
    };

    // Nothing listens on port 1: `check` does not connect.
    let good = route(
        "/a",
        "rate = \"1/s\", store = \"redis://:secret@127.0.0.1:1/3\", store_timeout = \"20ms\"",
    );
    std::fs::write(&path, format!("{SERVER}{app}\n{good}")).unwrap();
    let (ok, stdout, stderr) = gateway::check(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");

    let bad = [
        route("/b", "rate = \"1/s\", store = \"http://127.0.0.1:6379\""),
        route("/c", "rate = \"1/s\", store = \"redis://127.0.0.1:6379/x\""),
        route("/d", "rate = \"1/s\", store_timeout = \"20ms\""),
    ]
    .join("\n");
    let text = format!("{SERVER}{app}\n{bad}");
    std::fs::write(&path, &text).unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (needle, message) in [
        (
            "http://",
            "rate_limit.store: `http://127.0.0.1:6379` is not a redis://HOST:PORT URL",
        ),
        ("/x\"", "rate_limit.store: `redis://127.0.0.1:6379/x`"),
        (
            "store_timeout",
            "rate_limit.store_timeout: only a limit with `store`",
        ),
    ] {
        let at = format!("gateway.toml:{}:", line_of(needle));
        assert!(
            stderr
                .lines()
                .any(|line| line.contains(&at) && line.contains(message)),
            "no `{at}` ... `{message}` in\n{stderr}"
        );
    }
}
