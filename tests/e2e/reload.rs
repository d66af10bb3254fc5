//! Hot reload through the real binary: configs and plugin modules changed on disk or by
//! `POST /reload` while requests flow, with nothing lost and nothing mixed.
//!
//! Two "versions" of a plugin module are test_plugins.wasm as built, and the same file with
//! its `plugin-version-1` marker bytes replaced by `plugin-version-2` (same length, so the
//! module stays valid). In `version` mode the plugin stamps the marker and its config's name on
//! the request (the upstream echoes it) and on the response, so every response says which
//! config, module and upstream served it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;

use crate::support::client::Reply;
use crate::support::*;

fn module(version: u8) -> Vec<u8> {
    let path = format!("{}/test_plugins.wasm", env!("WASMGATE_PLUGIN_DIR"));
    let mut bytes = std::fs::read(path).unwrap();
    let marker = b"plugin-version-1";
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker)
        .expect("test_plugins.wasm carries its version marker");
    bytes[at + marker.len() - 1] = b'0' + version;
    bytes
}

/// Config `name` (A or B): every request to `upstream` through the version plugin loaded
/// from `module_file`.
fn config(name: &str, upstream: &TestUpstream, module_file: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{}\n\
         [plugins.version]\npath = \"{module_file}\"\n\n\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n\
         plugins = [{{ use = \"version\", config = {{ mode = \"version\", name = \"{name}\"{extra} }} }}]\n",
        upstream_table("app", &[(upstream.addr, 1)], ""),
    )
}

/// Who served a response: (config name, module version, upstream), checked to agree between
/// what the upstream saw and what the client got.
fn served_by(reply: &Reply) -> Result<(String, String, String), String> {
    let echo = reply.json();
    let seen = |name: &str| echo["headers"][name].as_str().unwrap_or("?").to_owned();
    let got = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned()
    };
    let request_side = (seen("x-config-name"), seen("x-module-version"));
    let response_side = (got("x-config-name"), got("x-module-version"));
    if request_side != response_side {
        return Err(format!(
            "request saw {request_side:?}, response {response_side:?}"
        ));
    }
    let upstream = echo["upstream"].as_str().unwrap_or("?").to_owned();
    Ok((request_side.0, request_side.1, upstream))
}

fn start(dir: tempfile::TempDir, config: &str) -> GatewayProcess {
    GatewayProcess::start_in(dir, config)
}

fn dir_with_modules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v1.wasm"), module(1)).unwrap();
    std::fs::write(dir.path().join("v2.wasm"), module(2)).unwrap();
    dir
}

