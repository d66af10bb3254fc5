//! Logs: human-readable diagnostics on stderr, and one JSON access-log line per request on
//! stdout, written by a background thread so the request path never blocks on I/O.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::proxy::body::OnBodyEnd;

/// The tracing target of access-log events.
pub const ACCESS_TARGET: &str = "wasmgate::access";

/// Installs the subscribers. Keep the guard alive: dropping it flushes the access log.
pub fn init() -> WorkerGuard {
    let (access_writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let access = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_level(false)
        .with_writer(access_writer)
        .with_filter(Targets::new().with_target(ACCESS_TARGET, tracing::Level::INFO));
    let filter = EnvFilter::try_from_env("WASMGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() != ACCESS_TARGET
        }));
    let _ = tracing_subscriber::registry()
        .with(access)
        .with(diagnostics)
        .try_init();
    guard
}

/// What the access log says about one request; written when the response body ends.
pub struct AccessRecord {
    start: Instant,
    client_ip: IpAddr,
    method: Method,
    path: String,
    request_id: HeaderValue,
    pub route: Option<Arc<str>>,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub attempts: u32,
    pub error: Option<&'static str>,
}

impl AccessRecord {
    pub fn new<B>(client_ip: IpAddr, request: &Request<B>, request_id: HeaderValue) -> Self {
        AccessRecord {
            start: Instant::now(),
            client_ip,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            request_id,
            route: None,
            status: 0,
            upstream: None,
            attempts: 0,
            error: None,
        }
    }
}

impl OnBodyEnd for AccessRecord {
    fn on_end(self: Box<Self>, bytes: u64, complete: bool) {
        let latency_us = self.start.elapsed().as_micros() as u64;
        tracing::info!(
            target: ACCESS_TARGET,
            client_ip = %self.client_ip,
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref().unwrap_or(""),
            status = self.status,
            upstream = self.upstream.as_deref().unwrap_or(""),
            attempts = self.attempts,
            latency_us,
            bytes,
            complete,
            request_id = self.request_id.to_str().unwrap_or(""),
            error = self.error.unwrap_or(""),
        );
    }
}
