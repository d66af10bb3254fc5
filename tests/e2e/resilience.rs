//! Failures on the upstream side: retries and their limits, timeouts, dying upstreams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;

use crate::support::*;

fn pool_config(targets: &[(SocketAddr, u32)], extra: &str) -> String {
    format!(
        "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"pool\"\n",
        upstream_table("pool", targets, extra)
    )
}

/// An address nothing listens on.
async fn dead_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_killed_under_load_loses_no_idempotent_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    b.set(Behaviour::Delay(Duration::from_millis(20)));
    a.set(Behaviour::Delay(Duration::from_millis(20)));
    let gateway = GatewayProcess::start(&pool_config(
        &[(a.addr, 1), (b.addr, 1)],
        "retry = { attempts = 2, on = [\"connect-failure\", \"reset\", \"502\", \"503\"], budget = 0.5 }\n\
         outlier = { consecutive_failures = 2, eject = \"30s\" }",
    ));
    let client = HttpClient::http1();
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..16 {
        let client = client.clone();
        let url = gateway.url(&format!("/load/{worker}"));
        let failures = failures.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..60 {
                match client.try_send(Method::GET, &url, &[], "").await {
                    Ok(reply) if reply.status == 200 => {}
                    Ok(reply) => {
                        eprintln!("failed: {} {}", reply.status, reply.text());
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(err) => {
                        eprintln!("failed: {err}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill b (connections in flight are dropped) once the load is running.
    while done.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 960);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests were lost; gateway log:\n{}",
        gateway.stderr()
    );
    let log = gateway.access_log();
    assert!(
        log.iter().any(|e| e["attempts"].as_u64() > Some(1)),
        "no request needed a retry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn post_is_not_retried_after_bytes_were_sent() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.set(Behaviour::ResetAfterBody);
    b.set(Behaviour::ResetAfterBody);
    let gateway = GatewayProcess::start(&pool_config(
        &[(a.addr, 1), (b.addr, 1)],
        "retry = { attempts = 3, on = [\"connect-failure\", \"reset\", \"502\"] }",
    ));
    let client = HttpClient::http1();
    let reply = client
        .send(Method::POST, &gateway.url("/orders"), &[], "{\"order\": 1}")
        .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_reset");
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "the POST reached an upstream more than once"
    );

    // The same failure on a GET (listed) is retried on the other target.
    let reply = client.get(&gateway.url("/orders")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        a.hits() + b.hits(),
        1 + 4,
        "GET: first try plus three retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failures_are_retried_for_any_method() {
    let alive = TestUpstream::start("alive").await;
    let dead = dead_address().await;
    // Default policy (no retry table): one retry, on connect failure only.
    let gateway = GatewayProcess::start(&pool_config(&[(dead, 1), (alive.addr, 1)], ""));
    let client = HttpClient::http1();
    for i in 0..6 {
        let reply = client
            .send(
                Method::POST,
                &gateway.url("/p"),
                &[],
                format!("payload-{i}"),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["body"], format!("payload-{i}"));
    }
    let log = gateway.wait_access_log(6);
    assert!(log.iter().any(|e| e["attempts"] == 2), "{log:?}");
    assert_eq!(alive.hits(), 6);

    // With only dead targets the client gets a 502 that names the cause.
    let gateway = GatewayProcess::start(&pool_config(&[(dead, 1)], ""));
    let reply = client.get(&gateway.url("/p")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_connect_failed");
    assert!(
        !reply.text().contains(&dead.to_string()),
        "internal address leaked: {}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_body_is_complete_and_bounded() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.set(Behaviour::Status(503));
    b.set(Behaviour::Status(503));
    let gateway = GatewayProcess::start(&pool_config(
        &[(a.addr, 1), (b.addr, 1)],
        "retry = { attempts = 1, on = [\"503\"], methods = [\"PUT\"], max_replay_body = \"1KiB\", budget = 1.0 }",
    ));
    let client = HttpClient::http1();
    // Small PUT: tried on both targets, each got the whole body.
    let reply = client
        .send(Method::PUT, &gateway.url("/doc"), &[], "x".repeat(600))
        .await;
    assert_eq!(reply.status, 503);
    let bodies: Vec<usize> = a
        .bodies()
        .iter()
        .chain(b.bodies().iter())
        .map(|b| b.len())
        .collect();
    assert_eq!(
        bodies,
        vec![600, 600]
            .into_iter()
            .take(bodies.len())
            .collect::<Vec<_>>()
    );
    assert_eq!(bodies.len(), 2, "small PUT is retried once");

    // A PUT body over max_replay_body cannot be replayed, so it is not retried.
    let before = a.hits() + b.hits();
    let reply = client
        .send(Method::PUT, &gateway.url("/doc"), &[], "y".repeat(4096))
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(a.hits() + b.hits(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_answer_504_and_per_try_timeout_retries() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.set(Behaviour::Hang);
    let gateway = GatewayProcess::start(&pool_config(&[(slow.addr, 1)], "timeout = \"300ms\""));
    let client = HttpClient::http1();
    let started = Instant::now();
    let reply = client.get(&gateway.url("/t")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The timeout covers the whole exchange: a response body still streaming is cut off.
    slow.set(Behaviour::Stream {
        chunks: 20,
        pause: Duration::from_millis(100),
    });
    let started = Instant::now();
    let cut = client
        .try_send(Method::GET, &gateway.url("/stream"), &[], "")
        .await;
    assert!(
        cut.is_err(),
        "a body past the timeout must not look complete"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    slow.set(Behaviour::Hang);

    // A hanging target with a per-try timeout: the retry goes to the other target.
    let gateway = GatewayProcess::start(&pool_config(
        &[(slow.addr, 1), (fast.addr, 1)],
        "timeout = \"5s\"\nretry = { attempts = 1, on = [\"timeout\"], per_try_timeout = \"200ms\" }",
    ));
    for _ in 0..4 {
        let started = Instant::now();
        let reply = client.get(&gateway.url("/t")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.upstream(), "fast");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_response_cuts_only_that_response() {
    let upstream = TestUpstream::start("app").await;
    upstream.set(Behaviour::Stream {
        chunks: 50,
        pause: Duration::from_millis(50),
    });
    let gateway = GatewayProcess::start(&pool_config(&[(upstream.addr, 1)], ""));
    let client = HttpClient::http1();
    let url = gateway.url("/s");
    let streaming = tokio::spawn({
        let client = client.clone();
        async move { client.try_send(Method::GET, &url, &[], "").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    upstream.kill();
    let result = streaming.await.unwrap();
    assert!(result.is_err(), "a truncated body must not look complete");
    // The gateway is fine and serves the restarted upstream.
    let mut upstream = upstream;
    upstream.restart().await;
    upstream.set(Behaviour::Echo);
    let reply = client.get(&gateway.url("/after")).await;
    assert_eq!(reply.status, 200);
    let log = gateway.wait_access_log(2);
    assert!(log.iter().any(|e| e["complete"] == false), "{log:?}");
}
