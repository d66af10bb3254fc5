//! Route rate limits through the real binary: each key kind, the 429 and its headers, the
//! quota headers on allowed responses, and the shared bucket for requests without a key.

use http::Method;

use crate::support::client::Reply;
use crate::support::*;

fn route(path: &str, limit: &str, extra: &str) -> String {
    format!(
        "[[routes]]\npath = \"{path}\"\nupstream = \"app\"\nrate_limit = {{ {limit} }}\n{extra}\n"
    )
}

fn config(upstream: &TestUpstream, routes: &str) -> String {
    format!(
        "{SERVER}{}\n{routes}",
        upstream_table("app", &[(upstream.addr, 1)], "")
    )
}

async fn get(
    client: &HttpClient,
    gateway: &GatewayProcess,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    client
        .send(Method::GET, &gateway.url(path), headers, "")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn client_ip_limit_answers_429_with_retry_after_and_quota_headers() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(
        &upstream,
        &route("/ip", "rate = \"2/m\", burst = 2, key = \"client_ip\"", ""),
    ));
    let client = HttpClient::http1();
    let first = get(&client, &gateway, "/ip", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit-policy"], "\"route\";q=2;w=60");
    assert_eq!(first.headers["ratelimit"], "\"route\";r=1;t=30");
    assert_eq!(get(&client, &gateway, "/ip", &[]).await.status, 200);
    let limited = get(&client, &gateway, "/ip", &[]).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.json()["error"], "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert!(
        limited.headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"route\";r=0;")
    );
    assert_eq!(
        upstream.hits(),
        2,
        "a limited request never reaches the upstream"
    );
    let log = gateway.wait_access_log(3);
    assert_eq!(log[2]["status"], 429);
    assert_eq!(log[2]["error"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_keys_have_their_own_buckets_and_a_missing_one_shares_one() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(
        &upstream,
        &route("/key", "rate = \"1/m\", key = \"header:x-api-key\"", ""),
    ));
    let client = HttpClient::http1();
    for key in ["alice", "bob"] {
        assert_eq!(
            get(&client, &gateway, "/key", &[("x-api-key", key)])
                .await
                .status,
            200
        );
        assert_eq!(
            get(&client, &gateway, "/key", &[("x-api-key", key)])
                .await
                .status,
            429
        );
    }
    // No key at all: one shared "unknown" bucket, not a free pass.
    assert_eq!(get(&client, &gateway, "/key", &[]).await.status, 200);
    assert_eq!(get(&client, &gateway, "/key", &[]).await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctx_keys_use_the_value_a_plugin_set_and_route_keys_share_one_bucket() {
    let upstream = TestUpstream::start("app").await;
    let tagged = |name: &str| {
        format!("plugins = [{{ use = \"t\", config = {{ mode = \"tag\", name = \"{name}\" }} }}]")
    };
    let routes = [
        route("/ctx/a", "rate = \"1/m\", key = \"ctx:last\"", &tagged("a")),
        route("/ctx/b", "rate = \"1/m\", key = \"ctx:last\"", &tagged("b")),
        route("/whole", "rate = \"2/m\", key = \"route\"", ""),
    ]
    .join("\n");
    let plugins = format!(
        "[plugins.t]\npath = \"{}/test_plugins.wasm\"\n",
        env!("WASMGATE_PLUGIN_DIR")
    );
    let gateway = GatewayProcess::start(&config(&upstream, &format!("{plugins}\n{routes}")));
    let client = HttpClient::http1();
    // The tag plugin sets ctx:last to its name: "a" and "b" are separate buckets.
    assert_eq!(get(&client, &gateway, "/ctx/a", &[]).await.status, 200);
    assert_eq!(get(&client, &gateway, "/ctx/a", &[]).await.status, 429);
    assert_eq!(get(&client, &gateway, "/ctx/b", &[]).await.status, 200);
    // `route`: every client shares the route's bucket, whatever its address or headers.
    let other = HttpClient::http1();
    assert_eq!(
        get(&client, &gateway, "/whole", &[("x-api-key", "1")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&other, &gateway, "/whole", &[("x-api-key", "2")])
            .await
            .status,
        200
    );
    assert_eq!(get(&other, &gateway, "/whole", &[]).await.status, 429);
}

#[test]
fn check_reports_bad_rate_limits_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text = format!(
        "{SERVER}{}\n{}",
        upstream_table("app", &[("127.0.0.1:9".parse().unwrap(), 1)], ""),
        route("/x", "rate = \"5 per second\", key = \"cookie\"", "")
    );
    std::fs::write(&path, text).unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("rate_limit.rate: `5 per second` is not a rate"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rate_limit.key: unknown key `cookie`"),
        "{stderr}"
    );
    assert!(stderr.contains("gateway.toml:"), "{stderr}");
}
