//! Your first wasmgate plugin.
//!
//! Config `{ header = "x-hello", value = "world" }`: every response of the route gets that
//! header, and a request carrying `x-block: 1` is answered with 403 without reaching the
//! upstream.

use serde::Deserialize;
use wasmgate_sdk::serde_json;
use wasmgate_sdk::{Action, Plugin, Reply, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The response header to add.
    header: String,
    /// Its value.
    value: String,
}

pub struct FirstPlugin {
    config: Config,
}

impl Plugin for FirstPlugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        // Reject a bad config here: `wasmgate check` shows the message.
        if config.header.is_empty() {
            return Err("`header` must not be empty".into());
        }
        Ok(FirstPlugin { config })
    }

    fn on_request(&mut self, request: &mut Request<'_>) -> Action {
        if request.header_str("x-block").as_deref() == Some("1") {
            return Action::Respond(Reply::new(403).json(
                &serde_json::json!({ "error": "blocked", "message": "blocked by first-plugin" }),
            ));
        }
        Action::Continue
    }

    fn on_response(&mut self, response: &mut Response<'_>) {
        // The gateway validates the name and value; a bad one is logged, not fatal.
        if let Err(err) = response.set_header(&self.config.header, &self.config.value) {
            wasmgate_sdk::log::warn(&format!("cannot set {}: {err}", self.config.header));
        }
    }
}

wasmgate_sdk::export_plugin!(FirstPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing::{Harness, TestRequest, TestResponse};

    const CONFIG: &str = r#"{"header": "x-hello", "value": "world"}"#;

    #[test]
    fn adds_the_header_to_responses() {
        let mut plugin = Harness::<FirstPlugin>::new(CONFIG).unwrap();
        let mut response = TestResponse::new(200);
        plugin.on_response(&mut response);
        assert_eq!(response.header_str("x-hello").as_deref(), Some("world"));
    }

    #[test]
    fn blocks_marked_requests() {
        let mut plugin = Harness::<FirstPlugin>::new(CONFIG).unwrap();
        let mut blocked = TestRequest::get("/").with_header("x-block", "1");
        match plugin.on_request(&mut blocked) {
            Action::Respond(reply) => assert_eq!(reply.status, 403),
            Action::Continue => panic!("not blocked"),
        }
        let mut normal = TestRequest::get("/");
        assert_eq!(plugin.on_request(&mut normal), Action::Continue);
    }

    #[test]
    fn rejects_an_empty_header_name() {
        let err = Harness::<FirstPlugin>::new(r#"{"header": "", "value": "x"}"#)
            .err()
            .unwrap();
        assert!(err.contains("must not be empty"), "{err}");
        let err = Harness::<FirstPlugin>::new(r#"{"value": "x"}"#)
            .err()
            .unwrap();
        assert!(err.contains("missing field `header`"), "{err}");
    }
}
