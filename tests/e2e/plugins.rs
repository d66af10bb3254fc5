//! WebAssembly plugins through the real gateway: the first-plugin example, chains, direct
//! answers, bodies, context values, per-route configs, and hostile plugins that may only fail
//! their own requests.

use std::time::{Duration, Instant};

use http::Method;

use crate::support::*;

/// A config with the given `[plugins.*]` tables and one route to `upstream` using `uses`.
fn config(upstream: &TestUpstream, plugins: &str, routes: &str) -> String {
    format!(
        "{SERVER}{}\n{plugins}\n{routes}",
        upstream_table("app", &[(upstream.addr, 1)], ""),
    )
}

fn test_plugin(extra: &str) -> String {
    format!(
        "[plugins.t]\npath = \"{}\"\n{extra}\n",
        wasm("test_plugins")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn first_plugin_adds_a_header_and_blocks() {
    let upstream = TestUpstream::start("app").await;
    let gateway = GatewayProcess::start(&config(
        &upstream,
        &format!("[plugins.hello]\npath = \"{}\"\n", wasm("first_plugin")),
        "[[routes]]\npath = \"/{*rest}\"\nupstream = \"app\"\nplugins = [{ use = \"hello\", config = { header = \"x-hello\", value = \"world\" } }]\n",
    ));
    let client = HttpClient::http1();
    let reply = client.get(&gateway.url("/x")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-hello"], "world");
    let blocked = client
        .send(Method::GET, &gateway.url("/x"), &[("x-block", "1")], "")
        .await;
    assert_eq!(blocked.status, 403);
    assert_eq!(
        blocked.headers["x-hello"], "world",
        "response plugins run on direct answers too"
    );
    assert_eq!(
        upstream.hits(),
        1,
        "the blocked request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_order_context_and_short_circuit() {
    let upstream = TestUpstream::start("app").await;
    let uses = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{{ use = \"t\", config = {{ mode = \"tag\", name = \"{n}\" }} }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let routes = format!(
        "[[routes]]\npath = \"/chain\"\nupstream = \"app\"\nplugins = [{}]\n\n\
         [[routes]]\npath = \"/stop\"\nupstream = \"app\"\nplugins = [{}, {{ use = \"t\", config = {{ mode = \"respond\", name = \"b\", status = 418 }} }}, {}]\n",
        uses(&["a", "b", "c"]),
        uses(&["a"]),
        uses(&["c"]),
    );
    let gateway = GatewayProcess::start(&config(&upstream, &test_plugin(""), &routes));
    let client = HttpClient::http1();

    let reply = client.get(&gateway.url("/chain")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    // Request phase in order, each plugin seeing the context the previous one set.
    assert_eq!(seen["headers"]["x-chain"], "a, b, c");
    assert_eq!(seen["headers"]["x-ctx-before-b"], "a");
    assert_eq!(seen["headers"]["x-ctx-before-c"], "b");
    // Response phase in reverse.
    let order: Vec<&str> = reply
        .headers
        .get_all("x-chain-response")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(order, ["c", "b", "a"]);
    assert_eq!(reply.headers["x-ctx-a"], "yes");
    // Context values reach the access log.
    let log = gateway.wait_access_log(1);
    assert_eq!(log[0]["ctx"]["last"], "c", "{:?}", log[0]);
    assert_eq!(log[0]["ctx"]["seen_b"], "yes");

    // A direct answer stops the chain: c and the upstream are skipped, a and b see the response.
    let hits = upstream.hits();
    let reply = client.get(&gateway.url("/stop")).await;
    assert_eq!(reply.status, 418);
    assert_eq!(reply.headers["x-answered-by"], "b");
    let order: Vec<&str> = reply
        .headers
        .get_all("x-chain-response")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(upstream.hits(), hits);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_only_for_plugins_that_declare_them() {
    let upstream = TestUpstream::start("app").await;
    let routes = "[[routes]]\npath = \"/body\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"body\" } }]\n\n\
                  [[routes]]\npath = \"/undeclared\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"body-undeclared\" } }]\n";
    let gateway = GatewayProcess::start(&config(&upstream, &test_plugin(""), routes));
    let client = HttpClient::http1();
    let reply = client
        .send(Method::POST, &gateway.url("/body"), &[], "hello body")
        .await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.ends_with("-rewritten"), "{text}");
    let seen: serde_json::Value =
        serde_json::from_str(text.trim_end_matches("-rewritten")).unwrap();
    assert_eq!(seen["body"], "HELLO BODY");
    assert_eq!(
        reply.headers["content-length"],
        text.len().to_string().as_str()
    );

    let reply = client
        .send(Method::POST, &gateway.url("/undeclared"), &[], "untouched")
        .await;
    let seen = reply.json();
    assert_eq!(seen["body"], "untouched");
    assert_eq!(seen["headers"]["x-body-seen"], "no");
    assert!(
        seen["headers"]["x-body-error"]
            .as_str()
            .unwrap()
            .contains("did not declare")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_too_large_for_a_body_plugin_is_a_clear_502() {
    let upstream = TestUpstream::start("app").await;
    let routes = "[[routes]]\npath = \"/body\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"body\" } }]\n";
    let text = config(&upstream, &test_plugin(""), routes)
        .replace("[server]\n", "[server]\nmax_body_bytes = \"1KiB\"\n");
    let gateway = GatewayProcess::start(&text);
    let client = HttpClient::http1();
    // The request fits; the upstream's echo of it (body plus headers, as JSON) does not.
    let reply = client
        .send(Method::POST, &gateway.url("/body"), &[], "x".repeat(1000))
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"], "upstream_response_too_large");
    assert_eq!(upstream.hits(), 1, "never retried");
    let small = client
        .send(Method::POST, &gateway.url("/body"), &[], "small")
        .await;
    assert_eq!(small.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_module_different_config_per_route() {
    let upstream = TestUpstream::start("app").await;
    let routes = "[[routes]]\nname = \"one\"\npath = \"/one\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"route\", name = \"first\" } }]\n\n\
                  [[routes]]\nname = \"two\"\npath = \"/two\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"route\", name = \"second\" } }]\n";
    let gateway = GatewayProcess::start(&config(&upstream, &test_plugin(""), routes));
    let client = HttpClient::http1();
    for _ in 0..3 {
        let one = client.get(&gateway.url("/one")).await.json();
        let two = client.get(&gateway.url("/two")).await.json();
        assert_eq!(one["headers"]["x-route-config"], "first");
        assert_eq!(one["headers"]["x-route-seen"], "one");
        assert_eq!(two["headers"]["x-route-config"], "second");
        assert_eq!(two["headers"]["x-route-seen"], "two");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_instances_are_reused_and_per_request_ones_are_fresh() {
    let upstream = TestUpstream::start("app").await;
    let plugins = format!(
        "{}\n[plugins.fresh]\npath = \"{}\"\nisolation = \"per-request\"\n",
        test_plugin(""),
        wasm("test_plugins")
    );
    let routes = "[[routes]]\npath = \"/pooled\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"count\" } }]\n\n\
                  [[routes]]\npath = \"/fresh\"\nupstream = \"app\"\nplugins = [{ use = \"fresh\", config = { mode = \"count\" } }]\n";
    let gateway = GatewayProcess::start(&config(&upstream, &plugins, routes));
    let client = HttpClient::http1();
    let calls = |reply: serde_json::Value| {
        reply["headers"]["x-instance-calls"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // Sequential requests reuse the one pooled instance: its count grows.
    let mut pooled = Vec::new();
    for _ in 0..4 {
        pooled.push(calls(client.get(&gateway.url("/pooled")).await.json()));
    }
    assert_eq!(pooled, vec![1, 2, 3, 4]);
    // Per-request isolation: every request meets a fresh instance, the same one in both phases.
    for _ in 0..4 {
        let reply = client.get(&gateway.url("/fresh")).await;
        assert_eq!(reply.headers["x-instance-calls-at-response"], "1");
        assert_eq!(calls(reply.json()), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_get_clocks_random_and_an_empty_environment() {
    let upstream = TestUpstream::start("app").await;
    let routes = "[[routes]]\npath = \"/std\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"std\" } }]\n";
    let gateway = GatewayProcess::start(&config(&upstream, &test_plugin(""), routes));
    let reply = HttpClient::http1().get(&gateway.url("/std")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["headers"]["x-std"],
        "map=1 wall=true mono=true env=false"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_fail_only_their_own_requests() {
    let upstream = TestUpstream::start("app").await;
    let modes = [
        "trap",
        "panic",
        "loop",
        "memory",
        "huge-header",
        "print",
        "out-of-phase",
    ];
    let mut routes = String::from(
        "[[routes]]\npath = \"/ok\"\nupstream = \"app\"\nplugins = [{ use = \"t\", config = { mode = \"tag\", name = \"ok\" } }]\n",
    );
    for mode in modes {
        routes.push_str(&format!(
            "\n[[routes]]\npath = \"/{mode}\"\nupstream = \"app\"\nplugins = [{{ use = \"t\", config = {{ mode = \"{mode}\" }} }}]\n"
        ));
    }
    routes.push_str("\n[[routes]]\npath = \"/allowed\"\nupstream = \"app\"\nplugins = [{ use = \"lenient\", config = { mode = \"trap\" } }]\n");
    let plugins = format!(
        "{}\n[plugins.lenient]\npath = \"{}\"\non_error = \"allow\"\n",
        test_plugin("time_limit = \"20ms\"\nmemory_limit = \"32MiB\""),
        wasm("test_plugins")
    );
    let gateway = GatewayProcess::start(&config(&upstream, &plugins, &routes));
    let client = HttpClient::http1();

    // Healthy traffic runs alongside the hostile requests the whole time.
    let healthy = {
        let client = client.clone();
        let url = gateway.url("/ok");
        tokio::spawn(async move {
            let mut served = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                let reply = client.get(&url).await;
                assert_eq!(
                    reply.status,
                    200,
                    "a healthy request failed: {}",
                    reply.text()
                );
                served += 1;
            }
            served
        })
    };
    for round in 0..3 {
        for mode in modes {
            let started = Instant::now();
            let reply = client.get(&gateway.url(&format!("/{mode}"))).await;
            assert_eq!(
                reply.status,
                500,
                "{mode} (round {round}): {}",
                reply.text()
            );
            assert_eq!(reply.json()["error"], "plugin_failed");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{mode} took {:?}",
                started.elapsed()
            );
        }
    }
    // on_error = "allow": the failing plugin is skipped and the request goes through.
    let reply = client.get(&gateway.url("/allowed")).await;
    assert_eq!(reply.status, 200);
    let served = healthy.await.unwrap();
    assert!(
        served > 20,
        "healthy traffic starved: {served} requests in 2s"
    );
    let stderr = gateway.stderr();
    assert!(stderr.contains("exceeded its time limit"), "{stderr}");
    assert!(stderr.contains("trapped"), "{stderr}");
    assert!(
        stderr.contains("on-response failed: `request` functions are only for `on-request`"),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_rejected_config_and_a_broken_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm not really").unwrap();
    std::fs::write(
        &path,
        format!(
            "{SERVER}\n[plugins.t]\npath = \"{}\"\n\n[plugins.broken]\npath = \"broken.wasm\"\n\n\
             [upstreams.app]\ntargets = [{{ addr = \"127.0.0.1:9\" }}]\n\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\nplugins = [{{ use = \"t\", config = {{ mode = \"tag\", reject = true }} }}]\n",
            wasm("test_plugins")
        ),
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    assert!(stderr.contains(":8:8: plugins.broken:"), "{stderr}");
    assert!(stderr.contains("not a valid plugin component"), "{stderr}");
    assert!(
        stderr.contains(":16:20: route #1: plugin `t` rejected its config"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rejected its config: this config is rejected on purpose"),
        "{stderr}"
    );
}
