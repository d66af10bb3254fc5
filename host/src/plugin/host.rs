//! The gateway's side of the plugin world: the data a call sees (in the store), and the host
//! functions plugins call on the request or response of the running call.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../plugin-sdk/wit",
    // A `request` function called outside `on-request` (or a `response` one outside
    // `on-response`) traps: it is a bug in the plugin, and there is no message to act on.
    imports: { default: trappable },
});

/// The version of the `wasmgate:plugin` package above: plugins built for another are refused
/// at load with a message that says so (a unit test keeps this in step with the WIT file).
pub const WORLD_VERSION: &str = "0.2.0";

use self::wasmgate::plugin::host::Level;
use self::wasmgate::plugin::{host as host_api, request as request_api, response as response_api};
use super::loan::{Borrowed, Loan};
use crate::http1::ReceivedFields;
pub use Plugin as PluginWorld;
pub use PluginPre as PluginWorldPre;
pub use request_api::Reply;

/// A plugin may not add more header bytes than this in one call.
const MAX_HEADER_OUTPUT: usize = 64 * 1024;

/// Which message a host call is about.
#[derive(Clone, Copy)]
enum Part {
    Request,
    Response,
}

/// Per-request context values (`ctx:NAME`), sorted for stable logs.
pub type Context = BTreeMap<String, String>;

/// The request as the client sent it and who sent it: plugins read it in both phases (a
/// response plugin's templates may name the request's path, say), and no plugin changes it.
/// Every field is a cheap clone (shared bytes), taken once per request.
pub struct RequestInfo {
    /// Formatted only if a plugin asks for it.
    pub client_ip: IpAddr,
    pub route: Arc<str>,
    pub request_id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    pub host_header: Option<HeaderValue>,
}

impl RequestInfo {
    pub fn new(
        client_ip: IpAddr,
        route: Arc<str>,
        request_id: HeaderValue,
        parts: &http::request::Parts,
    ) -> Self {
        RequestInfo {
            client_ip,
            route,
            request_id,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            host_header: parts.headers.get(http::header::HOST).cloned(),
        }
    }

    /// The authority the client asked for: HTTP/2's `:authority`, else the `Host` header.
    fn host(&self) -> Option<String> {
        match (self.uri.authority(), &self.host_header) {
            (Some(authority), _) => Some(authority.as_str().to_owned()),
            (None, Some(host)) => host.to_str().ok().map(str::to_owned),
            (None, None) => None,
        }
    }

    fn request_id(&self) -> String {
        self.request_id.to_str().unwrap_or_default().to_owned()
    }
}

/// The request as the plugin sees it (the proxy's own, for the phase).
pub struct RequestView {
    pub parts: http::request::Parts,
    /// `Some` when some plugin in the chain asked for the request body.
    pub body: Option<Bytes>,
    pub body_visible: bool,
    /// The answer of the plugin that called `respond`, taken after its call.
    pub reply: Option<Reply>,
}

impl RequestView {
    pub fn new(parts: http::request::Parts, body: Option<Bytes>) -> Self {
        RequestView {
            parts,
            body,
            body_visible: false,
            reply: None,
        }
    }
}

/// The response as the plugin sees it: what its host functions reach, taken out of the
/// response for the phase and put back after it (moving a map, not the whole response).
pub struct ResponseView {
    pub status: StatusCode,
    /// What the plugins set, and the upstream's fields once `received` is merged in.
    pub headers: HeaderMap,
    /// The upstream's fields as received (see `http1::ReceivedFields`), until a plugin reads,
    /// appends to or removes a response header: only then are they merged into the map. A
    /// chain that only sets response headers leaves them as received; a set header replaces
    /// received fields of its name, in the map as when they are written out.
    pub received: Option<ReceivedFields>,
    pub body: Option<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub body_visible: bool,
}

impl ResponseView {
    /// The headers with the upstream's fields merged in.
    fn complete_headers(&mut self) -> &mut HeaderMap {
        if let Some(fields) = self.received.take()
            && let Err(why) = fields.merge_into(&mut self.headers)
        {
            // httparse admits only what the map admits: not expected to happen.
            tracing::warn!("the upstream's response fields cannot be shown to plugins: {why}");
        }
        &mut self.headers
    }
}

