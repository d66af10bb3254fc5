//! The admin API's read-only endpoints (reload has its own tests in `reload`).

use std::time::{Duration, Instant};

use http::Method;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_show_each_targets_health() {
    let live = TestUpstream::start("live").await;
    // A port nothing listens on: its health checks fail.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table(
            "app",
            &[(live.addr, 3), (dead, 1)],
            "health_check = { path = \"/health\", interval = \"50ms\", timeout = \"100ms\", unhealthy_threshold = 1 }"
        ),
    );
    let gateway = GatewayProcess::start(&config);
    let client = HttpClient::http1();
    let deadline = Instant::now() + Duration::from_secs(5);
    let targets = loop {
        let reply = client
            .send(Method::GET, &gateway.admin_url("/upstreams"), &[], "")
            .await;
        assert_eq!(reply.status, 200);
        let targets = reply.json()["upstreams"]["app"]["targets"].clone();
        if targets[1]["healthy"] == false {
            break targets;
        }
        assert!(
            Instant::now() < deadline,
            "the dead target never turned unhealthy: {targets}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(targets[0]["addr"], live.addr.to_string());
    assert_eq!(targets[0]["weight"], 3);
    assert_eq!(targets[0]["healthy"], true);
    assert_eq!(targets[0]["available"], true);
    assert_eq!(targets[1]["addr"], dead.to_string());
    assert_eq!(targets[1]["available"], false);

    let wrong_method = client
        .send(Method::POST, &gateway.admin_url("/upstreams"), &[], "")
        .await;
    assert_eq!(wrong_method.status, 405);
    let unknown = client
        .send(Method::GET, &gateway.admin_url("/nothing"), &[], "")
        .await;
    assert_eq!(unknown.status, 404);
    let healthz = client
        .send(Method::GET, &gateway.admin_url("/healthz"), &[], "")
        .await;
    assert_eq!(healthz.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_defaults_to_loopback_and_can_be_turned_off() {
    let upstream = TestUpstream::start("app").await;
    let routes = format!(
        "{}[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        upstream_table("app", &[(upstream.addr, 1)], "")
    );
    // Not set: 127.0.0.1:9901, or (when another gateway of this test run holds that port) a
    // warning and no admin API, never a failed start.
    let default = GatewayProcess::start(&format!("{SERVER}{routes}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stderr = default.stderr();
        if stderr.contains("admin API on http://127.0.0.1:9901")
            || stderr.contains("no admin API: cannot listen on 127.0.0.1:9901")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(HttpClient::http1().get(&default.url("/")).await.status, 200);

    let off = GatewayProcess::start(&format!("{SERVER}admin = \"off\"\n{routes}"));
    assert_eq!(HttpClient::http1().get(&off.url("/")).await.status, 200);
    assert!(!off.stderr().contains("admin API"), "{}", off.stderr());
}
