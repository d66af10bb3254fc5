//! The grpc-transcode plugin through the real gateway, in front of the real demo.v1.Items
//! tonic server (demo-grpc) over h2c: unary calls through annotations and the fallback path,
//! path, query and body binding, every gRPC status mapped to HTTP, a server stream as a JSON
//! array and as NDJSON, bad JSON that never reaches the upstream, HTTP/1.1 and HTTP/2 clients,
//! and a descriptor set swapped on disk and picked up by SIGHUP.

use std::time::{Duration, Instant};

use grpc_demo::DemoItems;
use http::Method;
use prost::Message;
use serde_json::{Value, json};

use crate::support::client::Reply;
use crate::support::*;

/// The demo service on a loopback port; the returned handle counts the calls it answers.
async fn start_grpc() -> (DemoItems, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let items = DemoItems::new();
    tokio::spawn(items.clone().serve(listener));
    (items, addr)
}

/// A gateway whose only route runs grpc-transcode (descriptors from `api.pb`) in front of the
/// gRPC server.
fn start_gateway(grpc: std::net::SocketAddr, descriptors: &[u8]) -> GatewayProcess {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.pb"), descriptors).unwrap();
    let config = format!(
        "{SERVER}{}\n[plugins.grpc]\npath = \"{}/grpc_transcode.wasm\"\n\n\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"grpc\"\n\
         plugins = [{{ use = \"grpc\", config = {{ descriptors = \"@base64file:api.pb\", services = [\"demo.v1.Items\"] }} }}]\n",
        upstream_table("grpc", &[(grpc, 1)], "protocol = \"h2c\""),
        env!("WASMGATE_PLUGIN_DIR"),
    );
    GatewayProcess::start_in(dir, &config)
}

async fn setup() -> (DemoItems, GatewayProcess) {
    let (items, addr) = start_grpc().await;
    (items, start_gateway(addr, grpc_demo::DESCRIPTORS))
}

fn assert_json_reply(reply: &Reply) {
    assert_eq!(
        reply.headers["content-type"],
        "application/json",
        "{}",
        reply.text()
    );
    for name in reply.headers.keys() {
        assert!(
            !name.as_str().starts_with("grpc-"),
            "{name} reached the client"
        );
    }
}

