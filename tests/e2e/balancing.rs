//! Weighted splits, balancers and active health checks, observed through real traffic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::Method;

use crate::support::*;

async fn count_upstreams(
    client: &HttpClient,
    url: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = client.send(Method::GET, url, headers, "").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *counts.entry(reply.upstream()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_split_holds_over_1000_requests() {
    let stable = TestUpstream::start("stable").await;
    let canary = TestUpstream::start("canary").await;
    let config = format!(
        "{SERVER}{}{}[[routes]]\npath = \"/{{*rest}}\"\nsplit = [{{ upstream = \"stable\", weight = 90 }}, {{ upstream = \"canary\", weight = 10 }}]\n",
        upstream_table("stable", &[(stable.addr, 1)], ""),
        upstream_table("canary", &[(canary.addr, 1)], ""),
    );
    let gateway = GatewayProcess::start(&config);
    let counts = count_upstreams(&HttpClient::http1(), &gateway.url("/x"), 1000, &[]).await;
    let canary_share = counts.get("canary").copied().unwrap_or(0) as f64 / 1000.0;
    assert!(
        (canary_share - 0.10).abs() <= 0.02,
        "canary got {canary_share}: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn target_weights_and_balancers() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let config = |balance: &str| {
        format!(
            "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"pool\"\n",
            upstream_table(
                "pool",
                &[(a.addr, 3), (b.addr, 1)],
                &format!("balance = \"{balance}\"")
            )
        )
    };
    let client = HttpClient::http1();

    let gateway = GatewayProcess::start(&config("round_robin"));
    let counts = count_upstreams(&client, &gateway.url("/"), 400, &[]).await;
    assert_eq!(counts["a"], 300, "{counts:?}");
    assert_eq!(counts["b"], 100, "{counts:?}");

    for balance in ["random", "least_request"] {
        let gateway = GatewayProcess::start(&config(balance));
        let counts = count_upstreams(&client, &gateway.url("/"), 400, &[]).await;
        assert!(
            counts.get("a").copied().unwrap_or(0) > 200,
            "{balance}: {counts:?}"
        );
        assert!(
            counts.get("b").copied().unwrap_or(0) > 30,
            "{balance}: {counts:?}"
        );
    }

    // Consistent hashing: the same user always reaches the same target; users spread.
    let gateway = GatewayProcess::start(&config("hash:header:x-user"));
    let mut owners = HashMap::new();
    for user in 0..40 {
        let user_id = format!("user-{user}");
        let counts = count_upstreams(&client, &gateway.url("/"), 5, &[("x-user", &user_id)]).await;
        assert_eq!(
            counts.len(),
            1,
            "{user_id} moved between targets: {counts:?}"
        );
        *owners
            .entry(counts.into_keys().next().unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(owners.len(), 2, "all users on one target: {owners:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_target_stops_receiving_traffic_and_comes_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let config = format!(
        "{SERVER}{}[[routes]]\npath = \"/app/{{*rest}}\"\nupstream = \"pool\"\n",
        upstream_table(
            "pool",
            &[(a.addr, 1), (b.addr, 1)],
            "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 2, healthy_threshold = 2 }"
        )
    );
    let gateway = GatewayProcess::start(&config);
    let client = HttpClient::http1();
    let url = gateway.url("/app/x");

    // b starts failing its checks (and everything else): after two failed checks it gets nothing.
    b.set(Behaviour::Status(503));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = count_upstreams_any(&client, &url, 20).await;
        if !counts.contains_key("b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b still gets traffic: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = count_upstreams(&client, &url, 50, &[]).await;
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");

    // b recovers: after two good checks it is back in rotation.
    b.set(Behaviour::Echo);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts = count_upstreams(&client, &url, 20, &[]).await;
        if counts.get("b").copied().unwrap_or(0) >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "b never came back: {counts:?}");
    }
    assert!(
        gateway.stderr().contains("target is unhealthy"),
        "{}",
        gateway.stderr()
    );
    assert!(
        gateway.stderr().contains("target is healthy again"),
        "{}",
        gateway.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outlier_detection_ejects_a_failing_target() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let config = format!(
        "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"pool\"\n",
        upstream_table(
            "pool",
            &[(a.addr, 1), (b.addr, 1)],
            "outlier = { consecutive_failures = 3, eject = \"1s\", max_ejected_percent = 50 }"
        )
    );
    let gateway = GatewayProcess::start(&config);
    let client = HttpClient::http1();
    b.set(Behaviour::Status(500));
    let counts = count_upstreams_any(&client, &gateway.url("/"), 40).await;
    // b answers three 500s in a row, then is ejected for a second.
    assert_eq!(counts.get("b"), Some(&3), "{counts:?}");
    assert!(
        gateway.stderr().contains("target ejected"),
        "{}",
        gateway.stderr()
    );
    // After the ejection time b gets traffic again (and is ejected again, for twice as long).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let counts = count_upstreams_any(&client, &gateway.url("/"), 20).await;
    assert_eq!(counts.get("b"), Some(&3), "{counts:?}");
}

async fn count_upstreams_any(client: &HttpClient, url: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = client.get(url).await;
        *counts.entry(reply.upstream()).or_insert(0) += 1;
    }
    counts
}
