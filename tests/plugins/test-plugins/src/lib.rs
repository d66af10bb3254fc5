//! One module, many behaviours, chosen by the route's config (`mode`): the end-to-end tests
//! attach it several times with different configs.
//!
//! Well-behaved modes: `tag` (marks the request and response so tests can see the order, and
//! passes context values along), `respond` (answers directly), `body` (rewrites both bodies,
//! declaring that it reads them), `body-undeclared` (tries to touch the body without declaring
//! it), `route` (echoes its config per route), `count` (counts the calls its instance saw).
//! `std` (uses HashMap, clocks and the environment, as ordinary Rust code does), `version`
//! (reports the module's [`MODULE_VERSION`] and its config's `name` in the request and the
//! response, so reload tests can tell which module and config served).
//! Hostile modes: `trap`, `panic`, `loop`, `memory`, `huge-header`, `print` (standard output,
//! which plugins do not have), `out-of-phase` (calls a `request` function from `on-response`,
//! which the SDK does not offer but the raw bindings do).

use serde::Deserialize;
use wasmgate_sdk::{Action, Capabilities, Plugin, Reply, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    mode: String,
    #[serde(default)]
    name: String,
    /// `respond` mode: the status to answer with.
    #[serde(default)]
    status: Option<u16>,
    /// Rejects the config (to test that rejections are reported).
    #[serde(default)]
    reject: bool,
}

/// The reload tests make a second version of this module by replacing these bytes in the
/// `.wasm` file (same length, so the module stays valid): `plugin-version-1` -> `-2`.
pub const MODULE_VERSION: &str = "plugin-version-1";

pub struct TestPlugin {
    config: Config,
    /// `count` mode: calls seen by this instance (pooled instances keep it across requests).
    calls: u64,
}

const MODES: &[&str] = &[
    "tag",
    "version",
    "respond",
    "body",
    "body-undeclared",
    "route",
    "count",
    "std",
    "print",
    "trap",
    "panic",
    "loop",
    "memory",
    "huge-header",
    "out-of-phase",
];

impl Plugin for TestPlugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.reject {
            return Err("this config is rejected on purpose".into());
        }
        if !MODES.contains(&config.mode.as_str()) {
            return Err(format!("unknown mode `{}`", config.mode));
        }
        Ok(TestPlugin { config, calls: 0 })
    }

    fn capabilities(&self) -> Capabilities {
        let body = self.config.mode == "body";
        Capabilities {
            request_body: body,
            response_body: body,
        }
    }

    fn on_request(&mut self, request: &mut Request<'_>) -> Action {
        let name = self.config.name.as_str();
        match self.config.mode.as_str() {
            "version" => {
                // The upstream echoes it: the request and its response saw the same module.
                request
                    .set_header("x-module-version", std::hint::black_box(MODULE_VERSION))
                    .unwrap();
                request.set_header("x-config-name", name).unwrap();
                Action::Continue
            }
            "tag" => {
                request.append_header("x-chain", name).unwrap();
                if let Some(previous) = request.ctx("last") {
                    request
                        .set_header(&format!("x-ctx-before-{name}"), &previous)
                        .unwrap();
                }
                request.set_ctx("last", name);
                request.set_ctx(&format!("seen_{name}"), "yes");
                Action::Continue
            }
            "respond" => Action::Respond(
                Reply::new(self.config.status.unwrap_or(418))
                    .header("x-answered-by", name)
                    .body(format!("answered by {name} for {}\n", request.path())),
            ),
            "body" => {
                let body = request.body().unwrap_or_default();
                request.set_body(body.to_ascii_uppercase()).unwrap();
                Action::Continue
            }
            "body-undeclared" => {
                let seen = request.body().is_some();
                let error = request.set_body("nope").err().unwrap_or_default();
                request
                    .set_header("x-body-seen", if seen { "yes" } else { "no" })
                    .unwrap();
                request.set_header("x-body-error", &error).unwrap();
                Action::Continue
            }
            "route" => {
                request.set_header("x-route-config", name).unwrap();
                request.set_header("x-route-seen", request.route()).unwrap();
                Action::Continue
            }
            "count" => {
                self.calls += 1;
                request
                    .set_header("x-instance-calls", self.calls.to_string())
                    .unwrap();
                Action::Continue
            }
            "std" => {
                // What ordinary Rust code uses: hashed maps (random seeds), clocks, the
                // environment (empty for plugins).
                let mut seen = std::collections::HashMap::new();
                seen.insert("k", 1);
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let started = std::time::Instant::now();
                let env = std::env::var("HOME").is_ok();
                request
                    .set_header(
                        "x-std",
                        format!(
                            "map={} wall={} mono={} env={env}",
                            seen.len(),
                            wall > 1_700_000_000,
                            started.elapsed().as_secs() < 1
                        ),
                    )
                    .unwrap();
                Action::Continue
            }
            "print" => {
                println!("plugins have no standard output");
                Action::Continue
            }
            "trap" => trap(),
            "panic" => panic!("the plugin panics on purpose"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = n.wrapping_add(1);
                    if n == u64::MAX {
                        return Action::Continue;
                    }
                    std::hint::black_box(n);
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge-header" => {
                let value = "x".repeat(1 << 20);
                request.set_header("x-huge", &value).unwrap();
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_response(&mut self, response: &mut Response<'_>) {
        let name = self.config.name.as_str();
        match self.config.mode.as_str() {
            "version" => {
                response
                    .set_header("x-module-version", std::hint::black_box(MODULE_VERSION))
                    .unwrap();
                response.set_header("x-config-name", name).unwrap();
            }
            "tag" | "respond" => {
                response.append_header("x-chain-response", name).unwrap();
                if let Some(seen) = response.ctx(&format!("seen_{name}")) {
                    response
                        .set_header(&format!("x-ctx-{name}"), &seen)
                        .unwrap();
                }
            }
            "count" => {
                // Per-request isolation: the same instance that saw this request's on-request.
                response
                    .set_header("x-instance-calls-at-response", self.calls.to_string())
                    .unwrap();
            }
            "body" => {
                let mut body = response.body().unwrap_or_default();
                body.extend_from_slice(b"-rewritten");
                response.set_body(body).unwrap();
            }
            "out-of-phase" => out_of_phase(),
            _ => {}
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn out_of_phase() {
    std::hint::black_box(wasmgate_sdk::bindings::wasmgate::plugin::request::path());
}

#[cfg(not(target_arch = "wasm32"))]
fn out_of_phase() {
    std::process::abort()
}

#[cfg(target_arch = "wasm32")]
fn trap() -> Action {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> Action {
    std::process::abort()
}

wasmgate_sdk::export_plugin!(TestPlugin);
