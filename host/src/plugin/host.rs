//! The gateway's side of the plugin world: the data a call sees (in the store), and the host
//! functions plugins call through their request/response handles.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../plugin-sdk/wit",
    with: {
        "wasmgate:plugin/http.request": RequestHandle,
        "wasmgate:plugin/http.response": ResponseHandle,
    },
});

use self::wasmgate::plugin::http::{self as api, Level};
use super::loan::{Borrowed, Loan};
use crate::http1::ReceivedFields;
pub use Plugin as PluginWorld;
pub use PluginPre as PluginWorldPre;
pub use exports::wasmgate::plugin::handler::{Action, Reply};

/// The request handle's type (the data lives in [`CallState::request`]).
pub struct RequestHandle;
/// The response handle's type (the data lives in [`CallState::response`]).
pub struct ResponseHandle;

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

    pub(crate) fn empty() -> Self {
        RequestInfo {
            client_ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            route: Arc::from(""),
            request_id: HeaderValue::from_static(""),
            method: Method::GET,
            uri: Uri::default(),
            host_header: None,
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

/// The request as the plugin sees it.
pub struct RequestView {
    pub parts: http::request::Parts,
    /// `Some` when some plugin in the chain asked for the request body.
    pub body: Option<Bytes>,
    pub body_visible: bool,
}

/// The response as the plugin sees it.
pub struct ResponseView {
    /// Its headers hold what the plugins set, and the upstream's fields once `received` is
    /// merged in.
    pub parts: http::response::Parts,
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
            && let Err(why) = fields.merge_into(&mut self.parts.headers)
        {
            // httparse admits only what the map admits: not expected to happen.
            tracing::warn!("the upstream's response fields cannot be shown to plugins: {why}");
        }
        &mut self.parts.headers
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
    /// Stand-ins for host calls made outside the phase their handle belongs to: wasmtime's
    /// handle checks rule that out, so these only keep the host functions total.
    spare: Option<Box<Spare>>,
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
            spare: None,
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

    fn request(&mut self) -> &mut RequestView {
        // The request handle exists only during `on-request`, when the view is lent.
        match self.loan.request() {
            Some(view) => view,
            None => &mut self.spare.get_or_insert_with(Spare::boxed).request,
        }
    }

    fn response(&mut self) -> &mut ResponseView {
        match self.loan.response() {
            Some(view) => view,
            None => &mut self.spare.get_or_insert_with(Spare::boxed).response,
        }
    }

    fn ctx(&mut self) -> &mut Context {
        match self.loan.ctx() {
            Some(ctx) => ctx,
            None => &mut self.spare.get_or_insert_with(Spare::boxed).ctx,
        }
    }

    fn info(&mut self) -> &RequestInfo {
        match self.loan.info() {
            Some(info) => info,
            None => &self.spare.get_or_insert_with(Spare::boxed).info,
        }
    }

    /// The headers of either message, complete (see [`ResponseView::received`]).
    fn headers(&mut self, part: Part) -> &mut HeaderMap {
        match part {
            Part::Request => &mut self.request().parts.headers,
            Part::Response => self.response().complete_headers(),
        }
    }

    /// `set-header` / `append-header` of either message, within the call's output budget.
    fn put_header(
        &mut self,
        part: Part,
        name: &str,
        value: Vec<u8>,
        append: bool,
    ) -> Result<(), String> {
        self.charge(name, &value)?;
        let name = self.names.parse(name)?;
        let headers = match (part, append) {
            // Setting replaces every field of the name, received or not: the received fields
            // need not be merged for that (the writer skips those the map names).
            (Part::Response, false) => &mut self.response().parts.headers,
            _ => self.headers(part),
        };
        set(headers, name, value, append)
    }

    fn drop_header(&mut self, part: Part, name: &str) {
        if let Ok(name) = self.names.parse(name)
            && !reserved(&name)
        {
            self.headers(part).remove(name);
        }
    }

    /// The body slot of either message and whether the current plugin declared it.
    fn body_slot(&mut self, part: Part) -> (&mut Option<Bytes>, bool) {
        match part {
            Part::Request => {
                let request = self.request();
                (&mut request.body, request.body_visible)
            }
            Part::Response => {
                let response = self.response();
                (&mut response.body, response.body_visible)
            }
        }
    }

    fn read_body(&mut self, part: Part) -> Option<Vec<u8>> {
        match self.body_slot(part) {
            (body, true) => body.as_ref().map(|b| b.to_vec()),
            (_, false) => None,
        }
    }

    fn write_body(&mut self, part: Part, new_body: Vec<u8>) -> Result<(), String> {
        match self.body_slot(part) {
            (body, true) => {
                *body = Some(Bytes::from(new_body));
                Ok(())
            }
            (_, false) => Err(match part {
                Part::Request => "the plugin did not declare `request-body`".into(),
                Part::Response => "the plugin did not declare `response-body`".into(),
            }),
        }
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

/// See [`CallState::spare`].
struct Spare {
    request: RequestView,
    response: ResponseView,
    ctx: Context,
    info: RequestInfo,
}

impl Spare {
    fn boxed() -> Box<Spare> {
        Box::new(Spare {
            request: empty_request(),
            response: empty_response(),
            ctx: Context::new(),
            info: RequestInfo::empty(),
        })
    }
}

fn empty_request() -> RequestView {
    let (parts, ()) = http::Request::new(()).into_parts();
    RequestView {
        parts,
        body: None,
        body_visible: false,
    }
}

fn empty_response() -> ResponseView {
    let (parts, ()) = http::Response::new(()).into_parts();
    ResponseView {
        parts,
        received: None,
        body: None,
        trailers: None,
        body_visible: false,
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

/// Header names a plugin sets or removes, parsed once per instance: a plugin names the same few
/// headers on every request, and parsing a name that is not a standard one allocates it.
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

fn first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

fn all(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
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

impl api::Host for CallState {
    fn ctx_get(&mut self, name: String) -> Option<String> {
        self.ctx().get(&name).cloned()
    }

    fn ctx_set(&mut self, name: String, value: String) {
        let ctx = self.ctx();
        let room = ctx.len() < 64 || ctx.contains_key(&name);
        if room && name.len() <= 128 && value.len() <= 4096 {
            ctx.insert(name, value);
        } else {
            tracing::warn!(plugin = %self.plugin, "context value `{name}` dropped: too many or too large");
        }
    }

    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl api::HostRequest for CallState {
    fn method(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().parts.method.as_str().to_owned()
    }

    fn set_method(&mut self, _: Resource<RequestHandle>, method: String) -> Result<(), String> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("`{method}` is not an HTTP method"))?;
        self.request().parts.method = method;
        Ok(())
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().parts.uri.path().to_owned()
    }

    fn set_path(&mut self, _: Resource<RequestHandle>, path: String) -> Result<(), String> {
        if !path.starts_with('/') {
            return Err(format!("path `{path}` must start with `/`"));
        }
        let query = self.request().parts.uri.query().map(str::to_owned);
        set_path_and_query(&mut self.request().parts, &path, query.as_deref())
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> Option<String> {
        self.request().parts.uri.query().map(str::to_owned)
    }

    fn set_query(
        &mut self,
        _: Resource<RequestHandle>,
        query: Option<String>,
    ) -> Result<(), String> {
        let path = self.request().parts.uri.path().to_owned();
        set_path_and_query(&mut self.request().parts, &path, query.as_deref())
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<Vec<u8>> {
        first(&self.request().parts.headers, &name)
    }

    fn header_all(&mut self, _: Resource<RequestHandle>, name: String) -> Vec<Vec<u8>> {
        all(&self.request().parts.headers, &name)
    }

    fn header_names(&mut self, _: Resource<RequestHandle>) -> Vec<String> {
        names(&self.request().parts.headers)
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.put_header(Part::Request, &name, value, false)
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.put_header(Part::Request, &name, value, true)
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) {
        self.drop_header(Part::Request, &name);
    }

    fn body(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        self.read_body(Part::Request)
    }

    fn set_body(&mut self, _: Resource<RequestHandle>, body: Vec<u8>) -> Result<(), String> {
        self.write_body(Part::Request, body)
    }

    fn host(&mut self, _: Resource<RequestHandle>) -> Option<String> {
        self.info().host()
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> String {
        self.info().client_ip.to_string()
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> String {
        self.info().route.to_string()
    }

    fn request_id(&mut self, _: Resource<RequestHandle>) -> String {
        self.info().request_id()
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
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

impl api::HostResponse for CallState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> u16 {
        self.response().parts.status.as_u16()
    }

    fn set_status(&mut self, _: Resource<ResponseHandle>, status: u16) -> Result<(), String> {
        self.response().parts.status =
            StatusCode::from_u16(status).map_err(|_| format!("{status} is not an HTTP status"))?;
        Ok(())
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> Option<Vec<u8>> {
        first(self.headers(Part::Response), &name)
    }

    fn header_all(&mut self, _: Resource<ResponseHandle>, name: String) -> Vec<Vec<u8>> {
        all(self.headers(Part::Response), &name)
    }

    fn header_names(&mut self, _: Resource<ResponseHandle>) -> Vec<String> {
        names(self.headers(Part::Response))
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.put_header(Part::Response, &name, value, false)
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.put_header(Part::Response, &name, value, true)
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) {
        self.drop_header(Part::Response, &name);
    }

    fn body(&mut self, _: Resource<ResponseHandle>) -> Option<Vec<u8>> {
        self.read_body(Part::Response)
    }

    fn set_body(&mut self, _: Resource<ResponseHandle>, body: Vec<u8>) -> Result<(), String> {
        self.write_body(Part::Response, body)
    }

    fn trailer(&mut self, _: Resource<ResponseHandle>, name: String) -> Option<Vec<u8>> {
        let response = self.response();
        if !response.body_visible {
            return None;
        }
        response.trailers.as_ref().and_then(|t| first(t, &name))
    }

    fn set_trailer(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.charge(&name, &value)?;
        let response = self.response();
        if !response.body_visible {
            return Err("the plugin did not declare `response-body`".into());
        }
        let name = header_name(&name)?;
        if reserved(&name) {
            return Err(format!("`{name}` is managed by the gateway"));
        }
        let value = header_value(value)?;
        response
            .trailers
            .get_or_insert_with(HeaderMap::new)
            .insert(name, value);
        Ok(())
    }

    fn remove_trailer(&mut self, _: Resource<ResponseHandle>, name: String) {
        let response = self.response();
        if !response.body_visible {
            return;
        }
        if let (Ok(name), Some(trailers)) = (header_name(&name), response.trailers.as_mut())
            && !reserved(&name)
        {
            trailers.remove(name);
        }
    }

    fn request_method(&mut self, _: Resource<ResponseHandle>) -> String {
        self.info().method.as_str().to_owned()
    }

    fn request_path(&mut self, _: Resource<ResponseHandle>) -> String {
        self.info().uri.path().to_owned()
    }

    fn request_host(&mut self, _: Resource<ResponseHandle>) -> Option<String> {
        self.info().host()
    }

    fn client_ip(&mut self, _: Resource<ResponseHandle>) -> String {
        self.info().client_ip.to_string()
    }

    fn route(&mut self, _: Resource<ResponseHandle>) -> String {
        self.info().route.to_string()
    }

    fn request_id(&mut self, _: Resource<ResponseHandle>) -> String {
        self.info().request_id()
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
