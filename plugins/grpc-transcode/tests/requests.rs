//! The request phase through the SDK harness: bindings from annotations and the fallback path,
//! path and query binding, the proto3 JSON mapping, what the upstream request looks like, what
//! passes through, and the 400 answers for bad input (which never reach the upstream).

mod support;

use support::*;
use wasmgate_sdk::serde_json::json;
use wasmgate_sdk::testing::TestRequest;

fn assert_grpc_call(request: &TestRequest, grpc_path: &str) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, grpc_path);
    assert_eq!(request.query, None);
    assert_eq!(
        request.header_str("content-type").as_deref(),
        Some("application/grpc")
    );
    assert_eq!(request.header_str("te").as_deref(), Some("trailers"));
    assert_eq!(
        request.ctx.get("grpc.method").map(String::as_str),
        Some(grpc_path)
    );
}

#[test]
fn get_binds_path_variables() {
    let mut plugin = plugin();
    let mut request = TestRequest::get("/v1/shelves/top%20shelf/products/42");
    forward(&mut plugin, &mut request);
    assert_grpc_call(&request, "/shop.v1.Shop/GetProduct");
    assert_eq!(
        sent_message(&request, "shop.v1.GetProductRequest"),
        json!({ "shelf": "top shelf", "id": "42" })
    );
}

#[test]
fn query_parameters_bind_nested_repeated_enum_bool_and_well_known_fields() {
    let mut plugin = plugin();
    let mut request = TestRequest::get(
        "/v1/products:search?query=red+mug&colors=COLOR_RED&colors=COLOR_BLUE\
         &min_size.width_mm=10&minSize.heightMm=20&in_stock=true&discounted=false\
         &since=2026-01-02T03:04:05Z&limit=5",
    );
    forward(&mut plugin, &mut request);
    assert_grpc_call(&request, "/shop.v1.Shop/SearchProducts");
    assert_eq!(
        sent_message(&request, "shop.v1.SearchRequest"),
        json!({
            "query": "red mug",
            "colors": ["COLOR_RED", "COLOR_BLUE"],
            "min_size": { "width_mm": 10, "height_mm": 20 },
            "in_stock": true,
            "discounted": false,
            "since": "2026-01-02T03:04:05Z",
            "limit": 5,
        })
    );
}

#[test]
fn whole_body_takes_json_and_proto_names_and_path_variables_win() {
    let mut plugin = plugin();
    let body = json!({
        "shelf": "ignored: the path says otherwise",
        "displayName": "Mug",
        "color": "COLOR_BLUE",
        "created_at": "2026-01-02T03:04:05.500Z",
        "shelfLife": "3600s",
        "size": { "widthMm": 80, "height_mm": 95 },
        "tags": ["kitchen", "ceramic"],
        "labels": { "material": "clay" },
        "stock": "9007199254740993",
        "serial": "18446744073709551615",
        "price": 4.5,
        "madeIn": "PT",
    });
    let mut request = TestRequest::post("/v1/shelves/kitchen/products", body.to_string());
    forward(&mut plugin, &mut request);
    assert_grpc_call(&request, "/shop.v1.Shop/CreateProduct");
    assert_eq!(
        sent_message(&request, "shop.v1.Product"),
        json!({
            "shelf": "kitchen",
            "display_name": "Mug",
            "color": "COLOR_BLUE",
            "created_at": "2026-01-02T03:04:05.500Z",
            "shelf_life": "3600s",
            "size": { "width_mm": 80, "height_mm": 95 },
            "tags": ["kitchen", "ceramic"],
            "labels": { "material": "clay" },
            "stock": "9007199254740993",
            "serial": "18446744073709551615",
            "price": 4.5,
            "made_in": "PT",
        })
    );
}

#[test]
fn body_field_binding_and_additional_bindings() {
    for (method, path) in [
        ("PATCH", "/v1/products/7"),
        ("PUT", "/v1/products/7"),
        ("POST", "/v1/products/7:update"),
    ] {
        let mut plugin = plugin();
        let mut request = TestRequest::new(method, &format!("{path}?reason=restock"))
            .with_body(json!({ "displayName": "Jug", "inStock": true }).to_string());
        forward(&mut plugin, &mut request);
        assert_grpc_call(&request, "/shop.v1.Shop/UpdateProduct");
        assert_eq!(
            sent_message(&request, "shop.v1.UpdateProductRequest"),
            json!({
                "product": { "id": "7", "display_name": "Jug", "in_stock": true },
                "reason": "restock",
            }),
            "{method} {path}"
        );
    }
}

#[test]
fn double_wildcard_variables_capture_the_rest_of_the_path() {
    let mut plugin = plugin();
    let mut request = TestRequest::get("/v1/files/a/b/c.txt");
    forward(&mut plugin, &mut request);
    assert_eq!(
        sent_message(&request, "shop.v1.GetFileRequest"),
        json!({ "path": "a/b/c.txt" })
    );
}