/// A store's resource limits, remembering a refused memory growth: the refusal traps, and the
/// trap alone does not tell a plugin over its `memory_limit` from any other failure.
struct Limits {
    store: StoreLimits,
    memory_refused: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.store.memory_growing(current, desired, maximum);
        self.memory_refused |= !matches!(allowed, Ok(true));
        allowed
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_refused = true;
        self.store.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.store.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.store.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.store.instances()
    }

    fn tables(&self) -> usize {
        self.store.tables()
    }

    fn memories(&self) -> usize {
        self.store.memories()
    }
}

/// What a store holds: one plugin instance's state between and during calls.
pub struct CallState {
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    /// What the running call borrows; nothing between calls.
    loan: Loan,
    /// The context values `init` sees: none, and what it sets is forgotten (`init` runs once
    /// per instance, not per request).
    init_ctx: Context,
    /// The running call's time limit.
    pub deadline: super::deadline::Deadline,
    /// Header bytes the current call has added.
    header_output: usize,
    names: HeaderNames,
}

impl CallState {
    pub fn new(plugin: Arc<str>, memory_limit: usize) -> Self {
        CallState {
            plugin,
            // Nothing granted: no preopened directories, no environment, no network.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: Limits {
                store: StoreLimitsBuilder::new()
                    .memory_size(memory_limit)
                    .instances(64)
                    .tables(64)
                    .memories(16)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_refused: false,
            },
            loan: Loan::default(),
            init_ctx: Context::new(),
            deadline: Default::default(),
            header_output: 0,
            names: HeaderNames::default(),
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// Whether the plugin was refused memory since the last time this was asked.
    pub fn take_memory_refused(&mut self) -> bool {
        std::mem::take(&mut self.limits.memory_refused)
    }

    /// Starts a call with what it borrows: the output budget is per call.
    ///
    /// # Safety
    ///
    /// As [`Loan::begin`]: [`CallState::end_call`] comes before the borrows end.
    pub unsafe fn begin_call(&mut self, borrowed: Borrowed<'_>) {
        self.header_output = 0;
        self.limits.memory_refused = false;
        // SAFETY: the caller's promise.
        unsafe { self.loan.begin(borrowed) };
    }

    /// Ends the call: the store keeps nothing of the request.
    pub fn end_call(&mut self) {
        self.loan.end();
    }

    /// The request of the running `on-request` call.
    fn request(&mut self) -> wasmtime::Result<&mut RequestView> {
        self.loan
            .request()
            .ok_or_else(|| wasmtime::format_err!("`request` functions are only for `on-request`"))
    }

    /// The response of the running `on-response` call.
    fn response(&mut self) -> wasmtime::Result<&mut ResponseView> {
        self.loan
            .response()
            .ok_or_else(|| wasmtime::format_err!("`response` functions are only for `on-response`"))
    }

    fn ctx(&mut self) -> &mut Context {
        match self.loan.ctx() {
            Some(ctx) => ctx,
            None => {
                self.init_ctx.clear();
                &mut self.init_ctx
            }
        }
    }

    /// Traps unless the phase of `part` is running.
    fn in_phase(&mut self, part: Part) -> wasmtime::Result<()> {
        match part {
            Part::Request => self.request().map(drop),
            Part::Response => self.response().map(drop),
        }
    }

    /// The identity of the request being handled (lent to both phases), for the functions of
    /// `part`, which are only for its phase.
    fn identity(&mut self, part: Part) -> wasmtime::Result<&RequestInfo> {
        self.in_phase(part)?;
        self.loan
            .info()
            .ok_or_else(|| wasmtime::format_err!("no request is being handled"))
    }

    /// The headers of either message, complete (see [`ResponseView::received`]).
    fn headers(&mut self, part: Part) -> wasmtime::Result<&mut HeaderMap> {
        match part {
            Part::Request => self.headers_unmerged(part),
            Part::Response => Ok(self.response()?.complete_headers()),
        }
    }

    /// `set-header` / `append-header` of either message, within the call's output budget.
    fn put_header(
        &mut self,
        part: Part,
        name: &str,
        value: Vec<u8>,
        append: bool,
    ) -> wasmtime::Result<Result<(), String>> {
        // Out of phase traps, even when the header would be refused anyway.
        self.in_phase(part)?;
        if let Err(why) = self.charge(name, &value) {
            return Ok(Err(why));
        }
        let name = match self.names.parse(name) {
            Ok(name) => name,
            Err(why) => return Ok(Err(why)),
        };
        let headers = match (part, append) {
            // Setting replaces every field of the name, received or not: the received fields
            // need not be merged for that (the writer skips those the map names).
            (Part::Response, false) => self.headers_unmerged(part)?,
            _ => self.headers(part)?,
        };
        Ok(set(headers, name, value, append))
    }

    /// The map of either message without merging the upstream's received fields into it.
    fn headers_unmerged(&mut self, part: Part) -> wasmtime::Result<&mut HeaderMap> {
        Ok(match part {
            Part::Request => &mut self.request()?.parts.headers,
            Part::Response => &mut self.response()?.headers,
        })
    }

    fn drop_header(&mut self, part: Part, name: &str) -> wasmtime::Result<()> {
        let name = self.names.parse(name);
        let headers = self.headers(part)?;
        if let Ok(name) = name
            && !reserved(&name)
        {
            headers.remove(name);
        }
        Ok(())
    }

    /// `header` of either message: the name goes through the instance's parsed names, as a
    /// plugin reads the same few headers on every request. An invalid name is never present.
    fn read_header(&mut self, part: Part, name: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        let name = self.names.parse(name);
        let headers = self.headers(part)?;
        Ok(name.ok().and_then(|name| first(headers, &name)))
    }

    /// `header-all` of either message, like [`CallState::read_header`].
    fn read_header_all(&mut self, part: Part, name: &str) -> wasmtime::Result<Vec<Vec<u8>>> {
        let name = self.names.parse(name);
        let headers = self.headers(part)?;
        Ok(name.map(|name| all(headers, &name)).unwrap_or_default())
    }

    /// The body slot of either message and whether the current plugin declared it.
    fn body_slot(&mut self, part: Part) -> wasmtime::Result<(&mut Option<Bytes>, bool)> {
        Ok(match part {
            Part::Request => {
                let request = self.request()?;
                (&mut request.body, request.body_visible)
            }
            Part::Response => {
                let response = self.response()?;
                (&mut response.body, response.body_visible)
            }
        })
    }

    fn read_body(&mut self, part: Part) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(match self.body_slot(part)? {
            (body, true) => body.as_ref().map(|b| b.to_vec()),
            (_, false) => None,
        })
    }