async fn reload(client: &HttpClient, gateway: &GatewayProcess) -> Reply {
    client
        .send(Method::POST, &gateway.admin_url("/reload"), &[], "")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_lose_nothing_and_never_mix() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let config_a = config("A", &a, "v1.wasm", "");
    let config_b = config("B", &b, "v2.wasm", "");
    let gateway = Arc::new(start(dir_with_modules(), &config_a));
    let expected = |served: &(String, String, String)| {
        matches!(
            (served.0.as_str(), served.1.as_str(), served.2.as_str()),
            ("A", "plugin-version-1", "a") | ("B", "plugin-version-2", "b")
        )
    };

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (gateway, stop, served) = (gateway.clone(), stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let client = HttpClient::http1();
            let mut problems = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .try_send(Method::GET, &gateway.url("/load"), &[], "")
                    .await
                {
                    Ok(reply) if reply.status == 200 => match served_by(&reply) {
                        Ok(by) if expected(&by) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(by) => problems.push(format!("mixed snapshot: {by:?}")),
                        Err(mix) => problems.push(mix),
                    },
                    Ok(reply) => problems.push(format!("{}: {}", reply.status, reply.text())),
                    Err(err) => problems.push(format!("request failed: {err:?}")),
                }
            }
            problems
        }));
    }

    let admin = HttpClient::http1();
    for round in 0..50 {
        let next = if round % 2 == 0 { &config_b } else { &config_a };
        gateway.replace_file("gateway.toml", next.as_bytes());
        let reply = reload(&admin, &gateway).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut problems = Vec::new();
    for client in clients {
        problems.extend(client.await.unwrap());
    }
    let served = served.load(Ordering::Relaxed);
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}\n{}",
        problems.len(),
        &problems[..problems.len().min(5)],
        gateway
            .stderr()
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(served >= 1000, "only {served} requests under load");
    assert!(a.hits() > 0 && b.hits() > 0);

    let status = admin
        .send(Method::GET, &gateway.admin_url("/config"), &[], "")
        .await
        .json();
    assert!(
        status["reloads"]["applied"].as_u64().unwrap() >= 50,
        "{status}"
    );
    assert_eq!(status["reloads"]["failed"], 0, "{status}");
    assert_eq!(status["hash"].as_str().unwrap().len(), 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_finishes_on_the_snapshot_it_started_with() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.set(Behaviour::Delay(Duration::from_millis(1500)));
    let gateway = Arc::new(start(dir_with_modules(), &config("A", &a, "v1.wasm", "")));
    let slow = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            HttpClient::http1()
                .send(Method::GET, &gateway.url("/slow"), &[], "")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.replace_file("gateway.toml", config("B", &b, "v2.wasm", "").as_bytes());
    let client = HttpClient::http1();
    assert_eq!(reload(&client, &gateway).await.status, 200);
    let fresh = client
        .send(Method::GET, &gateway.url("/new"), &[], "")
        .await;
    assert_eq!(
        served_by(&fresh).unwrap(),
        ("B".into(), "plugin-version-2".into(), "b".into())
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(
        served_by(&slow).unwrap(),
        ("A".into(), "plugin-version-1".into(), "a".into()),
        "the old config and the old plugin version, in both phases"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_replaced_on_disk_takes_effect_by_itself() {
    let a = TestUpstream::start("a").await;
    let dir = dir_with_modules();
    std::fs::write(dir.path().join("plugin.wasm"), module(1)).unwrap();
    let gateway = start(dir, &config("A", &a, "plugin.wasm", ""));
    let client = HttpClient::http1();
    let version = |reply: &Reply| served_by(reply).unwrap().1;
    let first = client.send(Method::GET, &gateway.url("/"), &[], "").await;
    assert_eq!(version(&first), "plugin-version-1");

    // No signal, no admin call: the watcher sees the editor-style replace.
    let swapped = Instant::now();
    gateway.replace_file("plugin.wasm", &module(2));
    loop {
        let reply = client.send(Method::GET, &gateway.url("/"), &[], "").await;
        assert_eq!(reply.status, 200);
        if version(&reply) == "plugin-version-2" {
            break;
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(5),
            "the new module never served:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Within a second in a release build; a debug build compiles the module more slowly.
    eprintln!("new module serving {:?} after the swap", swapped.elapsed());
    let status = client
        .send(Method::GET, &gateway.admin_url("/config"), &[], "")
        .await
        .json();
    assert_eq!(status["last_attempt"]["trigger"], "file_change", "{status}");
    assert_eq!(status["last_attempt"]["result"], "applied", "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_reload_changes_nothing_and_says_why() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let dir = dir_with_modules();
    std::fs::write(dir.path().join("plugin.wasm"), module(1)).unwrap();
    let good = config("A", &a, "plugin.wasm", "");
    let gateway = start(dir, &good);
    let client = HttpClient::http1();
    let still_serving_a = || async {
        let reply = client.send(Method::GET, &gateway.url("/"), &[], "").await;
        assert_eq!(
            served_by(&reply).unwrap(),
            ("A".into(), "plugin-version-1".into(), "a".into())
        );
    };
    let hash = client
        .send(Method::GET, &gateway.admin_url("/config"), &[], "")
        .await
        .json()["hash"]
        .clone();

    // 1. A config that does not parse: the error has file:line:col.
    let broken = config("B", &b, "plugin.wasm", "").replace("upstream = \"app\"", "upstream = ");
    gateway.replace_file("gateway.toml", broken.as_bytes());
    let reply = reload(&client, &gateway).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let errors = reply.json()["errors"].to_string();
    assert!(errors.contains("gateway.toml:"), "{errors}");
    still_serving_a().await;

    // 2. A module that is not WebAssembly.
    gateway.replace_file("gateway.toml", good.as_bytes());
    gateway.replace_file("plugin.wasm", b"not a module");
    let reply = reload(&client, &gateway).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let errors = reply.json()["errors"].to_string();
    assert!(errors.contains("plugin.wasm"), "{errors}");
    still_serving_a().await;

    // 3. A plugin that rejects its new config.
    gateway.replace_file("plugin.wasm", &module(1));
    let rejected = config("B", &b, "plugin.wasm", ", reject = true");
    gateway.replace_file("gateway.toml", rejected.as_bytes());
    let reply = reload(&client, &gateway).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let errors = reply.json()["errors"].to_string();
    assert!(errors.contains("rejected its config"), "{errors}");
    still_serving_a().await;

    let status = client
        .send(Method::GET, &gateway.admin_url("/config"), &[], "")
        .await
        .json();
    assert_eq!(
        status["hash"], hash,
        "the active config is still the first one"
    );
    assert_eq!(status["last_attempt"]["result"], "failed");
    assert!(
        status["reloads"]["failed"].as_u64().unwrap() >= 3,
        "{status}"
    );
    let log = gateway.stderr();
    assert!(log.contains("reload failed, the old config stays"), "{log}");

    // And a good config after all that applies.
    gateway.replace_file(
        "gateway.toml",
        config("B", &b, "plugin.wasm", "").as_bytes(),
    );
    assert_eq!(reload(&client, &gateway).await.status, 200);
    let reply = client.send(Method::GET, &gateway.url("/"), &[], "").await;
    assert_eq!(served_by(&reply).unwrap().0, "B");

    // Prometheus counts them the same way as GET /config.
    let status = client
        .send(Method::GET, &gateway.admin_url("/config"), &[], "")
        .await
        .json();
    let metrics = client
        .send(Method::GET, &gateway.admin_url("/metrics"), &[], "")
        .await
        .text();
    for result in ["applied", "failed"] {
        let line = format!(
            "wasmgate_reloads_total{{result=\"{result}\"}} {}",
            status["reloads"][result]
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_upstream_keeps_its_connections_and_a_changed_one_starts_fresh() {
    let kept = TestUpstream::start("kept").await;
    let changed = TestUpstream::start("changed").await;
    let config = |changed_extra: &str, extra_route: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n{}{}\
             [[routes]]\npath = \"/kept\"\nupstream = \"kept\"\n\n\
             [[routes]]\npath = \"/changed\"\nupstream = \"changed\"\n{extra_route}",
            upstream_table("kept", &[(kept.addr, 1)], ""),
            upstream_table("changed", &[(changed.addr, 1)], changed_extra),
        )
    };
    let gateway = start(tempfile::tempdir().unwrap(), &config("", ""));
    let client = HttpClient::http1();
    let round = || async {
        for path in ["/kept", "/changed", "/kept", "/changed"] {
            let reply = client.send(Method::GET, &gateway.url(path), &[], "").await;
            assert_eq!(reply.status, 200);
        }
    };
    round().await;
    assert_eq!((kept.connections(), changed.connections()), (1, 1));

    // `kept` is written the same (the file around it changed: a new route, another
    // upstream's setting); `changed` gets a new setting.
    gateway.replace_file(
        "gateway.toml",
        config(
            "connect_timeout = \"3s\"\n",
            "\n[[routes]]\npath = \"/more\"\nupstream = \"kept\"\n",
        )
        .as_bytes(),
    );
    assert_eq!(reload(&client, &gateway).await.status, 200);
    round().await;
    assert_eq!(
        kept.connections(),
        1,
        "the unchanged upstream's pooled connection is still used"
    );
    assert_eq!(
        changed.connections(),
        2,
        "the changed upstream starts a new pool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_upstream_stops_its_health_checks() {
    let app = TestUpstream::start("app").await;
    let gone = TestUpstream::start("gone").await;
    let checked = "health_check = { path = \"/health\", interval = \"50ms\", timeout = \"100ms\" }";
    let with_gone = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}{}\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(app.addr, 1)], ""),
        upstream_table("gone", &[(gone.addr, 1)], checked),
    );
    let without = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n",
        upstream_table("app", &[(app.addr, 1)], ""),
    );
    let gateway = start(tempfile::tempdir().unwrap(), &with_gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gone.hits() >= 2, "health checks run: {}", gone.hits());

    gateway.replace_file("gateway.toml", without.as_bytes());
    let client = HttpClient::http1();
    assert_eq!(reload(&client, &gateway).await.status, 200);
    // A check already in flight may still land.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after_reload = gone.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gone.hits(),
        after_reload,
        "no more health checks for a removed upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_buckets_survive_a_reload_that_keeps_the_limit() {
    let app = TestUpstream::start("app").await;
    let config = |rate: &str, extra_route: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}\
             [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"app\"\n\
             rate_limit = {{ rate = \"{rate}\", key = \"route\" }}\n{extra_route}",
            upstream_table("app", &[(app.addr, 1)], ""),
        )
    };
    let gateway = start(tempfile::tempdir().unwrap(), &config("1/m", ""));
    let client = HttpClient::http1();
    let status = |path: &'static str| {
        let (client, gateway) = (&client, &gateway);
        async move {
            client
                .send(Method::GET, &gateway.url(path), &[], "")
                .await
                .status
        }
    };
    assert_eq!(status("/a").await, 200);
    assert_eq!(status("/a").await, 429);

    // Another route added; this route's limit as it was: still empty.
    let more = "\n[[routes]]\npath = \"/other\"\nupstream = \"app\"\n";
    gateway.replace_file("gateway.toml", config("1/m", more).as_bytes());
    assert_eq!(reload(&client, &gateway).await.status, 200);
    assert_eq!(status("/a").await, 429, "the bucket survived the reload");

    // A new rate is a new limit, with a full bucket.
    gateway.replace_file("gateway.toml", config("2/m", more).as_bytes());
    assert_eq!(reload(&client, &gateway).await.status, 200);
    assert_eq!(status("/a").await, 200);
}
