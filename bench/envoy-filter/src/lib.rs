//! first_plugin's work as a proxy-wasm filter for Envoy (`envoy.filters.http.wasm`):
//!
//! - request headers: read `x-block`; `x-block: 1` is answered with 403 and a small JSON body
//!   without reaching the upstream;
//! - response headers: set one header (`x-hello: world` unless configured otherwise).
//!
//! The plugin configuration (Envoy's `config.configuration`, a `StringValue`) is `NAME: VALUE`,
//! parsed once when the filter is configured, as first_plugin parses its config once per
//! instance; per request only the header read and the header write remain, as in wasmgate.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { header: Rc::new(("x-hello".into(), "world".into())) })
    });
}}

/// The response header to set: (name, value).
type Header = Rc<(String, String)>;

struct Root {
    header: Header,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            return true; // no configuration: the default header
        };
        let text = String::from_utf8_lossy(&bytes);
        match text.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                self.header = Rc::new((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                true
            }
            _ => {
                proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    &format!("configuration `{text}` is not `NAME: VALUE`"),
                )
                .ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hello {
            header: Rc::clone(&self.header),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hello {
    header: Header,
}

impl Context for Hello {}

impl HttpContext for Hello {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-block").as_deref() == Some("1") {
            self.send_http_response(
                403,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"blocked","message":"blocked by envoy-bench-filter"}"#),
            );
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header(&self.header.0, Some(&self.header.1));
        Action::Continue
    }
}
