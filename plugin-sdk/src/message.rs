//! [`Request`] and [`Response`]: what a plugin sees. In the gateway they stand for the
//! gateway's own request or response of the running call (each method reads or changes one
//! part, through the `request` and `response` interfaces); in native tests they wrap a
//! [`TestRequest`] or [`TestResponse`].

use crate::bindings::wasmgate::plugin::{host, request, response};
use crate::testing::{TestRequest, TestResponse};

enum RequestRef<'a> {
    /// The gateway's request of the running call.
    Host,
    Test(&'a mut TestRequest),
}

/// The request being handled.
pub struct Request<'a> {
    inner: RequestRef<'a>,
}

enum ResponseRef<'a> {
    /// The gateway's response of the running call.
    Host,
    Test(&'a mut TestResponse),
}

/// The response being returned.
pub struct Response<'a> {
    inner: ResponseRef<'a>,
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.and_then(|b| String::from_utf8(b).ok())
}

impl<'a> Request<'a> {
    pub(crate) fn from_host() -> Self {
        Request {
            inner: RequestRef::Host,
        }
    }

    pub(crate) fn from_test(request: &'a mut TestRequest) -> Self {
        Request {
            inner: RequestRef::Test(request),
        }
    }

    pub fn method(&self) -> String {
        match &self.inner {
            RequestRef::Host => request::method(),
            RequestRef::Test(t) => t.method.clone(),
        }
    }

    pub fn set_method(&mut self, method: &str) -> Result<(), String> {
        match &mut self.inner {
            RequestRef::Host => request::set_method(method),
            RequestRef::Test(t) => {
                t.method = method.to_owned();
                Ok(())
            }
        }
    }

    /// The path without the query (percent-encoded, as received).
    pub fn path(&self) -> String {
        match &self.inner {
            RequestRef::Host => request::path(),
            RequestRef::Test(t) => t.path.clone(),
        }
    }

    pub fn set_path(&mut self, path: &str) -> Result<(), String> {
        match &mut self.inner {
            RequestRef::Host => request::set_path(path),
            RequestRef::Test(t) => {
                if !path.starts_with('/') {
                    return Err(format!("path `{path}` must start with `/`"));
                }
                t.path = path.to_owned();
                Ok(())
            }
        }
    }

    /// The query string without `?`.
    pub fn query(&self) -> Option<String> {
        match &self.inner {
            RequestRef::Host => request::query(),
            RequestRef::Test(t) => t.query.clone(),
        }
    }

    pub fn set_query(&mut self, query: Option<&str>) -> Result<(), String> {
        match &mut self.inner {
            RequestRef::Host => request::set_query(query),
            RequestRef::Test(t) => {
                t.query = query.map(str::to_owned);
                Ok(())
            }
        }
    }

    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        match &self.inner {
            RequestRef::Host => request::header(name),
            RequestRef::Test(t) => t.headers.first(name),
        }
    }

    /// First value of a header, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        text(self.header(name))
    }

    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        match &self.inner {
            RequestRef::Host => request::header_all(name),
            RequestRef::Test(t) => t.headers.all(name),
        }
    }

    pub fn header_names(&self) -> Vec<String> {
        match &self.inner {
            RequestRef::Host => request::header_names(),
            RequestRef::Test(t) => t.headers.names(),
        }
    }

    /// Replaces every value of the header.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            RequestRef::Host => request::set_header(name, value.as_ref()),
            RequestRef::Test(t) => t.headers.set(name, value.as_ref()),
        }
    }

    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            RequestRef::Host => request::append_header(name, value.as_ref()),
            RequestRef::Test(t) => t.headers.append(name, value.as_ref()),
        }
    }

    pub fn remove_header(&mut self, name: &str) {
        match &mut self.inner {
            RequestRef::Host => request::remove_header(name),
            RequestRef::Test(t) => t.headers.remove(name),
        }
    }

    /// The whole body; `None` unless [`Capabilities::request_body`](crate::Capabilities) was declared.
    pub fn body(&self) -> Option<Vec<u8>> {
        match &self.inner {
            RequestRef::Host => request::body(),
            RequestRef::Test(t) => t.body.clone(),
        }
    }

    pub fn set_body(&mut self, body: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            RequestRef::Host => request::set_body(body.as_ref()),
            RequestRef::Test(t) => {
                t.body = Some(body.as_ref().to_vec());
                Ok(())
            }
        }
    }

    /// The host the client asked for (HTTP/2's `:authority`, else the `Host` header), with
    /// its port if it had one.
    pub fn host(&self) -> Option<String> {
        match &self.inner {
            RequestRef::Host => request::host(),
            RequestRef::Test(t) => t.host.clone(),
        }
    }

    /// The client's address (after the gateway's `trusted_proxies`).
    pub fn client_ip(&self) -> String {
        match &self.inner {
            RequestRef::Host => request::client_ip(),
            RequestRef::Test(t) => t.client_ip.clone(),
        }
    }

    /// The route's name, or `#N` for unnamed routes.
    pub fn route(&self) -> String {
        match &self.inner {
            RequestRef::Host => request::route(),
            RequestRef::Test(t) => t.route.clone(),
        }
    }

    pub fn request_id(&self) -> String {
        match &self.inner {
            RequestRef::Host => request::request_id(),
            RequestRef::Test(t) => t.request_id.clone(),
        }
    }

    /// A context value set earlier in this request's chain (`ctx:NAME`).
    pub fn ctx(&self, name: &str) -> Option<String> {
        match &self.inner {
            RequestRef::Host => host::ctx_get(name),
            RequestRef::Test(t) => t.ctx.get(name).cloned(),
        }
    }

    /// Sets a context value for later plugins, the rate limiter, templates and the access log.
    pub fn set_ctx(&mut self, name: &str, value: &str) {
        match &mut self.inner {
            RequestRef::Host => host::ctx_set(name, value),
            RequestRef::Test(t) => {
                t.ctx.insert(name.to_owned(), value.to_owned());
            }
        }
    }
}

