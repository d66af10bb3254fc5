//! What reaches the upstream and what comes back: headers, rewrites, routing, HTTP versions,
//! streaming.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;

use crate::support::*;

fn one_route(upstream: &TestUpstream, route_extra: &str) -> String {
    format!(
        "{SERVER}trusted_proxies = [\"10.0.0.0/8\"]\n{}[[routes]]\nname = \"main\"\npath = \"/api/{{*rest}}\"\nupstream = \"app\"\n{route_extra}\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&one_route(&upstream, ""));
    let client = HttpClient::http1();
    let reply = client
        .send(
            Method::GET,
            &gateway.url("/api/things?q=1"),
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "drop me"),
                ("keep-alive", "timeout=5"),
                ("x-request-id", "client-id-1"),
                ("te", "gzip"),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    let headers = &seen["headers"];
    assert_eq!(seen["uri"], "/api/things?q=1");
    // The peer (loopback) is not trusted: its X-Forwarded-For is replaced, not extended.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gateway.addr.to_string());
    assert_eq!(headers["host"], gateway.addr.to_string());
    assert_eq!(headers["x-request-id"], "client-id-1");
    for hop in ["x-secret", "keep-alive", "te", "connection"] {
        assert!(
            headers.get(hop).is_none(),
            "{hop} reached the upstream: {headers}"
        );
    }
    assert_eq!(reply.headers["x-request-id"], "client-id-1");

    let generated = client.get(&gateway.url("/api/x")).await;
    let id = generated.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(generated.json()["headers"]["x-request-id"], id.as_str());

    let log = gateway.wait_access_log(2);
    let entry = log
        .iter()
        .find(|e| e["request_id"] == "client-id-1")
        .expect("access log entry");
    assert_eq!(entry["route"], "main");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/api/things");
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert_eq!(entry["upstream"], upstream.addr.to_string());
    assert_eq!(entry["attempts"], 1);
    assert!(entry["bytes"].as_u64().unwrap() > 0);
    assert!(entry["latency_us"].as_u64().is_some());
    assert!(entry["timestamp"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrite_and_host_rewrite() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&one_route(
        &upstream,
        "rewrite = \"/v2/{rest}\"\nhost_rewrite = \"internal.svc\"",
    ));
    let reply = HttpClient::http1()
        .get(&gateway.url("/api/users/7?full=1"))
        .await;
    let seen = reply.json();
    assert_eq!(seen["uri"], "/v2/users/7?full=1");
    assert_eq!(seen["headers"]["host"], "internal.svc");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        gateway.addr.to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_by_host_method_and_header_and_404() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let d = TestUpstream::start("d").await;
    let config = format!(
        r#"{SERVER}{}{}{}{}
[[routes]]
path = "/{{*rest}}"
upstream = "a"

[[routes]]
host = "*.example.com"
path = "/{{*rest}}"
upstream = "b"

[[routes]]
host = "api.example.com"
path = "/items"
methods = ["POST"]
upstream = "c"

[[routes]]
path = "/items"
headers = {{ "x-canary" = "1" }}
upstream = "d"
"#,
        upstream_table("a", &[(a.addr, 1)], ""),
        upstream_table("b", &[(b.addr, 1)], ""),
        upstream_table("c", &[(c.addr, 1)], ""),
        upstream_table("d", &[(d.addr, 1)], ""),
    );
    let gateway = GatewayProcess::start(&config);
    let client = HttpClient::http1();
    let url = gateway.url("/items");
    let ask = |method: Method, headers: Vec<(&'static str, &'static str)>| {
        let client = client.clone();
        let url = url.clone();
        async move { client.send(method, &url, &headers, "").await.upstream() }
    };
    assert_eq!(ask(Method::GET, vec![]).await, "a");
    assert_eq!(
        ask(Method::GET, vec![("host", "www.example.com")]).await,
        "b"
    );
    assert_eq!(
        ask(Method::POST, vec![("host", "api.example.com")]).await,
        "c"
    );
    // GET is not allowed on c's route: the wildcard host route takes it.
    assert_eq!(
        ask(Method::GET, vec![("host", "api.example.com:8080")]).await,
        "b"
    );
    assert_eq!(ask(Method::GET, vec![("x-canary", "1")]).await, "d");

    let only_items = format!(
        "{SERVER}{}[[routes]]\npath = \"/items\"\nupstream = \"a\"\n",
        upstream_table("a", &[(a.addr, 1)], "")
    );
    let gateway = GatewayProcess::start(&only_items);
    let reply = client.get(&gateway.url("/other")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.json()["error"], "no_route");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_client_to_http1_upstream_and_back() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&one_route(&upstream, ""));
    let reply = HttpClient::h2c()
        .send(
            Method::POST,
            &gateway.url("/api/h2"),
            &[("content-type", "text/plain")],
            "hello over h2",
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["body"], "hello over h2");
    // The HTTP/2 :authority became Host for the HTTP/1.1 upstream.
    assert_eq!(seen["headers"]["host"], gateway.addr.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_client_to_h2c_upstream() {
    let upstream = TestUpstream::start_h2c("grpc-ish").await;
    let config = format!(
        "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"h2\"\n",
        upstream_table("h2", &[(upstream.addr, 1)], "protocol = \"h2c\"")
    );
    let gateway = GatewayProcess::start(&config);
    let reply = HttpClient::http1()
        .send(
            Method::PUT,
            &gateway.url("/x"),
            &[("te", "trailers"), ("connection", "te")],
            "body",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["body"], "body");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_in_both_directions() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&one_route(&upstream, ""));

    // Response: the first chunk arrives long before the upstream has sent the last.
    upstream.set(Behaviour::Stream {
        chunks: 4,
        pause: Duration::from_millis(300),
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let started = Instant::now();
    let response = client
        .get(gateway.url("/api/stream").parse().unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "chunk-0\n");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "first chunk was held back: {:?}",
        started.elapsed()
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk-1\nchunk-2\nchunk-3\n");

    // Request: a chunked upload of several MiB arrives complete.
    upstream.set(Behaviour::Echo);
    let big = Bytes::from(vec![b'x'; 5 * 1024 * 1024]);
    let reply = HttpClient::http1()
        .send(Method::POST, &gateway.url("/api/upload"), &[], big.clone())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], big.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_decide_the_client_ip() {
    let upstream = TestUpstream::start("app").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    );
    let gateway = GatewayProcess::start(&config);
    let reply = HttpClient::http1()
        .send(
            Method::GET,
            &gateway.url("/"),
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "via-lb"),
            ],
            "",
        )
        .await;
    let headers = &reply.json()["headers"];
    // The peer is a trusted proxy: its chain is kept and the peer appended.
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    let log = gateway.wait_access_log(1);
    assert_eq!(log[0]["client_ip"], "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_is_kept_or_started_and_logged() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&one_route(&upstream, ""));
    let client = HttpClient::http1();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let kept = client
        .send(
            Method::GET,
            &gateway.url("/api/kept"),
            &[("traceparent", parent), ("tracestate", "vendor=1")],
            "",
        )
        .await;
    assert_eq!(kept.json()["headers"]["traceparent"], parent);
    assert_eq!(kept.json()["headers"]["tracestate"], "vendor=1");

    // No traceparent, or a malformed one: the gateway starts a trace (and drops tracestate).
    let started = client.get(&gateway.url("/api/started")).await;
    let bad = client
        .send(
            Method::GET,
            &gateway.url("/api/bad"),
            &[("traceparent", "00-zz-yy-01"), ("tracestate", "vendor=1")],
            "",
        )
        .await;
    let mut new_ids = Vec::new();
    for reply in [&started, &bad] {
        let headers = &reply.json()["headers"];
        let sent = headers["traceparent"].as_str().unwrap().to_owned();
        let fields: Vec<&str> = sent.split('-').collect();
        assert_eq!(fields.len(), 4, "{sent}");
        assert_eq!((fields[0], fields[3]), ("00", "01"), "{sent}");
        assert_eq!((fields[1].len(), fields[2].len()), (32, 16), "{sent}");
        assert!(headers.get("tracestate").is_none(), "{headers}");
        new_ids.push(fields[1].to_owned());
    }
    assert_ne!(new_ids[0], new_ids[1]);

    let log = gateway.wait_access_log(3);
    let trace_of = |path: &str| {
        log.iter()
            .find(|entry| entry["path"] == path)
            .map(|entry| entry["trace_id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no access log entry for {path}: {log:?}"))
    };
    assert_eq!(trace_of("/api/kept"), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(trace_of("/api/started"), new_ids[0]);
    assert_eq!(trace_of("/api/bad"), new_ids[1]);
}
