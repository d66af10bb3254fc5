//! `GET /metrics` after a known sequence of requests: every metric family appears, with the
//! counts that sequence must produce.

use std::time::{Duration, Instant};

use http::Method;

use crate::support::*;

/// Scrapes until every `(series, value)` holds (requests are counted when their response body
/// ends, a moment after the client has it), or fails with the last scrape.
async fn wait_for(gateway: &GatewayProcess, expected: &[(&str, f64)]) -> String {
    let client = HttpClient::http1();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = client
            .send(Method::GET, &gateway.admin_url("/metrics"), &[], "")
            .await;
        assert_eq!(reply.status, 200);
        let text = reply.text();
        let missing: Vec<String> = expected
            .iter()
            .filter(|(series, want)| series_value(&text, series) != Some(*want))
            .map(|(series, want)| {
                format!("{series} = {want} (is {:?})", series_value(&text, series))
            })
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "not as expected:\n  {}\nscrape:\n{text}",
            missing.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_family_counts_a_known_sequence() {
    let app = TestUpstream::start("app").await;
    let broken_a = TestUpstream::start("broken-a").await;
    let broken_b = TestUpstream::start("broken-b").await;
    broken_a.set(Behaviour::Status(503));
    broken_b.set(Behaviour::Status(503));
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}{}\
         [plugins.t]\npath = \"{plugin}\"\ntime_limit = \"20ms\"\n\
         [plugins.m]\npath = \"{plugin}\"\ntime_limit = \"2s\"\nmemory_limit = \"32MiB\"\n\
         [[routes]]\nname = \"plain\"\npath = \"/plain/{{*rest}}\"\nupstream = \"app\"\n\
         [[routes]]\nname = \"limited\"\npath = \"/limited\"\nupstream = \"app\"\n\
         rate_limit = {{ rate = \"1/m\", burst = 1, key = \"route\" }}\n\
         [[routes]]\nname = \"plugged\"\npath = \"/plugged\"\nupstream = \"app\"\n\
         plugins = [{{ use = \"t\", config = {{ mode = \"tag\", name = \"one\" }} }}]\n\
         [[routes]]\nname = \"trap\"\npath = \"/trap\"\nupstream = \"app\"\n\
         plugins = [{{ use = \"t\", config = {{ mode = \"trap\" }} }}]\n\
         [[routes]]\nname = \"loop\"\npath = \"/loop\"\nupstream = \"app\"\n\
         plugins = [{{ use = \"t\", config = {{ mode = \"loop\" }} }}]\n\
         [[routes]]\nname = \"memory\"\npath = \"/memory\"\nupstream = \"app\"\n\
         plugins = [{{ use = \"m\", config = {{ mode = \"memory\" }} }}]\n\
         [[routes]]\nname = \"broken\"\npath = \"/broken\"\nupstream = \"broken\"\n",
        upstream_table("app", &[(app.addr, 1)], ""),
        // Both targets answer 503: the first try ejects one, the retry goes to the other,
        // which stays (it is the last one available).
        upstream_table(
            "broken",
            &[(broken_a.addr, 1), (broken_b.addr, 1)],
            "retry = { attempts = 1, on = [\"503\"], budget = 1.0 }\n\
             outlier = { consecutive_failures = 1, eject = \"30s\" }",
        ),
        plugin = wasm("test_plugins"),
    );
    let gateway = GatewayProcess::start(&config);
    let client = HttpClient::http1();
    let send = |method: Method, path: &'static str| {
        let (client, url) = (client.clone(), gateway.url(path));
        async move { client.send(method, &url, &[], "").await.status }
    };

    for _ in 0..3 {
        assert_eq!(send(Method::GET, "/plain/a").await, 200);
    }
    assert_eq!(send(Method::POST, "/plain/b").await, 200);
    assert_eq!(send(Method::GET, "/nowhere").await, 404);
    assert_eq!(send(Method::GET, "/limited").await, 200);
    assert_eq!(send(Method::GET, "/limited").await, 429);
    assert_eq!(send(Method::GET, "/plugged").await, 200);
    assert_eq!(send(Method::GET, "/plugged").await, 200);
    assert_eq!(send(Method::GET, "/trap").await, 500);
    assert_eq!(send(Method::GET, "/loop").await, 500);
    assert_eq!(send(Method::GET, "/memory").await, 500);
    assert_eq!(send(Method::GET, "/broken").await, 503);

    let (a, b) = (broken_a.addr.to_string(), broken_b.addr.to_string());
    let ejected_a =
        format!("wasmgate_upstream_ejections_total{{upstream=\"broken\",target=\"{a}\"}}");
    let ejected_b =
        format!("wasmgate_upstream_ejections_total{{upstream=\"broken\",target=\"{b}\"}}");
    let healthy_app = format!(
        "wasmgate_upstream_target_healthy{{upstream=\"app\",target=\"{}\"}}",
        app.addr
    );
    let text = wait_for(
        &gateway,
        &[
            (
                "wasmgate_requests_total{route=\"plain\",method=\"GET\",status=\"2xx\"}",
                3.0,
            ),
            (
                "wasmgate_requests_total{route=\"plain\",method=\"POST\",status=\"2xx\"}",
                1.0,
            ),
            (
                "wasmgate_requests_total{route=\"\",method=\"GET\",status=\"4xx\"}",
                1.0,
            ),
            (
                "wasmgate_requests_total{route=\"limited\",method=\"GET\",status=\"2xx\"}",
                1.0,
            ),
            (
                "wasmgate_requests_total{route=\"limited\",method=\"GET\",status=\"4xx\"}",
                1.0,
            ),
            (
                "wasmgate_requests_total{route=\"trap\",method=\"GET\",status=\"5xx\"}",
                1.0,
            ),
            (
                "wasmgate_requests_total{route=\"broken\",method=\"GET\",status=\"5xx\"}",
                1.0,
            ),
            (
                "wasmgate_request_duration_seconds_count{route=\"plain\"}",
                4.0,
            ),
            ("wasmgate_request_duration_seconds_count{route=\"\"}", 1.0),
            ("wasmgate_rate_limited_total{route=\"limited\"}", 1.0),
            ("wasmgate_rate_limited_total{route=\"plain\"}", 0.0),
            // plain 4, limited 1, plugged 2: the plugin routes that failed never got there.
            (
                "wasmgate_upstream_response_seconds_count{upstream=\"app\"}",
                7.0,
            ),
            (
                "wasmgate_upstream_response_seconds_count{upstream=\"broken\"}",
                2.0,
            ),
            ("wasmgate_upstream_retries_total{upstream=\"broken\"}", 1.0),
            ("wasmgate_upstream_retries_total{upstream=\"app\"}", 0.0),
            // One of the two was ejected, the other not.
            (&healthy_app, 1.0),
            (
                "wasmgate_plugin_calls_total{plugin=\"t\",phase=\"on_request\"}",
                4.0,
            ),
            (
                "wasmgate_plugin_calls_total{plugin=\"t\",phase=\"on_response\"}",
                2.0,
            ),
            (
                "wasmgate_plugin_call_duration_seconds_count{plugin=\"t\",phase=\"on_request\"}",
                4.0,
            ),
            (
                "wasmgate_plugin_errors_total{plugin=\"t\",kind=\"trap\"}",
                1.0,
            ),
            (
                "wasmgate_plugin_errors_total{plugin=\"t\",kind=\"time_limit\"}",
                1.0,
            ),
            (
                // Its own plugin entry with a generous time limit: filling 32 MiB on a busy
                // machine must not run into the time limit first.
                "wasmgate_plugin_errors_total{plugin=\"m\",kind=\"memory_limit\"}",
                1.0,
            ),
            ("wasmgate_reloads_total{result=\"applied\"}", 0.0),
            ("wasmgate_reloads_total{result=\"failed\"}", 0.0),
        ],
    )
    .await;
    let ejections = series_value(&text, &ejected_a).unwrap_or(0.0)
        + series_value(&text, &ejected_b).unwrap_or(0.0);
    assert_eq!(ejections, 1.0, "{text}");
    let ejected_now: f64 = [&a, &b]
        .iter()
        .map(|target| {
            series_value(
                &text,
                &format!(
                    "wasmgate_upstream_target_ejected{{upstream=\"broken\",target=\"{target}\"}}"
                ),
            )
            .expect("a gauge for every target")
        })
        .sum();
    assert_eq!(ejected_now, 1.0, "{text}");
    // Latency buckets are cumulative: the +Inf bucket holds every request.
    assert_eq!(
        series_value(
            &text,
            "wasmgate_request_duration_seconds_bucket{le=\"+Inf\",route=\"plain\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert!(
        series_value(
            &text,
            "wasmgate_request_duration_seconds_sum{route=\"plain\"}"
        )
        .unwrap()
            > 0.0,
        "{text}"
    );
    // The test's client still holds its keep-alive connection(s).
    assert!(series_value(&text, "wasmgate_connections_total{listener=\"http\"}").unwrap() >= 1.0);
    assert!(series_value(&text, "wasmgate_open_connections{listener=\"http\"}").unwrap() >= 1.0);

    // A failed reload is counted, and the open-connection gauge falls when clients leave.
    gateway.replace_file("gateway.toml", b"[server\n");
    drop(client);
    wait_for(
        &gateway,
        &[
            ("wasmgate_reloads_total{result=\"failed\"}", 1.0),
            ("wasmgate_open_connections{listener=\"http\"}", 0.0),
        ],
    )
    .await;
}
