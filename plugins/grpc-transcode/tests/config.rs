//! Config errors: reported by `new` with a message that says what to fix.

mod support;

use support::*;
use wasmgate_sdk::serde_json::json;

#[test]
fn the_test_api_loads() {
    let plugin = plugin();
    let capabilities = plugin.capabilities();
    assert!(capabilities.request_body && capabilities.response_body);
}

#[test]
fn bad_configs_are_rejected_with_a_clear_message() {
    let cases = [
        (
            json!({ "descriptors": "not base64!", "services": ["shop.v1.Shop"] }),
            "`descriptors` is not base64",
        ),
        (
            json!({ "descriptors": "aGVsbG8gd29ybGQ=", "services": ["shop.v1.Shop"] }),
            "`descriptors` is not a valid FileDescriptorSet",
        ),
        (
            config_with(json!({ "services": [] })),
            "`services` is empty",
        ),
        (
            config_with(json!({ "services": ["shop.v1.Nope"] })),
            "service `shop.v1.Nope` is not in the descriptors (they have: ",
        ),
        (
            config_with(json!({ "services": ["shop.v1.BadTemplate"] })),
            "`shop.v1.BadTemplate.Get` google.api.http: path template `/v1/{id`",
        ),
        (
            config_with(json!({ "services": ["shop.v1.BadVariable"] })),
            "`shop.v1.BadRequest` has no field `missing`",
        ),
        (
            json!({ "services": ["shop.v1.Shop"] }),
            "missing field `descriptors`",
        ),
        (
            config_with(json!({ "emit_default": true })),
            "unknown field `emit_default`",
        ),
    ];
    for (config, expected) in cases {
        let message = rejection(config);
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
}