    fn write_body(
        &mut self,
        part: Part,
        new_body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(match self.body_slot(part)? {
            (body, true) => {
                *body = Some(Bytes::from(new_body));
                Ok(())
            }
            (_, false) => Err(match part {
                Part::Request => "the plugin did not declare `request-body`".into(),
                Part::Response => "the plugin did not declare `response-body`".into(),
            }),
        })
    }

    fn charge(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        self.header_output += name.len() + value.len();
        if self.header_output > MAX_HEADER_OUTPUT {
            Err(format!(
                "plugin header output exceeds {MAX_HEADER_OUTPUT} bytes in one call"
            ))
        } else {
            Ok(())
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Header names a plugin reads, sets or removes, parsed once per instance: a plugin names the same
/// few headers on every request, and parsing a name that is not a standard one allocates it.
#[derive(Default)]
struct HeaderNames(Vec<(Box<str>, HeaderName)>);

impl HeaderNames {
    /// Names remembered per instance; a plugin with more parses the rest every time.
    const MAX: usize = 16;

    fn parse(&mut self, name: &str) -> Result<HeaderName, String> {
        if let Some((_, parsed)) = self.0.iter().find(|(known, _)| **known == *name) {
            return Ok(parsed.clone());
        }
        let parsed = header_name(name)?;
        if self.0.len() < Self::MAX {
            self.0.push((name.into(), parsed.clone()));
        }
        Ok(parsed)
    }
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

/// The value the plugin's call handed over, kept as it is (validated, not copied).
fn header_value(value: Vec<u8>) -> Result<HeaderValue, String> {
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| "invalid header value (control characters?)".to_owned())
}

fn first(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

fn all(headers: &HeaderMap, name: &HeaderName) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn names(headers: &HeaderMap) -> Vec<String> {
    headers.keys().map(|k| k.as_str().to_owned()).collect()
}

/// Header names a plugin must not set: they describe the connection or the framing, which
/// the gateway owns.
pub fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "upgrade"
            | "te"
            | "host"
    )
}

fn set(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: Vec<u8>,
    append: bool,
) -> Result<(), String> {
    // `te: trailers` is the one TE that HTTP/2 allows, and gRPC requires it: a plugin turning
    // a request into a gRPC call must be able to say it.
    let te_trailers = name == http::header::TE && value.eq_ignore_ascii_case(b"trailers");
    if reserved(&name) && !te_trailers {
        return Err(format!("`{name}` is managed by the gateway"));
    }
    let value = header_value(value)?;
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

impl host_api::Host for CallState {
    fn ctx_get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.ctx().get(&name).cloned())
    }

    fn ctx_set(&mut self, name: String, value: String) -> wasmtime::Result<()> {
        let ctx = self.ctx();
        let room = ctx.len() < 64 || ctx.contains_key(&name);
        if room && name.len() <= 128 && value.len() <= 4096 {
            ctx.insert(name, value);
        } else {
            tracing::warn!(plugin = %self.plugin, "context value `{name}` dropped: too many or too large");
        }
        Ok(())
    }

    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

/// A plugin-visible outcome (`result<_, string>`) of a host call that did not trap.
type Outcome = wasmtime::Result<Result<(), String>>;

impl request_api::Host for CallState {
    fn method(&mut self) -> wasmtime::Result<String> {
        Ok(self.request()?.parts.method.as_str().to_owned())
    }

    fn set_method(&mut self, method: String) -> Outcome {
        let request = self.request()?;
        Ok(match Method::from_bytes(method.as_bytes()) {
            Ok(method) => {
                request.parts.method = method;
                Ok(())
            }
            Err(_) => Err(format!("`{method}` is not an HTTP method")),
        })
    }

    fn path(&mut self) -> wasmtime::Result<String> {
        Ok(self.request()?.parts.uri.path().to_owned())
    }

    fn set_path(&mut self, path: String) -> Outcome {
        let parts = &mut self.request()?.parts;
        if !path.starts_with('/') {
            return Ok(Err(format!("path `{path}` must start with `/`")));
        }
        let query = parts.uri.query().map(str::to_owned);
        Ok(set_path_and_query(parts, &path, query.as_deref()))
    }

    fn query(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.parts.uri.query().map(str::to_owned))
    }

    fn set_query(&mut self, query: Option<String>) -> Outcome {
        let parts = &mut self.request()?.parts;
        let path = parts.uri.path().to_owned();
        Ok(set_path_and_query(parts, &path, query.as_deref()))
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.read_header(Part::Request, &name)
    }

    fn header_all(&mut self, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        self.read_header_all(Part::Request, &name)
    }

    fn header_names(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(names(&self.request()?.parts.headers))
    }

    fn set_header(&mut self, name: String, value: Vec<u8>) -> Outcome {
        self.put_header(Part::Request, &name, value, false)
    }

    fn append_header(&mut self, name: String, value: Vec<u8>) -> Outcome {
        self.put_header(Part::Request, &name, value, true)
    }

    fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.drop_header(Part::Request, &name)
    }

