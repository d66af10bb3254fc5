//! Logs: human-readable diagnostics on stderr (tracing), and one JSON access-log line per
//! request on stdout or to a file (`server.access_log`), batched and written by a background
//! thread ([`access_log`]) so the request path never waits for I/O; and Prometheus
//! [`metrics`].

pub mod access_log;
pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Request};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::proxy::body::OnBodyEnd;
use crate::proxy::trace::TraceId;
use access_log::{AccessLog, json_int, json_plain, json_str, json_time};
use metrics::{RouteMetrics, metrics};

/// Flushes the access log when dropped (at the end of `main`).
pub struct LogGuard;

impl Drop for LogGuard {
    fn drop(&mut self) {
        AccessLog::flush(Duration::from_secs(2));
    }
}

/// Installs the diagnostics subscriber and the access log. Keep the guard alive.
pub fn init() -> LogGuard {
    init_diagnostics("info");
    AccessLog::install();
    LogGuard
}

/// The diagnostic log alone, on stderr, at `WASMGATE_LOG` or else `default_level`: what
/// `wasmgate check` sets up (at "warn"), so that warnings from building the snapshot (an
/// unusable plugin cache, a compile process that could not run) are not lost there.
pub fn init_diagnostics(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("WASMGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(diagnostics).try_init();
}

/// Reopens the access-log file on every SIGUSR1 (what logrotate's `postrotate` sends).
pub fn reopen_access_log_on_sigusr1() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::error!("cannot listen for SIGUSR1; reopening the access log by signal is off");
        return;
    };
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening the access log");
            AccessLog::reopen();
        }
    });
}

/// What the access log says about one request; written when the response body ends.
pub struct AccessRecord {
    start: Instant,
    time: SystemTime,
    /// The client's address as text (`proxy::headers::ip_header_value`).
    client_ip: HeaderValue,
    method: Method,
    path: String,
    request_id: HeaderValue,
    trace_id: TraceId,
    /// The matched route (its name and series); `None` for a request no route matched.
    pub route: Option<Arc<RouteMetrics>>,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub attempts: u32,
    pub error: Option<&'static str>,
    /// Context values plugins set (`ctx:NAME`).
    pub ctx: crate::plugin::Context,
}

impl AccessRecord {
    pub fn new<B>(
        client_ip: HeaderValue,
        request: &Request<B>,
        request_id: HeaderValue,
        trace_id: TraceId,
    ) -> Self {
        AccessRecord {
            start: Instant::now(),
            time: SystemTime::now(),
            client_ip,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            request_id,
            trace_id,
            route: None,
            status: 0,
            upstream: None,
            attempts: 0,
            error: None,
            ctx: crate::plugin::Context::new(),
        }
    }
}

impl AccessRecord {
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }
}

impl OnBodyEnd for AccessRecord {
    fn on_end(self: Box<Self>, bytes: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        let route = self
            .route
            .as_deref()
            .unwrap_or_else(|| metrics().unrouted());
        route.request_done(&self.method, self.status, elapsed);
        let latency_us = elapsed.as_micros() as u64;
        AccessLog::record(|out| {
            out.extend_from_slice(b"{\"timestamp\":");
            json_time(out, self.time);
            out.extend_from_slice(b",\"client_ip\":");
            // An IpAddr the gateway formatted (`headers::ip_header_value`), never header text.
            json_plain(out, self.client_ip.as_bytes());
            out.extend_from_slice(b",\"method\":");
            // A method is a token (RFC 9110 5.6.2): no quote, backslash or control.
            json_plain(out, self.method.as_str().as_bytes());
            out.extend_from_slice(b",\"path\":");
            json_str(out, &self.path);
            out.extend_from_slice(b",\"route\":");
            json_str(out, route.name());
            out.extend_from_slice(b",\"status\":");
            json_int(out, self.status);
            out.extend_from_slice(b",\"upstream\":");
            json_str(out, self.upstream.as_deref().unwrap_or(""));
            out.extend_from_slice(b",\"attempts\":");
            json_int(out, self.attempts);
            out.extend_from_slice(b",\"latency_us\":");
            json_int(out, latency_us);
            out.extend_from_slice(b",\"bytes\":");
            json_int(out, bytes);
            out.extend_from_slice(if complete {
                b",\"complete\":true"
            } else {
                b",\"complete\":false"
            });
            out.extend_from_slice(b",\"request_id\":");
            json_str(out, self.request_id.to_str().unwrap_or(""));
            out.extend_from_slice(b",\"trace_id\":");
            json_plain(out, self.trace_id.as_str().as_bytes());
            out.extend_from_slice(b",\"error\":");
            json_str(out, self.error.unwrap_or(""));
            if !self.ctx.is_empty() {
                out.extend_from_slice(b",\"ctx\":{");
                for (i, (name, value)) in self.ctx.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_str(out, name);
                    out.push(b':');
                    json_str(out, value);
                }
                out.push(b'}');
            }
            out.push(b'}');
        });
    }
}
