//! The response phase through the SDK harness: messages back to JSON, gRPC status (trailers or
//! trailers-only headers) to HTTP status and a JSON error body, server streams as an array or
//! NDJSON, and what the client never sees (grpc-* headers and trailers).

mod support;

use support::*;
use wasmgate_sdk::serde_json::{Value, json};
use wasmgate_sdk::testing::{TestRequest, TestResponse};

/// Sends `request` through the request phase, then answers it with `response(request)`
/// through the response phase.
fn exchange(
    plugin_extra: Value,
    mut request: TestRequest,
    response: impl FnOnce(&TestRequest) -> TestResponse,
) -> TestResponse {
    let mut plugin = plugin_with(plugin_extra);
    forward(&mut plugin, &mut request);
    let mut response = response(&request);
    plugin.on_response(&mut response);
    response
}

fn product() -> Value {
    json!({
        "id": "9007199254740993",
        "shelf": "kitchen",
        "displayName": "Mug",
        "color": "COLOR_BLUE",
        "createdAt": "2026-01-02T03:04:05Z",
        "shelfLife": "1.500s",
        "size": { "widthMm": 80 },
        "tags": ["a"],
        "stock": "3",
    })
}

fn assert_no_grpc_leftovers(response: &TestResponse) {
    for name in response.headers.names() {
        assert!(
            !name.starts_with("grpc-"),
            "header {name} reached the client"
        );
    }
    for name in response.trailers.names() {
        assert!(
            !name.starts_with("grpc-"),
            "trailer {name} reached the client"
        );
    }
}

#[test]
fn unary_reply_becomes_proto3_json() {
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/kitchen/products/1"),
        |r| grpc_response(r, grpc_frame("shop.v1.Product", product()), 0, ""),
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_str("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        body_json(&response),
        product(),
        "camelCase names, int64 as strings, enums by name"
    );
    assert_no_grpc_leftovers(&response);
}

#[test]
fn json_options_proto_names_and_defaults() {
    let response = exchange(
        json!({ "use_proto_names": true, "emit_defaults": true }),
        TestRequest::get("/v1/shelves/kitchen/products/1"),
        |r| {
            grpc_response(
                r,
                grpc_frame("shop.v1.Product", json!({ "displayName": "Mug" })),
                0,
                "",
            )
        },
    );
    let body = body_json(&response);
    assert_eq!(body["display_name"], "Mug");
    assert_eq!(body["in_stock"], false);
    assert_eq!(body["tags"], json!([]));
    assert_eq!(body["id"], "0");
}

#[test]
fn response_body_answers_with_one_field() {
    let response = exchange(json!({}), TestRequest::get("/v1/names/1"), |r| {
        grpc_response(
            r,
            grpc_frame("shop.v1.Product", json!({ "name": "Mug" })),
            0,
            "",
        )
    });
    assert_eq!(response.status, 200);
    assert_eq!(response.body.as_deref(), Some(&b"\"Mug\""[..]));
}

#[test]
fn every_status_maps_to_its_http_status_with_a_json_error() {
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
        let response = exchange(
            json!({}),
            TestRequest::get("/v1/shelves/s/products/1"),
            |r| grpc_response(r, Vec::new(), code, "product%201%20is%20100%25%20gone"),
        );
        assert_eq!(response.status, http, "{name}");
        assert_eq!(
            body_json(&response),
            json!({ "code": code, "status": name, "message": "product 1 is 100% gone", "details": [] })
        );
        assert_eq!(
            response.header_str("content-type").as_deref(),
            Some("application/json")
        );
        assert_no_grpc_leftovers(&response);
    }
}

#[test]
fn trailers_only_responses_carry_the_status_in_headers() {
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/s/products/1"),
        |r| {
            TestResponse::answering(r, 200)
                .with_header("content-type", "application/grpc")
                .with_header("grpc-status", "5")
                .with_header("grpc-message", "no such product")
                .with_body(Vec::new())
        },
    );
    assert_eq!(response.status, 404);
    assert_eq!(body_json(&response)["message"], "no such product");
    assert_no_grpc_leftovers(&response);
}

#[test]
fn status_details_are_decoded_when_the_type_is_known() {
    use base64::Engine;
    use prost::Message;
    let size = grpc_frame("shop.v1.Size", json!({ "widthMm": 7 }))[5..].to_vec();
    let status = grpc_transcode::response::RpcStatus {
        code: 3,
        message: "bad".into(),
        details: vec![
            prost_types::Any {
                type_url: "type.googleapis.com/shop.v1.Size".into(),
                value: size,
            },
            prost_types::Any {
                type_url: "type.googleapis.com/x.Nope".into(),
                value: vec![1, 2],
            },
        ],
    };
    let details = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/s/products/1"),
        |r| {
            let mut response = grpc_response(r, Vec::new(), 3, "bad");
            response
                .trailers
                .set("grpc-status-details-bin", details.as_bytes())
                .unwrap();
            response
        },
    );
    assert_eq!(response.status, 400);
    assert_eq!(
        body_json(&response)["details"],
        json!([
            { "@type": "type.googleapis.com/shop.v1.Size", "widthMm": 7 },
            { "@type": "type.googleapis.com/x.Nope", "value": "AQI=" },
        ])
    );
    assert_no_grpc_leftovers(&response);
}

