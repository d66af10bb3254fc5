//! The one error type of the proxy path.
//!
//! Every failure knows which side caused it and whether sending the request again is safe;
//! the mapping to an HTTP status and the small JSON body a client sees lives here and only here.

use std::error::Error as StdError;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request itself is bad or the client went away.
    Client,
    /// The upstream refused, reset, timed out or answered badly.
    Upstream,
    /// The gateway's own configuration or state (no route, no healthy target).
    Gateway,
    /// A plugin failed (trap, time limit, bad output).
    Plugin,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Gateway => "gateway",
            Side::Plugin => "plugin",
        }
    }
}

/// What went wrong; each kind has exactly one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or ambiguous request (smuggling attempts, bad framing, bad URI).
    BadRequest,
    /// Request body over `max_body_bytes`.
    BodyTooLarge,
    /// The client's body stream failed while we forwarded it.
    ClientBody,
    NoRoute,
    /// Every target is unhealthy or ejected.
    NoHealthyTarget,
    /// TCP/TLS connection to the target could not be established: nothing was sent.
    ConnectFailed,
    /// Connecting took longer than `connect_timeout`: nothing was sent.
    ConnectTimeout,
    /// The connection failed after the request (or part of it) was sent.
    UpstreamReset,
    /// The upstream did not answer within the (per-try) timeout.
    UpstreamTimeout,
    /// The upstream answered with something that is not valid HTTP.
    UpstreamProtocol,
    /// A plugin needs the upstream's response body, and it is over `max_body_bytes`.
    ResponseTooLarge,
    /// A plugin failed while handling the request.
    PluginFailed,
    /// The route's `rate_limit` refused the request.
    RateLimited,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest | ErrorKind::ClientBody => StatusCode::BAD_REQUEST,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NoHealthyTarget => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ConnectFailed
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocol
            | ErrorKind::ResponseTooLarge => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::PluginFailed | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What a client is told for errors that are not its own: nothing about our insides.
    pub fn public_message(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::ClientBody => "the request is malformed",
            ErrorKind::BodyTooLarge => "the request body is too large",
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::RateLimited => "too many requests",
            ErrorKind::NoHealthyTarget => "no healthy upstream is available",
            ErrorKind::ConnectFailed => "the upstream could not be reached",
            ErrorKind::ConnectTimeout => "connecting to the upstream timed out",
            ErrorKind::UpstreamReset => "the upstream closed the connection",
            ErrorKind::UpstreamTimeout => "the upstream did not answer in time",
            ErrorKind::UpstreamProtocol => "the upstream sent an invalid response",
            ErrorKind::ResponseTooLarge => "the upstream's response is too large to process",
            ErrorKind::PluginFailed => "a plugin failed",
            ErrorKind::Internal => "internal error",
        }
    }

    /// Short machine-readable code used in the JSON body and the access log.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::ClientBody => "client_body_error",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::NoHealthyTarget => "no_healthy_upstream",
            ErrorKind::ConnectFailed => "upstream_connect_failed",
            ErrorKind::ConnectTimeout => "upstream_connect_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol_error",
            ErrorKind::ResponseTooLarge => "upstream_response_too_large",
            ErrorKind::PluginFailed => "plugin_failed",
            ErrorKind::Internal => "internal_error",
        }
    }
}

/// Whether the request may be sent again after this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Nothing reached the upstream: safe for any method.
    NothingSent,
    /// The upstream may have seen (part of) the request: only for methods the policy lists.
    MaybeProcessed,
    /// Retrying cannot help (the client is at fault, or no target exists).
    Never,
}

#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub side: Side,
    pub retry: RetrySafety,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
    headers: Option<Box<HeaderMap>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let (side, retry) = match kind {
            ErrorKind::BadRequest
            | ErrorKind::BodyTooLarge
            | ErrorKind::ClientBody
            | ErrorKind::RateLimited => (Side::Client, RetrySafety::Never),
            ErrorKind::NoRoute | ErrorKind::NoHealthyTarget | ErrorKind::Internal => {
                (Side::Gateway, RetrySafety::Never)
            }
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
                (Side::Upstream, RetrySafety::NothingSent)
            }
            ErrorKind::UpstreamReset | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol => {
                (Side::Upstream, RetrySafety::MaybeProcessed)
            }
            // The upstream did its work; only the gateway cannot buffer the answer.
            ErrorKind::ResponseTooLarge => (Side::Upstream, RetrySafety::Never),
            ErrorKind::PluginFailed => (Side::Plugin, RetrySafety::Never),
        };
        ProxyError {
            kind,
            side,
            retry,
            message: message.into(),
            source: None,
            headers: None,
        }
    }

    /// Headers the error response carries (a 429's `Retry-After`, say).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = Some(Box::new(headers));
        self
    }

    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response a client sees: the status and `{"error": code, "message": ...}`.
    /// A client learns the details of its own mistakes; for everything else it gets the kind's
    /// public message, and the details (addresses, error chains) go to the log.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let message = match self.side {
            Side::Client => self.message.as_str(),
            _ => self.kind.public_message(),
        };
        let mut response = error_response(self.status(), self.kind.code(), message);
        if let Some(headers) = &self.headers {
            response
                .headers_mut()
                .extend(headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        }
        response
    }
}

/// A small JSON error response; used for every error the gateway itself answers.
pub fn error_response<B: From<Bytes>>(
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<B> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} side): {}",
            self.kind.code(),
            self.side.as_str(),
            self.message
        )?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
            let mut next = source.source();
            while let Some(cause) = next {
                write!(f, ": {cause}")?;
                next = cause.source();
            }
        }
        Ok(())
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Finds an error of type `T` anywhere in a source chain.
pub fn find_in_chain<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        next = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retry_safety() {
        let connect = ProxyError::new(ErrorKind::ConnectFailed, "refused");
        assert_eq!(connect.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(connect.retry, RetrySafety::NothingSent);
        let reset = ProxyError::new(ErrorKind::UpstreamReset, "reset");
        assert_eq!(reset.retry, RetrySafety::MaybeProcessed);
        assert_eq!(
            ProxyError::new(ErrorKind::UpstreamTimeout, "t").status(),
            504
        );
        assert_eq!(ProxyError::new(ErrorKind::BodyTooLarge, "b").status(), 413);
        assert_eq!(
            ProxyError::new(ErrorKind::NoHealthyTarget, "n").status(),
            503
        );
        assert_eq!(ProxyError::new(ErrorKind::NoRoute, "n").side, Side::Gateway);
    }
}

/// Every problem found in a config, printed one per line as `file:line:col: message`.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<crate::config::ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl StdError for ConfigErrors {}
