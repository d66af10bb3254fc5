//! The headers plugin through the SDK's native harness: both phases, the order of the
//! operations, every placeholder, and config errors reported by `new`.

use headers::HeadersPlugin;
use wasmgate_sdk::Action;
use wasmgate_sdk::serde_json::{Value, json};
use wasmgate_sdk::testing::{Harness, TestRequest, TestResponse};

fn plugin(config: Value) -> Harness<HeadersPlugin> {
    Harness::new(&config.to_string()).unwrap_or_else(|err| panic!("{err}"))
}

fn rejection(config: Value) -> String {
    match Harness::<HeadersPlugin>::new(&config.to_string()) {
        Ok(_) => panic!("accepted: {config}"),
        Err(message) => message,
    }
}

fn all(headers: &wasmgate_sdk::testing::TestHeaders, name: &str) -> Vec<String> {
    headers
        .all(name)
        .into_iter()
        .map(|v| String::from_utf8(v).unwrap())
        .collect()
}

#[test]
fn request_phase_remove_then_set_then_add() {
    let mut plugin = plugin(json!({
        "request": {
            "remove": ["x-debug", "x-forwarded-user"],
            "set": {
                "x-forwarded-user": "{ctx.user_id}",
                "x-origin": "{method} {host}{path} from {client_ip} id={request_id}",
                "x-env": "prod",
            },
            "add": { "x-env": "eu", "x-tag": "a" },
        }
    }));
    let mut request = TestRequest::new("POST", "/orders/7?x=1")
        .with_header("x-debug", "1")
        .with_header("x-forwarded-user", "spoofed")
        .with_header("x-env", "old")
        .with_header("x-tag", "client")
        .with_ctx("user_id", "u-42")
        .with_client_ip("192.0.2.9");
    assert_eq!(plugin.on_request(&mut request), Action::Continue);
    assert_eq!(request.header_str("x-debug"), None);
    assert_eq!(all(&request.headers, "x-forwarded-user"), ["u-42"]);
    assert_eq!(
        request.header_str("x-origin").as_deref(),
        Some("POST example.test/orders/7 from 192.0.2.9 id=test-request")
    );
    // `set` replaced the client's value, then `add` appended to it.
    assert_eq!(all(&request.headers, "x-env"), ["prod", "eu"]);
    // `add` keeps what was there.
    assert_eq!(all(&request.headers, "x-tag"), ["client", "a"]);
}

#[test]
fn unset_context_values_and_hosts_expand_to_nothing() {
    let mut plugin = plugin(json!({
        "request": { "set": { "x-user": "{ctx.user_id}", "x-host": "[{host}]" } }
    }));
    let mut request = TestRequest::get("/").with_host(None);
    plugin.on_request(&mut request);
    assert_eq!(request.header_str("x-user").as_deref(), Some(""));
    assert_eq!(request.header_str("x-host").as_deref(), Some("[]"));
}

#[test]
fn response_phase_describes_the_request_it_answers() {
    let mut plugin = plugin(json!({
        "response": {
            "remove": ["server", "x-powered-by"],
            "set": { "x-served-for": "{method} {path} ({host}, {client_ip}, {request_id})" },
            "add": { "x-user": "{ctx.user_id}", "cache-control": "no-store" },
        }
    }));
    let request = TestRequest::new("DELETE", "/items/3")
        .with_ctx("user_id", "u-7")
        .with_client_ip("198.51.100.4");
    let mut response = TestResponse::answering(&request, 204)
        .with_header("server", "upstream/1.0")
        .with_header("x-powered-by", "php")
        .with_header("cache-control", "private");
    plugin.on_response(&mut response);
    assert_eq!(response.header_str("server"), None);
    assert_eq!(response.header_str("x-powered-by"), None);
    assert_eq!(
        response.header_str("x-served-for").as_deref(),
        Some("DELETE /items/3 (example.test, 198.51.100.4, test-request)")
    );
    assert_eq!(response.header_str("x-user").as_deref(), Some("u-7"));
    assert_eq!(
        all(&response.headers, "cache-control"),
        ["private", "no-store"]
    );
}

#[test]
fn each_phase_only_touches_its_own_message() {
    let mut plugin = plugin(json!({ "response": { "set": { "x-a": "1" } } }));
    let mut request = TestRequest::get("/");
    plugin.on_request(&mut request);
    assert!(request.headers.0.is_empty());
    let mut plugin = self::plugin(json!({ "request": { "set": { "x-a": "1" } } }));
    let mut response = TestResponse::new(200);
    plugin.on_response(&mut response);
    assert!(response.headers.0.is_empty());
}

#[test]
fn a_value_made_invalid_by_a_context_value_is_skipped() {
    let mut plugin = plugin(json!({
        "request": { "set": { "x-user": "{ctx.user_id}", "x-fine": "yes" } }
    }));
    let mut request = TestRequest::get("/").with_ctx("user_id", "line\nbreak");
    assert_eq!(plugin.on_request(&mut request), Action::Continue);
    assert_eq!(request.header_str("x-user"), None);
    assert_eq!(request.header_str("x-fine").as_deref(), Some("yes"));
}

#[test]
fn config_errors() {
    let contains = |config: Value, part: &str| {
        let message = rejection(config);
        assert!(
            message.contains(part),
            "`{message}` should contain `{part}`"
        );
    };
    contains(json!({}), "nothing to do");
    contains(
        json!({ "request": { "replace": {} } }),
        "unknown field `replace`",
    );
    contains(json!({ "requests": {} }), "unknown field `requests`");
    contains(
        json!({ "request": { "set": { "x-a": "{client}" } } }),
        "`request.set.x-a`: unknown placeholder `{client}`",
    );
    contains(
        json!({ "response": { "add": { "x a": "1" } } }),
        "`response.add`: `x a` is not a valid header name",
    );
    contains(
        json!({ "request": { "set": { "x-a": "one\r\ntwo" } } }),
        "control character 0x0d",
    );
    contains(
        json!({ "request": { "remove": ["Transfer-Encoding"] } }),
        "managed by the gateway",
    );
    contains(
        json!({ "response": { "set": { "X-Request-Id": "x" } } }),
        "set by the gateway",
    );
    contains(
        json!({ "request": { "set": { "x-a": "1" }, "remove": "x-b" } }),
        "invalid type",
    );
}
