//! A native test harness: run a [`Plugin`] with plain `cargo test`, without WebAssembly and
//! without the gateway. The harness follows the gateway's rules where they matter to a plugin
//! (config as JSON through serde, header names case-insensitive, bodies only when declared).

use std::collections::HashMap;
use std::marker::PhantomData;

use crate::{Action, Capabilities, Plugin, Request, Response};

/// Header list with the gateway's semantics: names compared case-insensitively and stored
/// lowercase, several values per name allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestHeaders(pub Vec<(String, Vec<u8>)>);

fn valid_value(value: &[u8]) -> Result<(), String> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        Err("header values must not contain control characters".into())
    } else {
        Ok(())
    }
}

impl TestHeaders {
    pub fn first(&self, name: &str) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    pub fn all(&self, name: &str) -> Vec<Vec<u8>> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in &self.0 {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let name = crate::header::name(name)?;
        valid_value(value)?;
        self.remove(&name);
        self.0.push((name, value.to_vec()));
        Ok(())
    }

    pub fn append(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let name = crate::header::name(name)?;
        valid_value(value)?;
        self.0.push((name, value.to_vec()));
        Ok(())
    }

    /// Test setup: appends, panicking on an invalid name or value.
    fn append_for_test(&mut self, name: &str, value: &[u8]) {
        if let Err(err) = self.append(name, value) {
            panic!("{err}");
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

/// A request for tests, with what the gateway would provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: TestHeaders,
    /// `Some` only when the plugin declared `request_body` (as in the gateway).
    pub body: Option<Vec<u8>>,
    /// What [`Request::host`] returns (`Some("example.test")` unless changed).
    pub host: Option<String>,
    pub client_ip: String,
    pub route: String,
    pub request_id: String,
    pub ctx: HashMap<String, String>,
}

impl TestRequest {
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (path_and_query.to_owned(), None),
        };
        TestRequest {
            method: method.to_owned(),
            path,
            query,
            headers: TestHeaders::default(),
            body: None,
            host: Some("example.test".to_owned()),
            client_ip: "127.0.0.1".to_owned(),
            route: "test".to_owned(),
            request_id: "test-request".to_owned(),
            ctx: HashMap::new(),
        }
    }

    pub fn get(path_and_query: &str) -> Self {
        Self::new("GET", path_and_query)
    }

    pub fn post(path_and_query: &str, body: impl AsRef<[u8]>) -> Self {
        Self::new("POST", path_and_query).with_body(body)
    }

    /// Adds a header (panics on an invalid name or value: this is test setup).
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.append_for_test(name, value.as_ref());
        self
    }

    pub fn with_body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = Some(body.as_ref().to_vec());
        self
    }

    pub fn with_ctx(mut self, name: &str, value: &str) -> Self {
        self.ctx.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn with_host(mut self, host: Option<&str>) -> Self {
        self.host = host.map(str::to_owned);
        self
    }

    pub fn with_client_ip(mut self, client_ip: &str) -> Self {
        self.client_ip = client_ip.to_owned();
        self
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        self.headers
            .first(name)
            .and_then(|v| String::from_utf8(v).ok())
    }
}

/// A response for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResponse {
    pub status: u16,
    pub headers: TestHeaders,
    pub body: Option<Vec<u8>>,
    pub trailers: TestHeaders,
    pub ctx: HashMap<String, String>,
    /// The request this response answers: what [`Response::request_method`] and its
    /// siblings return (`GET /` from 127.0.0.1 unless changed).
    pub request: TestRequest,
}

impl TestResponse {
    pub fn new(status: u16) -> Self {
        TestResponse {
            status,
            headers: TestHeaders::default(),
            body: None,
            trailers: TestHeaders::default(),
            ctx: HashMap::new(),
            request: TestRequest::get("/"),
        }
    }

    /// A response to `request`, carrying its context values along as the gateway does.
    pub fn answering(request: &TestRequest, status: u16) -> Self {
        TestResponse {
            ctx: request.ctx.clone(),
            request: request.clone(),
            ..TestResponse::new(status)
        }
    }

    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.append_for_test(name, value.as_ref());
        self
    }

    pub fn with_body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = Some(body.as_ref().to_vec());
        self
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        self.headers
            .first(name)
            .and_then(|v| String::from_utf8(v).ok())
    }
}

/// One plugin instance, created from a JSON config as the gateway would create it.
pub struct Harness<P: Plugin> {
    plugin: P,
    capabilities: Capabilities,
    _plugin: PhantomData<P>,
}

impl<P: Plugin> Harness<P> {
    /// Creates the plugin from `config` (the route's `config` table as JSON).
    pub fn new(config: &str) -> Result<Self, String> {
        let config: P::Config =
            serde_json::from_str(config).map_err(|err| format!("invalid config: {err}"))?;
        let plugin = P::new(config)?;
        let capabilities = plugin.capabilities();
        Ok(Harness {
            plugin,
            capabilities,
            _plugin: PhantomData,
        })
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Runs `on_request`. As in the gateway, a plugin that did not declare `request_body`
    /// sees no body.
    pub fn on_request(&mut self, request: &mut TestRequest) -> Action {
        let hidden = if self.capabilities.request_body {
            None
        } else {
            request.body.take()
        };
        let action = self.plugin.on_request(&mut Request::from_test(request));
        if let Some(body) = hidden {
            request.body.get_or_insert(body);
        }
        action
    }

    /// Runs `on_response`, hiding the body unless `response_body` was declared.
    pub fn on_response(&mut self, response: &mut TestResponse) {
        let hidden = if self.capabilities.response_body {
            None
        } else {
            response.body.take()
        };
        self.plugin.on_response(&mut Response::from_test(response));
        if let Some(body) = hidden {
            response.body.get_or_insert(body);
        }
    }

    pub fn plugin(&self) -> &P {
        &self.plugin
    }
}
