//! Write [wasmgate](https://github.com/wasmgate/wasmgate) plugins in Rust.
//!
//! A plugin is a per-route policy: it sees each request before it goes upstream and each
//! response before it goes back, and may change them or answer directly. It runs sandboxed in
//! WebAssembly (`wasm32-wasip2`), and the gateway can swap it without a restart.
//!
//! ```
//! use wasmgate_sdk::{Action, Plugin, Reply, Request, Response};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     header: String,
//!     value: String,
//! }
//!
//! struct Hello {
//!     config: Config,
//! }
//!
//! impl Plugin for Hello {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.header.is_empty() {
//!             return Err("`header` must not be empty".into());
//!         }
//!         Ok(Hello { config })
//!     }
//!
//!     fn on_request(&mut self, request: &mut Request<'_>) -> Action {
//!         if request.header_str("x-block").as_deref() == Some("1") {
//!             return Action::Respond(Reply::new(403).body("blocked\n"));
//!         }
//!         Action::Continue
//!     }
//!
//!     fn on_response(&mut self, response: &mut Response<'_>) {
//!         let _ = response.set_header(&self.config.header, &self.config.value);
//!     }
//! }
//!
//! // In the plugin crate (a `cdylib` built for `wasm32-wasip2`):
//! // wasmgate_sdk::export_plugin!(Hello);
//!
//! // And a plain `cargo test`, without WebAssembly or the gateway:
//! use wasmgate_sdk::testing::{Harness, TestRequest, TestResponse};
//!
//! let mut hello = Harness::<Hello>::new(r#"{"header": "x-hello", "value": "world"}"#).unwrap();
//! let mut blocked = TestRequest::get("/").with_header("x-block", "1");
//! assert!(matches!(hello.on_request(&mut blocked), Action::Respond(reply) if reply.status == 403));
//! let mut response = TestResponse::new(200);
//! hello.on_response(&mut response);
//! assert_eq!(response.header_str("x-hello").as_deref(), Some("world"));
//! ```
//!
//! The config is the route's `config` table as JSON, deserialized into [`Plugin::Config`] with
//! serde; a plugin that returns `Err` from [`Plugin::new`] rejects it, and `wasmgate check`
//! and reloads show the message.

pub mod header;
mod message;
pub mod testing;

pub use message::{Request, Response};
/// Re-exported so plugins build JSON replies without another dependency.
pub use serde_json;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        default_bindings_module: "wasmgate_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "export_plugin_bindings",
    });
}

/// Which bodies a plugin needs. The gateway buffers a body (up to `max_body_bytes`) only for
/// plugins that ask; everything else streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub request_body: bool,
    pub response_body: bool,
}

/// What happens after [`Plugin::on_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on: the next plugin, then the upstream.
    Continue,
    /// Answer now with this response; the upstream is not called.
    Respond(Reply),
}

/// A response a plugin gives instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    /// A JSON body with `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }
}

/// A plugin: created once per route (with that route's config), then called for each request
/// and response of the route, one at a time.
pub trait Plugin: Sized + 'static {
    /// The route's `config` table, deserialized with serde.
    type Config: serde::de::DeserializeOwned;

    /// Builds the plugin from its config; `Err` rejects the config with that message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Which bodies the plugin reads or replaces.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Sees (and may change) the request, or answers it directly.
    fn on_request(&mut self, request: &mut Request<'_>) -> Action {
        let _ = request;
        Action::Continue
    }

    /// Sees (and may change) the response. Runs for upstream responses and for direct answers.
    fn on_response(&mut self, response: &mut Response<'_>) {
        let _ = response;
    }
}

/// Logging through the gateway's log, tagged with the plugin's name. In native tests the
/// lines go to standard error.
pub mod log {
    use crate::bindings::wasmgate::plugin::host::Level;

    fn emit(level: Level, message: &str) {
        if cfg!(target_arch = "wasm32") {
            crate::bindings::wasmgate::plugin::host::log(level, message);
        } else {
            eprintln!("[{level:?}] {message}");
        }
    }

    pub fn debug(message: &str) {
        emit(Level::Debug, message);
    }
    pub fn info(message: &str) {
        emit(Level::Info, message);
    }
    pub fn warn(message: &str) {
        emit(Level::Warn, message);
    }
    pub fn error(message: &str) {
        emit(Level::Error, message);
    }
}

/// Glue between the generated bindings and a [`Plugin`]; used by [`export_plugin!`].
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;

    use crate::bindings::exports::wasmgate::plugin::handler as wit;
    use crate::bindings::wasmgate::plugin::request;
    use crate::{Action, Plugin, Request, Response};

    pub fn init<P: Plugin>(
        slot: &RefCell<Option<P>>,
        config: &str,
    ) -> Result<wit::Capabilities, String> {
        // A panic's message goes to the gateway's log (plugins have no standard error).
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("panic: {info}"))
        }));
        let config: P::Config =
            serde_json::from_str(config).map_err(|err| format!("invalid config: {err}"))?;
        let plugin = P::new(config)?;
        let capabilities = plugin.capabilities();
        *slot.borrow_mut() = Some(plugin);
        Ok(wit::Capabilities {
            request_body: capabilities.request_body,
            response_body: capabilities.response_body,
        })
    }

    pub fn on_request<P: Plugin>(slot: &RefCell<Option<P>>) {
        let mut slot = slot.borrow_mut();
        let Some(plugin) = slot.as_mut() else {
            request::respond(&request::Reply {
                status: 500,
                headers: Vec::new(),
                body: b"plugin called before init".to_vec(),
            });
            return;
        };
        if let Action::Respond(reply) = plugin.on_request(&mut Request::from_host()) {
            request::respond(&request::Reply {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            });
        }
    }

    pub fn on_response<P: Plugin>(slot: &RefCell<Option<P>>) {
        if let Some(plugin) = slot.borrow_mut().as_mut() {
            plugin.on_response(&mut Response::from_host());
        }
    }
}

/// Exports a [`Plugin`] as the component's entry points. Use it once, in the plugin crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl $crate::bindings::exports::wasmgate::plugin::handler::Guest for Export {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<
                    $crate::bindings::exports::wasmgate::plugin::handler::Capabilities,
                    ::std::string::String,
                > {
                    PLUGIN.with(|slot| $crate::__private::init::<$plugin>(slot, &config))
                }

                fn on_request() {
                    PLUGIN.with(|slot| $crate::__private::on_request::<$plugin>(slot))
                }

                fn on_response() {
                    PLUGIN.with(|slot| $crate::__private::on_response::<$plugin>(slot))
                }
            }

            // Native builds (tests with the harness) have no component exports to make.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::export_plugin_bindings!(Export with_types_in $crate::bindings);
        };
    };
}
