//! Consul discovery through the real gateway, against the in-test Consul stand-in
//! (`support::consul`; no Consul server can be installed on these machines): targets follow
//! the catalog under load by blocking queries, tags and weights, and Consul going away and
//! coming back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::Method;

use crate::support::consul::{FakeConsul, Instance};
use crate::support::load::Load;
use crate::support::*;

fn config(consul: &FakeConsul, discovery_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [upstreams.users]\n\
         discovery = {{ consul = {{ addr = \"{}\", service = \"users\", wait = \"10s\"{discovery_extra} }} }}\n\
         retry = {{ attempts = 2, on = [\"connect-failure\", \"reset\", \"502\", \"503\"] }}\n\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"users\"\n",
        consul.addr
    )
}

async fn admin_json(gateway: &GatewayProcess, path: &str) -> serde_json::Value {
    HttpClient::http1()
        .send(Method::GET, &gateway.admin_url(path), &[], "")
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_follow_the_catalog_under_load_by_blocking_queries() {
    let (a, b, c) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    );
    let consul = FakeConsul::start().await;
    consul.set(
        "users",
        vec![Instance::new(a.addr), Instance::new(b.addr).critical()],
    );
    let gateway = GatewayProcess::start(&config(&consul, ""));
    let load = Load::start(&gateway, "/load", 4);
    load.wait_for_traffic("a", 50).await;
    assert_eq!(load.hits("b"), 0, "a critical instance got traffic");

    // b passes now and c registers: both get traffic at once (the blocking query returns).
    consul.set(
        "users",
        vec![
            Instance::new(a.addr),
            Instance::new(b.addr),
            Instance::new(c.addr),
        ],
    );
    let took = load.wait_for_traffic("c", 20).await;
    load.wait_for_traffic("b", 20).await;
    assert!(took < Duration::from_secs(2), "the change took {took:?}");

    // a and b deregister: once the list says so, they get nothing more.
    consul.set("users", vec![Instance::new(c.addr)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let upstreams = admin_json(&gateway, "/upstreams").await;
        let targets = &upstreams["upstreams"]["users"]["targets"];
        if targets.as_array().unwrap().len() == 1 {
            assert_eq!(targets[0]["addr"], c.addr.to_string());
            let source = &upstreams["upstreams"]["users"]["source"];
            assert_eq!(source["kind"], "consul");
            assert_eq!(source["service"], "users");
            assert!(source["error"].is_null(), "{source}");
            break;
        }
        assert!(Instant::now() < deadline, "{upstreams}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests already sent to a or b may still finish; give them a moment, then no more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a_hits, b_hits) = (load.hits("a"), load.hits("b"));
    load.wait_for_traffic("c", 100).await;
    assert_eq!((load.hits("a"), load.hits("b")), (a_hits, b_hits));

    // Quiet: the gateway waits in a blocking query instead of polling.
    let queries = consul.queries();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        consul.queries() <= queries + 1,
        "{} queries in a quiet second",
        consul.queries() - queries
    );
    assert!(consul.blocking_queries() >= 3);

    load.finish().await;
    for (series, want) in [
        ("wasmgate_discovery_source_up{upstream=\"users\"}", 1.0),
        ("wasmgate_discovery_targets{upstream=\"users\"}", 1.0),
        ("wasmgate_discovery_errors_total{upstream=\"users\"}", 0.0),
    ] {
        wait_for_metric(&gateway, series, want).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_tag_is_used_and_metadata_weights_hold() {
    let (a, b, c) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    );
    let consul = FakeConsul::start().await;
    consul.set(
        "users",
        vec![
            Instance::new(a.addr).tagged("v2").weight(3),
            Instance::new(b.addr).tagged("v2"),
            Instance::new(c.addr).tagged("v1"),
        ],
    );
    let gateway = GatewayProcess::start(&config(&consul, ", tag = \"v2\""));
    let client = HttpClient::http1();
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let reply = client.get(&gateway.url("/x")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *hits.entry(reply.upstream()).or_default() += 1;
    }
    // Smooth weighted round robin: exactly 3:1 over every 4 requests.
    assert_eq!(hits.get("a"), Some(&300), "{hits:?}");
    assert_eq!(hits.get("b"), Some(&100), "{hits:?}");
    assert_eq!(hits.get("c"), None, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_going_away_keeps_the_last_list_and_its_return_applies_changes() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let mut consul = FakeConsul::start().await;
    consul.set("users", vec![Instance::new(a.addr)]);
    let gateway = GatewayProcess::start(&config(&consul, ""));
    let load = Load::start(&gateway, "/load", 2);
    load.wait_for_traffic("a", 20).await;

    consul.stop();
    wait_for_metric(
        &gateway,
        "wasmgate_discovery_source_up{upstream=\"users\"}",
        0.0,
    )
    .await;
    let source = admin_json(&gateway, "/upstreams").await["upstreams"]["users"]["source"].clone();
    assert!(
        source["error"].as_str().unwrap().contains("consul"),
        "{source}"
    );
    assert!(source["failing_since"].is_string(), "{source}");
    // Still served by the last list.
    load.wait_for_traffic("a", 50).await;

    // The catalog changes while the gateway cannot see it; it sees it once Consul is back.
    consul.set("users", vec![Instance::new(b.addr)]);
    consul.restart().await;
    load.wait_for_traffic("b", 20).await;
    wait_for_metric(
        &gateway,
        "wasmgate_discovery_source_up{upstream=\"users\"}",
        1.0,
    )
    .await;
    let source = admin_json(&gateway, "/upstreams").await["upstreams"]["users"]["source"].clone();
    assert!(source["error"].is_null(), "{source}");
    let a_hits = load.hits("a");
    load.wait_for_traffic("b", 50).await;
    // (A request or two already on its way to a may land after the switch.)
    assert!(load.hits("a") <= a_hits + 2);

    load.finish().await;
    assert!(
        gateway
            .stderr()
            .contains("discovery: cannot read the source, the last list stays"),
        "{}",
        gateway.stderr()
    );
}

#[test]
fn a_bad_consul_table_fails_check_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.users]\n\
         discovery = { consul = { addr = \"127.0.0.1:8500\", service = \"no spaces\" } }\n\
         [[routes]]\npath = \"/\"\nupstream = \"users\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("gateway.toml:4:61: upstreams.users: discovery.consul.service: `no spaces` is not a service name"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_stays_keeps_its_health_across_lists() {
    let (sick, b, c) = (
        TestUpstream::start("sick").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    );
    sick.set(Behaviour::Status(503));
    let consul = FakeConsul::start().await;
    consul.set(
        "users",
        vec![Instance::new(sick.addr), Instance::new(b.addr)],
    );
    // One failed check marks a target unhealthy, and the next round is far away. The target
    // recovers meanwhile: only a target that lost its state with the new list (and so was
    // checked again as new) would get traffic before that round.
    let config = config(&consul, "").replace(
        "[[routes]]",
        "health_check = { path = \"/health\", interval = \"30s\", unhealthy_threshold = 1, healthy_threshold = 1 }\n[[routes]]",
    );
    let gateway = GatewayProcess::start(&config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway
        .stderr()
        .contains("health check: target is unhealthy")
    {
        assert!(Instant::now() < deadline, "{}", gateway.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sick.set(Behaviour::Echo);
    consul.set(
        "users",
        vec![
            Instance::new(sick.addr),
            Instance::new(b.addr),
            Instance::new(c.addr),
        ],
    );
    let client = HttpClient::http1();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.hits() == 0 {
        assert_eq!(client.get(&gateway.url("/x")).await.status, 200);
        assert!(Instant::now() < deadline, "c never got traffic");
    }
    let sick_hits = sick.hits();
    for _ in 0..50 {
        assert_eq!(client.get(&gateway.url("/x")).await.status, 200);
    }
    assert_eq!(
        sick.hits(),
        sick_hits,
        "the target marked unhealthy got traffic again"
    );
    let targets = admin_json(&gateway, "/upstreams").await["upstreams"]["users"]["targets"].clone();
    let sick_row = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["addr"] == sick.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(sick_row["healthy"], false, "{targets}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_an_unchanged_source_and_restarts_a_changed_one() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let consul = FakeConsul::start().await;
    consul.set("users", vec![Instance::new(a.addr)]);
    consul.set("users-v2", vec![Instance::new(b.addr)]);
    let first = config(&consul, "");
    let gateway = GatewayProcess::start(&first);
    let client = HttpClient::http1();
    assert_eq!(client.get(&gateway.url("/x")).await.upstream(), "a");
    let plain_queries = |consul: &FakeConsul| consul.queries() - consul.blocking_queries();
    assert_eq!(plain_queries(&consul), 1);

    // Another route, same upstream table: the source goes on (no new first query).
    let second = first.replace(
        "path = \"/{*rest}\"",
        "path = \"/{*rest}\"\nname = \"renamed\"",
    );
    gateway.replace_file("gateway.toml", second.as_bytes());
    gateway.wait_for_reloads(1);
    assert_eq!(client.get(&gateway.url("/x")).await.upstream(), "a");
    assert_eq!(
        plain_queries(&consul),
        1,
        "the unchanged source started over"
    );

    // The upstream now follows another service: a new source, whose first list the very
    // first request after the reload waits for.
    let third = second.replace("service = \"users\"", "service = \"users-v2\"");
    gateway.replace_file("gateway.toml", third.as_bytes());
    gateway.wait_for_reloads(2);
    assert_eq!(client.get(&gateway.url("/x")).await.upstream(), "b");
    assert_eq!(plain_queries(&consul), 2);
}