    fn body(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        self.read_body(Part::Request)
    }

    fn set_body(&mut self, body: Vec<u8>) -> Outcome {
        self.write_body(Part::Request, body)
    }

    fn host(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.identity(Part::Request)?.host())
    }

    fn client_ip(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Request)?.client_ip.to_string())
    }

    fn route(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Request)?.route.to_string())
    }

    fn request_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Request)?.request_id())
    }

    fn respond(&mut self, reply: Reply) -> wasmtime::Result<()> {
        self.request()?.reply = Some(reply);
        Ok(())
    }
}

fn set_path_and_query(
    parts: &mut http::request::Parts,
    path: &str,
    query: Option<&str>,
) -> Result<(), String> {
    let text = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut uri_parts = parts.uri.clone().into_parts();
    uri_parts.path_and_query = Some(
        text.parse()
            .map_err(|_| format!("`{text}` is not a valid path and query"))?,
    );
    parts.uri = Uri::from_parts(uri_parts).map_err(|err| err.to_string())?;
    Ok(())
}

impl response_api::Host for CallState {
    fn status(&mut self) -> wasmtime::Result<u16> {
        Ok(self.response()?.status.as_u16())
    }

    fn set_status(&mut self, status: u16) -> Outcome {
        let response = self.response()?;
        Ok(match StatusCode::from_u16(status) {
            Ok(status) => {
                response.status = status;
                Ok(())
            }
            Err(_) => Err(format!("{status} is not an HTTP status")),
        })
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.read_header(Part::Response, &name)
    }

