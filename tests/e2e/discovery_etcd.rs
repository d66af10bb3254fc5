//! etcd discovery (`discovery.etcd`): a real etcd that the tests write keys to with `etcdctl`,
//! kill and start again, and a gateway whose targets follow it while clients keep sending
//! requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::etcd::Etcd;
use crate::support::load::Load;
use crate::support::*;

const PREFIX: &str = "/services/app/";

/// Generous: CI machines are slow and busy.
const DEADLINE: Duration = Duration::from_secs(30);

/// A gateway whose upstream `app` is discovered in etcd at `endpoints`, routed at `/app`.
fn config(endpoints: &[String]) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{SERVER}admin = \"127.0.0.1:0\"\n\n\
         [upstreams.app]\n\
         discovery = {{ etcd = {{ endpoints = [{}], prefix = \"{PREFIX}\" }} }}\n\n\
         [[routes]]\npath = \"/app\"\nupstream = \"app\"\n",
        endpoints.join(", ")
    )
}

fn key(upstream: &TestUpstream) -> String {
    format!("{PREFIX}{}", upstream.name)
}

fn value(upstream: &TestUpstream, weight: u32) -> String {
    format!(r#"{{"addr": "{}", "weight": {weight}}}"#, upstream.addr)
}

/// `GET /upstreams`' entry for `app`.
async fn app(client: &HttpClient, gateway: &GatewayProcess) -> Value {
    client.get(&gateway.admin_url("/upstreams")).await.json()["upstreams"]["app"].take()
}

fn targets(app: &Value) -> Vec<(String, u64)> {
    let mut targets: Vec<(String, u64)> = app["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["addr"].as_str().unwrap().to_owned(),
                t["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    targets.sort();
    targets
}

/// Waits until `app`'s targets are `expected` (address, weight); returns how long that took.
async fn wait_targets(
    client: &HttpClient,
    gateway: &GatewayProcess,
    expected: &[(SocketAddr, u64)],
) -> Duration {
    let mut expected: Vec<(String, u64)> = expected
        .iter()
        .map(|(addr, weight)| (addr.to_string(), *weight))
        .collect();
    expected.sort();
    let start = Instant::now();
    loop {
        let now = app(client, gateway).await;
        if targets(&now) == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "targets are not {expected:?} after {DEADLINE:?}: {now:#}\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `app`'s source reports an error (`true`) or none (`false`).
async fn wait_source_error(client: &HttpClient, gateway: &GatewayProcess, failing: bool) -> Value {
    let start = Instant::now();
    loop {
        let now = app(client, gateway).await;
        if now["source"]["error"].is_string() == failing {
            return now;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "source error is not {}: {now:#}",
            if failing { "set" } else { "cleared" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SOURCE_UP: &str = "wasmgate_discovery_source_up{upstream=\"app\"}";

/// Waits until `upstream` gets another request.
async fn wait_hits(upstream: &TestUpstream) {
    let (start, before) = (Instant::now(), upstream.hits());
    while upstream.hits() == before {
        assert!(
            start.elapsed() < DEADLINE,
            "{} gets no requests",
            upstream.name
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_targets_follow_puts_and_deletes_under_load() {
    let Some(etcd) = Etcd::start() else { return };
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    etcd.put(&key(&a), &value(&a, 1));
    etcd.put(&format!("{PREFIX}broken"), "127.0.0.1:9");
    // The first member listed is down: the gateway goes on to the next.
    let down = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let gateway = GatewayProcess::start(&config(&[down, etcd.endpoint()]));
    let client = HttpClient::http1();
    wait_targets(&client, &gateway, &[(a.addr, 1)]).await;
    let load = Load::start(&gateway, "/app", 4);
    wait_hits(&a).await;

    // Added: traffic reaches it within about a second of the put (etcdctl's own start
    // included).
    let put_at = Instant::now();
    etcd.put(&key(&b), &value(&b, 3));
    wait_hits(&b).await;
    let applied_in = put_at.elapsed();
    eprintln!("etcd put to the first request on the new target: {applied_in:?}");
    assert!(applied_in < Duration::from_secs(2), "{applied_in:?}");
    wait_targets(&client, &gateway, &[(a.addr, 1), (b.addr, 3)]).await;

    // Weights: b gets three requests for each of a's.
    let (a0, b0) = (a.hits(), b.hits());
    let start = Instant::now();
    while (a.hits() - a0) + (b.hits() - b0) < 400 {
        assert!(start.elapsed() < DEADLINE, "the load stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ratio = (b.hits() - b0) as f64 / (a.hits() - a0) as f64;
    assert!((2.5..=3.5).contains(&ratio), "b/a = {ratio}");

    // Removed: no more requests once the list is applied (requests already on it finish).
    etcd.delete(&key(&a));
    wait_targets(&client, &gateway, &[(b.addr, 3)]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a_after, b_after) = (a.hits(), b.hits());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.hits(), a_after, "a still gets requests after its delete");
    assert!(b.hits() > b_after);

    etcd.put(&key(&c), &value(&c, 1));
    wait_hits(&c).await;
    wait_targets(&client, &gateway, &[(b.addr, 3), (c.addr, 1)]).await;

    let ok = load.finish().await;
    assert!(ok > 500, "only {ok} requests");

    let app = app(&client, &gateway).await;
    let source = &app["source"];
    assert_eq!(source["kind"], "etcd");
    assert_eq!(source["prefix"], PREFIX);
    assert_eq!(source["member"], etcd.endpoint());
    assert_eq!(source["error"], Value::Null);
    assert_eq!(source["revision"], etcd.revision());
    assert_eq!(source["skipped"][0]["key"], format!("{PREFIX}broken"));
    assert!(source["updates"].as_u64().unwrap() >= 4, "{source}");

    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(1.0));
    assert_eq!(
        metric(
            &client,
            &gateway,
            "wasmgate_discovery_targets{upstream=\"app\"}"
        )
        .await,
        Some(2.0)
    );
    let updates = metric(
        &client,
        &gateway,
        "wasmgate_discovery_updates_total{upstream=\"app\"}",
    )
    .await;
    assert!(updates >= Some(4.0), "{updates:?}");
    // The member that was down at the start counted as a failed read.
    let errors = metric(
        &client,
        &gateway,
        "wasmgate_discovery_errors_total{upstream=\"app\"}",
    )
    .await;
    assert!(errors >= Some(1.0), "{errors:?}");
    println!("{ok} requests, none failed; put applied in {applied_in:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_outages_keep_the_last_list_and_miss_no_change() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    etcd.put(&key(&a), &value(&a, 1));
    let gateway = GatewayProcess::start(&config(&[etcd.endpoint()]));
    let client = HttpClient::http1();
    wait_targets(&client, &gateway, &[(a.addr, 1)]).await;
    let load = Load::start(&gateway, "/app", 2);

    // etcd dies: the last list keeps serving, and the gateway says the source is failing.
    etcd.stop();
    let now = wait_source_error(&client, &gateway, true).await;
    let error = now["source"]["error"].as_str().unwrap();
    assert!(error.contains(&etcd.endpoint()), "{error}");
    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(0.0));
    let served = load.ok();
    wait_hits(&a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        load.ok() > served + 10,
        "requests stalled while etcd was down"
    );
    assert_eq!(targets(&app(&client, &gateway).await).len(), 1);

    // Changes made while the gateway cannot reach etcd, then etcd back where it was: the
    // resumed watch replays them.
    etcd.restart_hidden();
    etcd.put(&key(&b), &value(&b, 2));
    etcd.delete(&key(&a));
    etcd.restart();
    wait_targets(&client, &gateway, &[(b.addr, 2)]).await;
    wait_source_error(&client, &gateway, false).await;
    assert_eq!(metric(&client, &gateway, SOURCE_UP).await, Some(1.0));
    wait_hits(&b).await;

    // The same with the history compacted past the gateway's revision: it reads the prefix
    // again.
    etcd.stop();
    wait_source_error(&client, &gateway, true).await;
    etcd.restart_hidden();
    etcd.put(&key(&c), &value(&c, 1));
    // A change elsewhere, so that compacting up to now also drops the revision of c's put,
    // which is where the gateway would resume.
    etcd.put("/elsewhere", "x");
    etcd.compact(etcd.revision());
    etcd.restart();
    wait_targets(&client, &gateway, &[(b.addr, 2), (c.addr, 1)]).await;
    assert!(
        gateway
            .stderr()
            .contains("compacted; reading the prefix again"),
        "{}",
        gateway.stderr()
    );
    wait_hits(&c).await;

    // And the watch set up after that follows changes again.
    etcd.put(&key(&b), &value(&b, 5));
    wait_targets(&client, &gateway, &[(b.addr, 5), (c.addr, 1)]).await;

    let ok = load.finish().await;
    println!("{ok} requests through two etcd outages, none failed");
}

#[test]
fn etcd_config_errors_have_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "127.0.0.1:0"

[upstreams.none]
discovery = { etcd = { endpoints = [], prefix = "/s/" } }

[upstreams.portless]
discovery = { etcd = { endpoints = ["127.0.0.1"], prefix = "/s/" } }

[upstreams.noprefix]
discovery = { etcd = { endpoints = ["127.0.0.1:2379"], prefix = "" } }

[[routes]]
path = "/"
upstream = "none"
"#,
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    let file = path.display().to_string();
    for expected in [
        "5:36: upstreams.none: etcd `endpoints` is empty",
        "8:36: upstreams.portless: etcd endpoint `127.0.0.1` is not `host:port`",
        "11:65: upstreams.noprefix: etcd `prefix` is empty",
    ] {
        assert!(stderr.contains(&format!("{file}:{expected}")), "{stderr}");
    }
}