impl<'a> Response<'a> {
    pub(crate) fn from_host() -> Self {
        Response {
            inner: ResponseRef::Host,
        }
    }

    pub(crate) fn from_test(response: &'a mut TestResponse) -> Self {
        Response {
            inner: ResponseRef::Test(response),
        }
    }

    pub fn status(&self) -> u16 {
        match &self.inner {
            ResponseRef::Host => response::status(),
            ResponseRef::Test(t) => t.status,
        }
    }

    pub fn set_status(&mut self, status: u16) -> Result<(), String> {
        match &mut self.inner {
            ResponseRef::Host => response::set_status(status),
            ResponseRef::Test(t) => {
                if !(100..=999).contains(&status) {
                    return Err(format!("{status} is not an HTTP status"));
                }
                t.status = status;
                Ok(())
            }
        }
    }

    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        match &self.inner {
            ResponseRef::Host => response::header(name),
            ResponseRef::Test(t) => t.headers.first(name),
        }
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        text(self.header(name))
    }

    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        match &self.inner {
            ResponseRef::Host => response::header_all(name),
            ResponseRef::Test(t) => t.headers.all(name),
        }
    }

    pub fn header_names(&self) -> Vec<String> {
        match &self.inner {
            ResponseRef::Host => response::header_names(),
            ResponseRef::Test(t) => t.headers.names(),
        }
    }

    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            ResponseRef::Host => response::set_header(name, value.as_ref()),
            ResponseRef::Test(t) => t.headers.set(name, value.as_ref()),
        }
    }

    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            ResponseRef::Host => response::append_header(name, value.as_ref()),
            ResponseRef::Test(t) => t.headers.append(name, value.as_ref()),
        }
    }

    pub fn remove_header(&mut self, name: &str) {
        match &mut self.inner {
            ResponseRef::Host => response::remove_header(name),
            ResponseRef::Test(t) => t.headers.remove(name),
        }
    }

    /// The whole body; `None` unless [`Capabilities::response_body`](crate::Capabilities) was declared.
    pub fn body(&self) -> Option<Vec<u8>> {
        match &self.inner {
            ResponseRef::Host => response::body(),
            ResponseRef::Test(t) => t.body.clone(),
        }
    }

    pub fn set_body(&mut self, body: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            ResponseRef::Host => response::set_body(body.as_ref()),
            ResponseRef::Test(t) => {
                t.body = Some(body.as_ref().to_vec());
                Ok(())
            }
        }
    }

    pub fn trailer(&self, name: &str) -> Option<Vec<u8>> {
        match &self.inner {
            ResponseRef::Host => response::trailer(name),
            ResponseRef::Test(t) => t.trailers.first(name),
        }
    }

    pub fn set_trailer(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        match &mut self.inner {
            ResponseRef::Host => response::set_trailer(name, value.as_ref()),
            ResponseRef::Test(t) => t.trailers.set(name, value.as_ref()),
        }
    }

    /// Removes a trailer (ignored without `response_body`, and for reserved names).
    pub fn remove_trailer(&mut self, name: &str) {
        match &mut self.inner {
            ResponseRef::Host => response::remove_trailer(name),
            ResponseRef::Test(t) => t.trailers.remove(name),
        }
    }

    /// The method of the request this response answers, as the client sent it.
    pub fn request_method(&self) -> String {
        match &self.inner {
            ResponseRef::Host => response::request_method(),
            ResponseRef::Test(t) => t.request.method.clone(),
        }
    }

    /// The path (without the query) of the request this response answers, as the client
    /// sent it.
    pub fn request_path(&self) -> String {
        match &self.inner {
            ResponseRef::Host => response::request_path(),
            ResponseRef::Test(t) => t.request.path.clone(),
        }
    }

    /// The host the client asked for; see [`Request::host`].
    pub fn request_host(&self) -> Option<String> {
        match &self.inner {
            ResponseRef::Host => response::request_host(),
            ResponseRef::Test(t) => t.request.host.clone(),
        }
    }

    /// The client's address; see [`Request::client_ip`].
    pub fn client_ip(&self) -> String {
        match &self.inner {
            ResponseRef::Host => response::client_ip(),
            ResponseRef::Test(t) => t.request.client_ip.clone(),
        }
    }

    /// The route's name, or `#N` for unnamed routes.
    pub fn route(&self) -> String {
        match &self.inner {
            ResponseRef::Host => response::route(),
            ResponseRef::Test(t) => t.request.route.clone(),
        }
    }

    pub fn request_id(&self) -> String {
        match &self.inner {
            ResponseRef::Host => response::request_id(),
            ResponseRef::Test(t) => t.request.request_id.clone(),
        }
    }

    /// A context value of this request (`ctx:NAME`).
    pub fn ctx(&self, name: &str) -> Option<String> {
        match &self.inner {
            ResponseRef::Host => host::ctx_get(name),
            ResponseRef::Test(t) => t.ctx.get(name).cloned(),
        }
    }

    pub fn set_ctx(&mut self, name: &str, value: &str) {
        match &mut self.inner {
            ResponseRef::Host => host::ctx_set(name, value),
            ResponseRef::Test(t) => {
                t.ctx.insert(name.to_owned(), value.to_owned());
            }
        }
    }
}