fn stream_of_two(request: &TestRequest) -> TestResponse {
    let mut body = grpc_frame("shop.v1.Product", json!({ "id": "1", "tags": ["x"] }));
    body.extend(grpc_frame("shop.v1.Product", json!({ "id": "2" })));
    grpc_response(request, body, 0, "")
}

#[test]
fn server_streams_become_a_json_array() {
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/products:search"),
        stream_of_two,
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_str("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        body_json(&response),
        json!([{ "id": "1", "tags": ["x"] }, { "id": "2" }])
    );

    let empty = exchange(json!({}), TestRequest::get("/v1/products:search"), |r| {
        grpc_response(r, Vec::new(), 0, "")
    });
    assert_eq!(body_json(&empty), json!([]));
}

#[test]
fn server_streams_become_ndjson_when_asked() {
    let request =
        TestRequest::get("/v1/products:search").with_header("accept", "application/x-ndjson");
    let response = exchange(json!({}), request, stream_of_two);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_str("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(
        String::from_utf8(response.body.unwrap()).unwrap(),
        "{\"id\":\"1\",\"tags\":[\"x\"]}\n{\"id\":\"2\"}\n"
    );
}

#[test]
fn a_stream_that_ends_in_an_error_answers_with_the_error() {
    let response = exchange(json!({}), TestRequest::get("/v1/products:search"), |r| {
        let mut response = stream_of_two(r);
        response.trailers.set("grpc-status", b"14").unwrap();
        response
            .trailers
            .set("grpc-message", b"shard down")
            .unwrap();
        response
    });
    assert_eq!(response.status, 503);
    assert_eq!(body_json(&response)["message"], "shard down");
}

#[test]
fn answers_that_are_not_grpc_become_json_errors() {
    // No grpc-status at all on a 200: the upstream is not speaking gRPC.
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/s/products/1"),
        |r| TestResponse::answering(r, 200).with_body(b"hello"),
    );
    assert_eq!(response.status, 502);
    assert_eq!(body_json(&response)["status"], "INTERNAL");

    // An HTTP error from something in between keeps its status; the code follows the gRPC spec.
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/s/products/1"),
        |r| TestResponse::answering(r, 503).with_body(b"busy"),
    );
    assert_eq!(response.status, 503);
    assert_eq!(body_json(&response)["status"], "UNAVAILABLE");

    // Frames that do not decode as the method's output type.
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/s/products/1"),
        |r| grpc_response(r, frame(&[0xff, 0xff, 0xff]), 0, ""),
    );
    assert_eq!(response.status, 502);
    assert!(
        body_json(&response)["message"]
            .as_str()
            .unwrap()
            .contains("does not decode")
    );

    // A unary method with two messages.
    let response = exchange(
        json!({}),
        TestRequest::get("/v1/shelves/s/products/1"),
        |r| {
            let mut body = frame(&[]);
            body.extend(frame(&[]));
            grpc_response(r, body, 0, "")
        },
    );
    assert_eq!(response.status, 502);
}

#[test]
fn responses_to_other_requests_are_untouched() {
    let mut plugin = plugin();
    // A pass-through request (no grpc.method context value) and a native gRPC client.
    for mut request in [
        TestRequest::get("/health"),
        TestRequest::post("/shop.v1.Shop/Ping", [0, 0, 0, 0, 0])
            .with_header("content-type", "application/grpc"),
    ] {
        forward(&mut plugin, &mut request);
        let original = grpc_response(&request, frame(&[]), 5, "native");
        let mut response = original.clone();
        plugin.on_response(&mut response);
        assert_eq!(response, original);
    }
}

#[test]
fn direct_answers_of_the_plugin_are_untouched() {
    // The 400 for bad JSON goes through the response phase too; it must stay as it is.
    let mut plugin = plugin();
    let mut request = TestRequest::post("/v1/shelves/s/products", "nope");
    let (status, _) = refuse(&mut plugin, &mut request);
    assert_eq!(status, 400);
    let original = TestResponse::answering(&request, 400)
        .with_header("content-type", "application/json")
        .with_body(b"{}");
    let mut response = original.clone();
    plugin.on_response(&mut response);
    assert_eq!(response, original);
}
