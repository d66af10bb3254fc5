//! `headers`: a first-party wasmgate plugin that sets, adds and removes request and response
//! headers. Values are templates over the request (`{method}`, `{path}`, `{host}`,
//! `{client_ip}`, `{request_id}`) and its context values (`{ctx.NAME}`, for example the
//! `user_id` the jwt plugin sets). See docs/first-party-plugins.md.

pub mod rules;
pub mod template;

use serde::Deserialize;
use wasmgate_sdk::{Action, Plugin, Request, Response};

use crate::rules::{Headers, Phase, PhaseConfig, Rules};
use crate::template::{Var, Vars};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request: PhaseConfig,
    #[serde(default)]
    pub response: PhaseConfig,
}

pub struct HeadersPlugin {
    request: Rules,
    response: Rules,
}

impl Plugin for HeadersPlugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let request = Rules::new(config.request, Phase::Request)?;
        let response = Rules::new(config.response, Phase::Response)?;
        if request.is_empty() && response.is_empty() {
            return Err(
                "nothing to do: give `request` or `response` a `set`, `add` or `remove`".into(),
            );
        }
        Ok(HeadersPlugin { request, response })
    }

    fn on_request(&mut self, request: &mut Request<'_>) -> Action {
        self.request.apply(request);
        Action::Continue
    }

    fn on_response(&mut self, response: &mut Response<'_>) {
        self.response.apply(response);
    }
}

impl Vars for Request<'_> {
    fn var(&self, var: &Var) -> String {
        match var {
            Var::Method => self.method(),
            Var::Path => self.path(),
            Var::Host => self.host().unwrap_or_default(),
            Var::ClientIp => self.client_ip(),
            Var::RequestId => self.request_id(),
            Var::Ctx(name) => self.ctx(name).unwrap_or_default(),
        }
    }
}

/// In the response phase the placeholders describe the request the response answers (as the
/// client sent it), not anything of the response: pooled instances keep no request state.
impl Vars for Response<'_> {
    fn var(&self, var: &Var) -> String {
        match var {
            Var::Method => self.request_method(),
            Var::Path => self.request_path(),
            Var::Host => self.request_host().unwrap_or_default(),
            Var::ClientIp => self.client_ip(),
            Var::RequestId => self.request_id(),
            Var::Ctx(name) => self.ctx(name).unwrap_or_default(),
        }
    }
}

/// `Request` and `Response` have the same header methods, but no trait in the SDK joins them.
macro_rules! headers_by_sdk_methods {
    ($($message:ident),*) => {$(
        impl Headers for $message<'_> {
            fn remove(&mut self, name: &str) {
                self.remove_header(name);
            }
            fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
                self.set_header(name, value)
            }
            fn add(&mut self, name: &str, value: &str) -> Result<(), String> {
                self.append_header(name, value)
            }
        }
    )*};
}

headers_by_sdk_methods!(Request, Response);

wasmgate_sdk::export_plugin!(HeadersPlugin);
