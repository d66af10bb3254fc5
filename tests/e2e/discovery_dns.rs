//! DNS discovery against a real dnsmasq that the tests rewrite, stop and start again: targets
//! follow the records under load, SRV priorities and weights, the last list while the records
//! or the server are gone, TTLs, and config errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dnsmasq::{Dnsmasq, Zone};
use crate::support::load::Load;
use crate::support::*;

/// How long a change may take to show (generous: CI machines are slow).
const WAIT: Duration = Duration::from_secs(30);

/// A gateway whose upstream `app` follows `dns` (the table inside `discovery = { dns = ... }`),
/// with `extra` lines in the upstream's table, and one route to it.
fn config(dns: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
         [upstreams.app]\ndiscovery = {{ dns = {dns} }}\n{extra}\n\n\
         [[routes]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"app\"\n"
    )
}

/// `app.test`'s A/AAAA records on `port`, asked of `dns` every `refresh`.
fn address_config(dns: &Dnsmasq, port: u16, refresh: &str) -> String {
    config(
        &format!(
            "{{ name = \"app.test\", port = {port}, refresh = \"{refresh}\", servers = [\"{}\"] }}",
            dns.server()
        ),
        "",
    )
}

/// Upstreams on one port, one per loopback address (A/AAAA records carry no port).
async fn on_one_port(upstreams: &[(&'static str, &str)]) -> Vec<TestUpstream> {
    'port: for _ in 0..20 {
        let mut started: Vec<TestUpstream> = Vec::new();
        for (name, ip) in upstreams {
            let port = started.first().map_or(0, |first| first.addr.port());
            let addr = (ip.parse::<std::net::IpAddr>().unwrap(), port).into();
            match TestUpstream::start_at(name, addr).await {
                Ok(upstream) => started.push(upstream),
                Err(_) => continue 'port, // taken on this address: another port
            }
        }
        return started;
    }
    panic!("no port free on all of {upstreams:?}");
}

/// `GET /upstreams` for `app`.
async fn app(client: &HttpClient, gateway: &GatewayProcess) -> Value {
    client.get(&gateway.admin_url("/upstreams")).await.json()["upstreams"]["app"].clone()
}

fn addrs(app: &Value) -> Vec<String> {
    let mut addrs: Vec<String> = app["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| target["addr"].as_str().unwrap().to_owned())
        .collect();
    addrs.sort();
    addrs
}

/// Polls `check` until it gives a value; fails the test after `within`.
async fn eventually<T>(
    what: &str,
    gateway: &GatewayProcess,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not after {within:?}\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET /upstreams` lists exactly `expected` (sorted); returns how long it took.
async fn wait_targets(
    client: &HttpClient,
    gateway: &GatewayProcess,
    within: Duration,
    expected: &[String],
) -> Duration {
    let start = Instant::now();
    let what = format!("targets {expected:?}");
    eventually(&what, gateway, within, async || {
        (addrs(&app(client, gateway).await) == expected).then_some(())
    })
    .await;
    start.elapsed()
}

/// Waits until `upstream` has answered `more` requests than now.
async fn wait_hits(gateway: &GatewayProcess, upstream: &TestUpstream, more: usize) {
    let target = upstream.hits() + more;
    let what = format!("{more} more requests on {}", upstream.name);
    eventually(&what, gateway, WAIT, async || {
        (upstream.hits() >= target).then_some(())
    })
    .await;
}

/// Waits until `upstream` is out of the list for good: once the requests that chose it before
/// the change have landed, it gets no more for a second while the load runs.
async fn assert_no_more_traffic(upstream: &TestUpstream) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = upstream.hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        upstream.hits(),
        before,
        "{} still gets requests",
        upstream.name
    );
}

/// `n` requests one after another; the answers per upstream (all must succeed).
async fn spread(client: &HttpClient, gateway: &GatewayProcess, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = client.get(&gateway.url("/spread")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *counts.entry(reply.upstream()).or_insert(0) += 1;
    }
    counts
}

const TARGETS: &str = "wasmgate_discovery_targets{upstream=\"app\"}";
const SOURCE_UP: &str = "wasmgate_discovery_source_up{upstream=\"app\"}";
const UPDATES: &str = "wasmgate_discovery_updates_total{upstream=\"app\"}";
const ERRORS: &str = "wasmgate_discovery_errors_total{upstream=\"app\"}";

#[tokio::test(flavor = "multi_thread")]
async fn targets_follow_the_records_under_load_without_a_failed_request() {
    let zone = Zone::new()
        .host("app.test", "127.0.0.2")
        .host("app.test", "::1");
    let Some(mut dns) = Dnsmasq::start(&zone, 0) else {
        return;
    };
    let upstreams = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3"), ("v6", "::1")]).await;
    let [a, b, v6] = &upstreams[..] else {
        unreachable!()
    };
    let port = a.addr.port();
    let gateway = GatewayProcess::start(&address_config(&dns, port, "200ms"));
    let client = HttpClient::http1();
    let target = |upstream: &TestUpstream| upstream.addr.to_string();

    // Both families: an A and an AAAA record.
    wait_targets(&client, &gateway, WAIT, &[target(a), target(v6)]).await;
    let load = Load::start(&gateway, "/load", 4);
    let load_started = Instant::now();
    wait_hits(&gateway, a, 20).await;
    wait_hits(&gateway, v6, 20).await;

    // One added, one removed.
    dns.serve(
        &Zone::new()
            .host("app.test", "127.0.0.2")
            .host("app.test", "127.0.0.3"),
    );
    wait_targets(&client, &gateway, WAIT, &[target(a), target(b)]).await;
    wait_hits(&gateway, b, 20).await;
    assert_no_more_traffic(v6).await;

    dns.serve(&Zone::new().host("app.test", "127.0.0.3"));
    wait_targets(&client, &gateway, WAIT, &[target(b)]).await;
    assert_no_more_traffic(a).await;
    wait_hits(&gateway, b, 20).await;

    let answered = load.finish().await;
    assert!(answered > 100, "only {answered} requests");
    eprintln!(
        "{answered} requests in {:?} while the targets changed, none failed",
        load_started.elapsed()
    );

    let app = app(&client, &gateway).await;
    let source = &app["source"];
    assert_eq!(source["kind"], "dns");
    assert_eq!(source["name"], "app.test");
    assert_eq!(source["records"], "A/AAAA");
    assert_eq!(source["port"], port);
    assert_eq!(source["servers"][0], dns.server());
    assert_eq!(source["error"], Value::Null);
    assert!(source["updates"].as_u64().unwrap() >= 3, "{source}");
    assert_eq!(metric(&client, &gateway, TARGETS).await, Some(1.0));
    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(1.0));
    assert_eq!(metric(&client, &gateway, ERRORS).await, Some(0.0));
    assert!(metric(&client, &gateway, UPDATES).await.unwrap() >= 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn srv_priorities_and_weights_decide_where_requests_go() {
    let mut heavy = TestUpstream::start("heavy").await;
    let mut light = TestUpstream::start("light").await;
    let backup = TestUpstream::start("backup").await;
    let service = "_http._tcp.app.test";
    let zone = Zone::new()
        .host("local.test", "127.0.0.1")
        .srv(service, "local.test", heavy.addr.port(), 10, 3)
        .srv(service, "local.test", light.addr.port(), 10, 1)
        .srv(service, "local.test", backup.addr.port(), 20, 0);
    let Some(dns) = Dnsmasq::start(&zone, 0) else {
        return;
    };
    let gateway = GatewayProcess::start(&config(
        &format!(
            "{{ name = \"{service}\", refresh = \"200ms\", servers = [\"{}\"] }}",
            dns.server()
        ),
        "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"200ms\", \
         unhealthy_threshold = 1, healthy_threshold = 1 }",
    ));
    let client = HttpClient::http1();
    let mut all: Vec<String> = [&heavy, &light, &backup]
        .iter()
        .map(|u| u.addr.to_string())
        .collect();
    all.sort();
    wait_targets(&client, &gateway, WAIT, &all).await;
    let source = app(&client, &gateway).await["source"].clone();
    assert_eq!(source["records"], "SRV", "{source}");

    // Priority 10 only, weighted 3:1; the priority-20 target gets nothing.
    let counts = spread(&client, &gateway, 400).await;
    let share = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!((280..=320).contains(&share("heavy")), "{counts:?}");
    assert!((80..=120).contains(&share("light")), "{counts:?}");
    assert_eq!(share("backup"), 0, "{counts:?}");

    // The priority-10 targets down: the priority-20 one takes over ...
    heavy.kill();
    light.kill();
    eventually("traffic on backup", &gateway, WAIT, async || {
        let reply = client.get(&gateway.url("/spread")).await;
        (reply.status == 200 && reply.upstream() == "backup").then_some(())
    })
    .await;
    assert_eq!(
        spread(&client, &gateway, 30).await,
        HashMap::from([("backup".to_owned(), 30)])
    );

    // ... until they are back.
    heavy.restart().await;
    light.restart().await;
    eventually("traffic on heavy", &gateway, WAIT, async || {
        (client.get(&gateway.url("/spread")).await.upstream() == "heavy").then_some(())
    })
    .await;
    let counts = spread(&client, &gateway, 40).await;
    assert_eq!(counts.get("backup"), None, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_list_serves_while_the_records_or_the_server_are_gone() {
    let first = Zone::new().host("app.test", "127.0.0.2");
    let Some(mut dns) = Dnsmasq::start(&first, 0) else {
        return;
    };
    let upstreams = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    let [a, b] = &upstreams[..] else {
        unreachable!()
    };
    let gateway = GatewayProcess::start(&address_config(&dns, a.addr.port(), "200ms"));
    let client = HttpClient::http1();
    wait_targets(&client, &gateway, WAIT, &[a.addr.to_string()]).await;
    let source_error = async || {
        app(&client, &gateway).await["source"]["error"]
            .as_str()
            .map(str::to_owned)
    };

    // Every record removed: that is a failure too, and the list stays.
    dns.serve(&Zone::new());
    let error = eventually("an error", &gateway, WAIT, &source_error).await;
    assert_eq!(error, "app.test: no such name (NXDOMAIN)");
    assert_eq!(
        spread(&client, &gateway, 20).await,
        HashMap::from([("a".to_owned(), 20)])
    );
    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(0.0));

    // Back, then the server killed: queries time out, and the list stays again.
    dns.serve(&first);
    eventually("no error", &gateway, WAIT, async || {
        source_error().await.is_none().then_some(())
    })
    .await;
    dns.stop();
    let error = eventually("a timeout", &gateway, WAIT, async || {
        source_error()
            .await
            .filter(|error| error.contains("timed out"))
    })
    .await;
    assert_eq!(error, "app.test: A query timed out");
    let app_now = app(&client, &gateway).await;
    assert!(app_now["source"]["failing_since"].is_string(), "{app_now}");
    assert_eq!(addrs(&app_now), [a.addr.to_string()]);
    assert_eq!(
        spread(&client, &gateway, 20).await,
        HashMap::from([("a".to_owned(), 20)])
    );
    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(0.0));
    assert!(metric(&client, &gateway, ERRORS).await.unwrap() >= 2.0);
    let warnings = gateway
        .stderr()
        .matches("cannot read the source, the last list stays")
        .count();
    assert_eq!(
        warnings,
        2,
        "one warning per failing spell:\n{}",
        gateway.stderr()
    );

    // Started again on the same port, with another list: it applies.
    dns.serve(&Zone::new().host("app.test", "127.0.0.3"));
    dns.start_again();
    wait_targets(&client, &gateway, WAIT, &[b.addr.to_string()]).await;
    assert_eq!(source_error().await, None);
    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(1.0));
    assert_eq!(
        spread(&client, &gateway, 20).await,
        HashMap::from([("b".to_owned(), 20)])
    );
    assert!(
        gateway
            .stderr()
            .contains("discovery: source readable again")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_asked_afresh_and_a_short_ttl_brings_the_refresh_forward() {
    let first = Zone::new().host("app.test", "127.0.0.2");
    let changed = Zone::new().host("app.test", "127.0.0.3");
    let client = HttpClient::http1();

    // TTL one hour, refresh 300 ms: a cached answer would hide the change for an hour.
    let Some(mut dns) = Dnsmasq::start(&first, 3600) else {
        return;
    };
    let gateway = GatewayProcess::start(&address_config(&dns, 9, "300ms"));
    wait_targets(&client, &gateway, WAIT, &["127.0.0.2:9".into()]).await;
    dns.serve(&changed);
    let took = wait_targets(&client, &gateway, WAIT, &["127.0.0.3:9".into()]).await;
    eprintln!("TTL 3600 s, refresh 300 ms: the change showed after {took:?}");
    drop(gateway);

    // TTL one second, refresh one minute: the TTL decides.
    let Some(mut dns) = Dnsmasq::start(&first, 1) else {
        return;
    };
    let gateway = GatewayProcess::start(&address_config(&dns, 9, "1m"));
    wait_targets(&client, &gateway, WAIT, &["127.0.0.2:9".into()]).await;
    dns.serve(&changed);
    let took = wait_targets(
        &client,
        &gateway,
        Duration::from_secs(15),
        &["127.0.0.3:9".into()],
    )
    .await;
    eprintln!("TTL 1 s, refresh 1 min: the change showed after {took:?}");
}

#[test]
fn a_name_without_a_port_is_a_config_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, config("{ name = \"app.test\" }", "")).unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("gw.toml:6:21: upstreams.app: A/AAAA discovery needs `port`"),
        "{stderr}"
    );
}
