//! `wasmgate check`, `run` with a bad config, `demo`, and SIGTERM drain.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn check_reports_every_error_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "127.0.0.1:0"

[upstreams.users]
targets = [{ addr = "127.0.0.1:9001" }]
balance = "fastest"

[[routes]]
path = "/users/{*rest}"
upstream = "people"
rewrite = "/{tail}"
"#,
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:6:11: upstreams.users: unknown balance `fastest`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:10:12: route #1: unknown upstream `people`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:11:11: route #1: rewrite `/{{tail}}` uses `{{tail}}`"
        )),
        "{stderr}"
    );
}

#[test]
fn check_reports_unknown_keys_and_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_conections = 5\n",
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "{}:3:1: server.max_conections: unknown field `max_conections`",
            path.display()
        )),
        "{stderr}"
    );

    std::fs::write(&path, "[server\nlisten = 1\n").unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!("{}:1:", path.display())),
        "{stderr}"
    );
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    let config = format!(
        "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"a\"\n",
        upstream_table("a", &[("127.0.0.1:9".parse().unwrap(), 1)], "")
    );
    std::fs::write(&path, config).unwrap();
    let (ok, stdout, stderr) = gateway::check(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (1 routes, 1 upstreams)"), "{stdout}");
}

#[test]
fn run_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let output = Command::new(gateway::BINARY)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":2:10: server.listen: `nowhere` is not an `ip:port` address"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_its_routes() {
    let mut child = Command::new(gateway::BINARY)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env(gateway::PLUGIN_CACHE_ENV, gateway::plugin_cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first.trim().rsplit("http://").next().unwrap().to_owned();
    let client = HttpClient::http1();
    let reply = client.get(&format!("http://{addr}/echo/hello?x=1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["uri"], "/hello?x=1");
    let canary = client
        .send(
            http::Method::GET,
            &format!("http://{addr}/users/1"),
            &[("x-canary", "1")],
            "",
        )
        .await;
    assert_eq!(canary.json()["upstream"], "users-v2");
    assert_eq!(
        client.get(&format!("http://{addr}/nowhere")).await.status,
        404
    );
    // The demo's WebAssembly plugin (examples/first-plugin).
    let hello = client.get(&format!("http://{addr}/hello/there")).await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.headers["x-hello"], "world");
    assert_eq!(hello.json()["uri"], "/there");
    let blocked = client
        .send(
            http::Method::GET,
            &format!("http://{addr}/hello/there"),
            &[("x-block", "1")],
            "",
        )
        .await;
    assert_eq!(blocked.status, 403);
    // The first-party plugins: jwt on /secure/ with the token the demo prints, and headers.
    let denied = client.get(&format!("http://{addr}/secure/me")).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.headers["www-authenticate"], "Bearer");
    let token = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no TOKEN= line");
        if let Some(token) = line.trim().strip_prefix("TOKEN=") {
            break token.to_owned();
        }
    };
    let authorization = format!("Bearer {token}");
    let secure = client
        .send(
            http::Method::GET,
            &format!("http://{addr}/secure/me"),
            &[("authorization", &authorization)],
            "",
        )
        .await;
    assert_eq!(secure.status, 200, "{}", secure.text());
    assert_eq!(secure.json()["headers"]["x-user-id"], "demo-user");
    assert_eq!(secure.headers["x-user"], "demo-user");
    let rewritten = client
        .send(
            http::Method::GET,
            &format!("http://{addr}/headers/hi"),
            &[("x-debug", "1")],
            "",
        )
        .await;
    assert_eq!(rewritten.status, 200);
    let seen = rewritten.json();
    assert!(seen["headers"].get("x-debug").is_none());
    assert_eq!(seen["headers"]["x-original"], "GET /headers/hi");
    assert_eq!(rewritten.headers["cache-control"], "no-store");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let upstream = TestUpstream::start("slow").await;
    upstream.set(Behaviour::Delay(Duration::from_millis(1500)));
    let config = format!(
        "{SERVER}{}[[routes]]\npath = \"/{{*rest}}\"\nupstream = \"slow\"\n",
        upstream_table("slow", &[(upstream.addr, 1)], "")
    );
    let mut gateway = GatewayProcess::start(&config);
    let client = HttpClient::http1();
    let url = gateway.url("/slow");
    let in_flight = tokio::spawn(async move { client.get(&url).await });
    // Let the request reach the upstream, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted while the old request finishes.
    assert!(
        tokio::net::TcpStream::connect(gateway.addr).await.is_err(),
        "listener still open during drain"
    );
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request finished");
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after draining");
    assert!(status.success(), "{status}");
    assert!(gateway.stderr().contains("drained"), "{}", gateway.stderr());
}

#[test]
fn the_example_config_checks_clean() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway.toml");
    let (ok, stdout, stderr) = gateway::check(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (4 routes, 4 upstreams)"), "{stdout}");
}