    fn header_all(&mut self, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        self.read_header_all(Part::Response, &name)
    }

    fn header_names(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(names(self.headers(Part::Response)?))
    }

    fn set_header(&mut self, name: String, value: Vec<u8>) -> Outcome {
        self.put_header(Part::Response, &name, value, false)
    }

    fn append_header(&mut self, name: String, value: Vec<u8>) -> Outcome {
        self.put_header(Part::Response, &name, value, true)
    }

    fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.drop_header(Part::Response, &name)
    }

    fn body(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        self.read_body(Part::Response)
    }

    fn set_body(&mut self, body: Vec<u8>) -> Outcome {
        self.write_body(Part::Response, body)
    }

    fn trailer(&mut self, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let response = self.response()?;
        if !response.body_visible {
            return Ok(None);
        }
        let name = header_name(&name).ok();
        Ok(response
            .trailers
            .as_ref()
            .zip(name)
            .and_then(|(trailers, name)| first(trailers, &name)))
    }

    fn set_trailer(&mut self, name: String, value: Vec<u8>) -> Outcome {
        self.in_phase(Part::Response)?;
        if let Err(why) = self.charge(&name, &value) {
            return Ok(Err(why));
        }
        let response = self.response()?;
        if !response.body_visible {
            return Ok(Err("the plugin did not declare `response-body`".into()));
        }
        let name = match header_name(&name) {
            Ok(name) if reserved(&name) => {
                return Ok(Err(format!("`{name}` is managed by the gateway")));
            }
            Ok(name) => name,
            Err(why) => return Ok(Err(why)),
        };
        let value = match header_value(value) {
            Ok(value) => value,
            Err(why) => return Ok(Err(why)),
        };
        response
            .trailers
            .get_or_insert_with(HeaderMap::new)
            .insert(name, value);
        Ok(Ok(()))
    }

    fn remove_trailer(&mut self, name: String) -> wasmtime::Result<()> {
        let response = self.response()?;
        if !response.body_visible {
            return Ok(());
        }
        if let (Ok(name), Some(trailers)) = (header_name(&name), response.trailers.as_mut())
            && !reserved(&name)
        {
            trailers.remove(name);
        }
        Ok(())
    }

    fn request_method(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Response)?.method.as_str().to_owned())
    }

    fn request_path(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Response)?.uri.path().to_owned())
    }

    fn request_host(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.identity(Part::Response)?.host())
    }

    fn client_ip(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Response)?.client_ip.to_string())
    }

    fn route(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Response)?.route.to_string())
    }

    fn request_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.identity(Part::Response)?.request_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_version_is_the_wit_package_s() {
        let wit = include_str!("../../../plugin-sdk/wit/plugin.wit");
        assert!(wit.starts_with(&format!("package wasmgate:plugin@{WORLD_VERSION};")));
    }

    #[test]
    fn reserved_headers_are_refused_except_te_trailers() {
        let mut headers = HeaderMap::new();
        let mut names = HeaderNames::default();
        let mut set = |name, value: &[u8], append| {
            let name = names.parse(name)?;
            set(&mut headers, name, value.to_vec(), append)
        };
        assert!(set("content-length", b"5", false).is_err());
        assert!(set("te", b"gzip", false).is_err());
        assert!(set("x-ok", b"1", true).is_ok());
        assert!(set("TE", b"Trailers", false).is_ok());
        // Remembered names give the same answers.
        assert!(set("x-ok", b"2", true).is_ok());
        assert!(set("te", b"gzip", false).is_err());
        assert!(set("bad name", b"1", false).is_err());
        assert_eq!(headers["te"], "Trailers");
        assert!(!headers.contains_key("content-length"));
    }
}