#[test]
fn fallback_path_reaches_unannotated_and_annotated_methods() {
    let mut plugin = plugin();
    let mut request = TestRequest::post("/shop.v1.Shop/Ping", "");
    forward(&mut plugin, &mut request);
    assert_grpc_call(&request, "/shop.v1.Shop/Ping");
    assert_eq!(
        request.body.as_deref(),
        Some(&[0, 0, 0, 0, 0][..]),
        "an empty message"
    );

    let mut request = TestRequest::post("/shop.v1.Shop/GetProduct", r#"{"shelf":"s","id":"3"}"#);
    forward(&mut plugin, &mut request);
    assert_grpc_call(&request, "/shop.v1.Shop/GetProduct");
    assert_eq!(
        sent_message(&request, "shop.v1.GetProductRequest"),
        json!({ "shelf": "s", "id": "3" })
    );
}

#[test]
fn server_streams_ask_for_ndjson_through_accept() {
    let mut plugin = plugin();
    let mut request =
        TestRequest::get("/v1/products:search").with_header("accept", "application/x-ndjson");
    forward(&mut plugin, &mut request);
    assert_eq!(
        request.ctx.get("grpc.stream").map(String::as_str),
        Some("ndjson")
    );
    assert_eq!(
        request.header_str("accept"),
        None,
        "not sent to the gRPC server"
    );
}

#[test]
fn requests_outside_the_api_pass_through_untouched() {
    let mut plugin = plugin();
    for original in [
        TestRequest::get("/health"),
        TestRequest::get("/v1/shelves/a/products"), // no such template
        TestRequest::new("DELETE", "/v1/shelves/a/products/1"), // no DELETE binding
        TestRequest::get("/shop.v1.Shop/Ping"),     // the fallback is POST only
        TestRequest::post("/shop.v1.Other/Ping", "{}"), // not an exposed service
        TestRequest::post("/shop.v1.Shop/Upload", "{}"), // client streaming: not transcoded
        TestRequest::post("/v1/upload", "{}"),
        // A native gRPC client on the same route.
        TestRequest::post("/shop.v1.Shop/Ping", [0, 0, 0, 0, 0])
            .with_header("content-type", "application/grpc+proto"),
    ] {
        let mut request = original.clone();
        forward(&mut plugin, &mut request);
        assert_eq!(request, original, "{} {}", original.method, original.path);
    }
}

#[test]
fn malformed_json_is_refused() {
    let mut plugin = plugin();
    let mut request = TestRequest::post("/v1/shelves/s/products", "{\"displayName\": ");
    let (status, body) = refuse(&mut plugin, &mut request);
    assert_eq!(status, 400);
    assert_eq!(body["code"], 3);
    assert_eq!(body["status"], "INVALID_ARGUMENT");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("the body is not valid JSON"),
        "{body}"
    );

    let mut request = TestRequest::post("/v1/shelves/s/products", "[1, 2]");
    let (status, body) = refuse(&mut plugin, &mut request);
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("must be a JSON object, not an array")
    );
}

#[test]
fn unknown_fields_and_wrong_types_name_the_field() {
    let cases = [
        (json!({ "colour": "COLOR_RED" }), "colour", "colour"),
        (json!({ "size": { "depth": 1 } }), "size.depth", "depth"),
        (json!({ "price": "cheap" }), "price", "price"),
        (json!({ "color": "COLOR_PURPLE" }), "color", "COLOR_PURPLE"),
        (json!({ "tags": ["a", 1] }), "tags[1]", "tags[1]"),
        (
            json!({ "createdAt": "yesterday" }),
            "createdAt",
            "createdAt",
        ),
        (
            json!({ "size": { "widthMm": 1.5 } }),
            "size.widthMm",
            "size.widthMm",
        ),
        (json!({ "id": "12x" }), "id", "id"),
    ];
    for (body, field, mentioned) in cases {
        let mut plugin = plugin();
        let mut request = TestRequest::post("/v1/shelves/s/products", body.to_string());
        let (status, answer) = refuse(&mut plugin, &mut request);
        assert_eq!(status, 400, "{body}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(mentioned), "{body}: {message}");
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{body}: {answer}");
        }
    }
}

#[test]
fn bad_path_and_query_values_name_the_parameter() {
    let cases = [
        ("/v1/shelves/s/products/abc", "id"),
        ("/v1/products:search?in_stock=yes", "in_stock"),
        ("/v1/products:search?colors=COLOR_GREEN", "colors[0]"),
        ("/v1/products:search?nope=1", "nope"),
        ("/v1/products:search?min_size=1", "min_size"),
        ("/v1/products:search?limit=1&limit=2", "limit"),
        ("/v1/products:search?limit=-1", "limit"),
    ];
    for (path, field) in cases {
        let mut plugin = plugin();
        let mut request = TestRequest::get(path);
        let (status, answer) = refuse(&mut plugin, &mut request);
        assert_eq!(status, 400, "{path}");
        assert_eq!(answer["field"], field, "{path}: {answer}");
    }
}