async fn post_json(client: &HttpClient, url: &str, body: Value) -> Reply {
    client
        .send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn unary_calls_through_annotations_and_the_fallback_path_over_http1_and_h2() {
    let (items, gateway) = setup().await;
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let reply = client.get(&gateway.url("/v1/items/1")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_json_reply(&reply);
        assert_eq!(
            reply.json(),
            json!({
                "id": "1",
                "name": "Hammer",
                "kind": "KIND_TOOL",
                "createdAt": "2026-01-02T12:00:00Z",
                "dimensions": { "widthMm": 100, "heightMm": 30 },
                "tags": ["steel"],
                "priceCents": "1999",
                "warranty": "31536000s",
            })
        );

        let reply = post_json(
            &client,
            &gateway.url("/demo.v1.Items/GetItem"),
            json!({ "id": 2 }),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["name"], "Rust in Action");

        // A method without annotations is reachable through the fallback path only.
        let reply = post_json(&client, &gateway.url("/demo.v1.Items/Count"), json!({})).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json(), json!({ "items": "3" }));
    }
    assert_eq!(items.calls(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_query_and_body_binding() {
    let (_items, gateway) = setup().await;
    let client = HttpClient::http1();

    // Query parameters: an enum by name and a nested field.
    let reply = client
        .get(&gateway.url("/v1/items?kind=KIND_TOOL&filter.name_prefix=Rust"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let listed = reply.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "Rustproof Wrench");

    // body: "*" with original and camelCase names, int64 as a string, a Duration.
    let created = post_json(
        &client,
        &gateway.url("/v1/items"),
        json!({
            "name": "Ruler",
            "kind": "KIND_TOOL",
            "dimensions": { "width_mm": 300, "heightMm": 20 },
            "tags": ["metric"],
            "price_cents": "450",
            "warranty": "86400s",
        }),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let created = created.json();
    assert_eq!(created["id"], "4");
    assert_eq!(
        created["dimensions"],
        json!({ "widthMm": 300, "heightMm": 20 })
    );
    assert_eq!(created["priceCents"], "450");
    assert_eq!(created["warranty"], "86400s");
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));

    // body: "item" with the id from the path (PATCH, and PUT through additional_bindings).
    for method in [Method::PATCH, Method::PUT] {
        let reply = client
            .send(
                method.clone(),
                &gateway.url("/v1/items/4"),
                &[],
                json!({ "name": format!("Ruler {method}"), "kind": "KIND_TOOL" }).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        assert_eq!(reply.json()["id"], "4");
        assert_eq!(reply.json()["name"], format!("Ruler {method}"));
    }
    let reply = client.get(&gateway.url("/v1/items/4")).await;
    assert_eq!(reply.json()["name"], "Ruler PUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_grpc_status_maps_to_its_http_status() {
    let (_items, gateway) = setup().await;
    let client = HttpClient::h2c();
    let expected = [
        (1, 499, "CANCELLED"),
        (2, 500, "UNKNOWN"),
        (3, 400, "INVALID_ARGUMENT"),
        (4, 504, "DEADLINE_EXCEEDED"),
        (5, 404, "NOT_FOUND"),
        (6, 409, "ALREADY_EXISTS"),
        (7, 403, "PERMISSION_DENIED"),
        (8, 429, "RESOURCE_EXHAUSTED"),
        (9, 400, "FAILED_PRECONDITION"),
        (10, 409, "ABORTED"),
        (11, 400, "OUT_OF_RANGE"),
        (12, 501, "UNIMPLEMENTED"),
        (13, 500, "INTERNAL"),
        (14, 503, "UNAVAILABLE"),
        (15, 500, "DATA_LOSS"),
        (16, 401, "UNAUTHENTICATED"),
    ];
    for (code, http, name) in expected {
        let reply = client
            .get(&gateway.url(&format!(
                "/v1/fail/{code}?message=failed%20on%20purpose:%20100%25"
            )))
            .await;
        assert_eq!(reply.status, http, "{name}: {}", reply.text());
        assert_json_reply(&reply);
        assert_eq!(
            reply.json(),
            json!({ "code": code, "status": name, "message": "failed on purpose: 100%", "details": [] })
        );
    }
    // And from a real handler: an item that does not exist.
    let reply = client.get(&gateway.url("/v1/items/99")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["message"], "item 99 does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_stream_as_a_json_array_and_as_ndjson() {
    let (_items, gateway) = setup().await;
    let client = HttpClient::http1();
    let reply = client.get(&gateway.url("/v1/items")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_json_reply(&reply);
    let ids: Vec<Value> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(ids, [json!("1"), json!("2"), json!("3")]);

    let reply = client
        .send(
            Method::GET,
            &gateway.url("/v1/items?limit=2"),
            &[("accept", "application/x-ndjson")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = reply
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["name"], "Rust in Action");

    // An error before the first message: the status, not an empty list.
    let reply = client.get(&gateway.url("/v1/items?limit=-1")).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["message"], "limit must not be negative");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_json_is_refused_without_calling_the_upstream() {
    let (items, gateway) = setup().await;
    let client = HttpClient::http1();
    let cases = [
        ("{\"name\": ", None, "the body is not valid JSON"),
        (
            "{\"name\": \"x\", \"colour\": \"red\"}",
            Some("colour"),
            "colour",
        ),
        (
            "{\"name\": \"x\", \"priceCents\": \"cheap\"}",
            Some("priceCents"),
            "priceCents",
        ),
        (
            "{\"name\": \"x\", \"kind\": \"KIND_FOOD\"}",
            Some("kind"),
            "KIND_FOOD",
        ),
        (
            "{\"name\": \"x\", \"dimensions\": {\"widthMm\": \"wide\"}}",
            Some("dimensions.widthMm"),
            "widthMm",
        ),
    ];
    for (body, field, mentioned) in cases {
        let reply = client
            .send(Method::POST, &gateway.url("/v1/items"), &[], body)
            .await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        let error = reply.json();
        assert_eq!(error["status"], "INVALID_ARGUMENT");
        assert!(
            error["message"].as_str().unwrap().contains(mentioned),
            "{body}: {error}"
        );
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{body}: {error}");
        }
    }
    let reply = client.get(&gateway.url("/v1/items/seven")).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["field"], "id");
    let reply = client.get(&gateway.url("/v1/items?colour=red")).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["field"], "colour");
    assert_eq!(items.calls(), 0, "no bad request reached the gRPC server");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swapped_descriptor_set_changes_what_is_exposed_after_sighup() {
    // First a descriptor set without the google.api.http annotations (prost's types drop
    // option extensions): only the fallback path is transcoded, and a GET passes through to
    // the gRPC server, which does not know the path.
    let bare = prost_types::FileDescriptorSet::decode(grpc_demo::DESCRIPTORS)
        .unwrap()
        .encode_to_vec();
    let (_items, addr) = start_grpc().await;
    let gateway = start_gateway(addr, &bare);
    let client = HttpClient::http1();
    let reply = post_json(
        &client,
        &gateway.url("/demo.v1.Items/GetItem"),
        json!({ "id": "1" }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let passed_through = client.get(&gateway.url("/v1/items/1")).await;
    assert_ne!(
        passed_through
            .headers
            .get("content-type")
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );

    // Swap in the annotated set and reload: GET /v1/items/1 is now an API call.
    gateway.replace_file("api.pb", grpc_demo::DESCRIPTORS);
    let pid = gateway.pid();
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.get(&gateway.url("/v1/items/1")).await;
        if reply.status == 200
            && reply
                .headers
                .get("content-type")
                .is_some_and(|v| v == "application/json")
        {
            assert_eq!(reply.json()["name"], "Hammer");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new descriptors were not picked up:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gateway.pid(), pid, "reloaded, not restarted");
}
