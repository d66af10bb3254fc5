//! One client connection: HTTP/1.1 (the gateway's own server, `super::h1`) or HTTP/2 (hyper's),
//! chosen by TLS ALPN or by the first bytes, with the connection-level limits.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::ConnInfo;
use super::h1;
use super::rewind::Rewind;
use crate::proxy::body::ClientBody;
use crate::snapshot::Snapshot;
use crate::upstream::clock_ms;

/// What the watchdog knows about an HTTP/2 connection.
struct Activity {
    last_ms: AtomicU64,
    request_seen: AtomicBool,
}

pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// A request head larger than this is answered with 431.
    pub max_header_bytes: usize,
}

/// Serves a client connection: HTTP/1.1 by the gateway's own server, HTTP/2 (TLS ALPN `h2`,
/// or the preface on a connection without it) by hyper's.
pub async fn serve<I>(
    io: I,
    info: Arc<ConnInfo>,
    state: Arc<ArcSwap<Snapshot>>,
    h2: Arc<http2::Builder<TokioExecutor>>,
    limits: Arc<ConnLimits>,
    drain: CancellationToken,
    alpn_h2: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if alpn_h2 {
        return serve_h2(io, Bytes::new(), info, state, &h2, &limits, drain).await;
    }
    match h1::serve(io, &info, &state, &limits, &drain, true).await {
        h1::Ended::Closed => {}
        h1::Ended::Http2(io, read) => serve_h2(io, read, info, state, &h2, &limits, drain).await,
    }
}

/// An HTTP/2 connection, `read` being the bytes read from it already, with the connection-level
/// limits: the first request must arrive within `header_read_timeout`, a connection without
/// traffic for `idle_timeout` is closed gracefully, and a drain closes it gracefully too
/// (in-flight requests finish first).
async fn serve_h2<I>(
    io: I,
    read: Bytes,
    info: Arc<ConnInfo>,
    state: Arc<ArcSwap<Snapshot>>,
    builder: &http2::Builder<TokioExecutor>,
    limits: &ConnLimits,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted_ms = clock_ms();
    let activity = Arc::new(Activity {
        last_ms: AtomicU64::new(accepted_ms),
        request_seen: AtomicBool::new(false),
    });
    let io = Rewind::new(
        read,
        ActivityIo {
            inner: io,
            activity: activity.clone(),
        },
    );
    let seen = activity.clone();
    let service = service_fn(move |request: http::Request<Incoming>| {
        if !seen.request_seen.load(Ordering::Relaxed) {
            seen.request_seen.store(true, Ordering::Relaxed);
        }
        // The request keeps this snapshot to its end, whatever reloads happen meanwhile.
        let snapshot = state.load_full();
        let info = info.clone();
        let request = request.map(ClientBody::H2);
        async move {
            let mut response = crate::proxy::serve(snapshot, info, request, None).await;
            // hyper writes the head from the map alone.
            if let Err(error) = crate::proxy::body::merge_received_fields(&mut response) {
                tracing::warn!("{error}");
                response = error.to_response();
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let header_ms = millis(limits.header_read_timeout);
    let idle_ms = millis(limits.idle_timeout);
    let mut closing = false;
    loop {
        let now = clock_ms();
        let idle_deadline = activity.last_ms.load(Ordering::Relaxed) + idle_ms;
        let deadline = if activity.request_seen.load(Ordering::Relaxed) {
            idle_deadline
        } else {
            idle_deadline.min(accepted_ms + header_ms)
        };
        let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!("connection ended: {err}");
                }
                return;
            }
            _ = drain.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(wait), if !closing => {
                let now = clock_ms();
                if !activity.request_seen.load(Ordering::Relaxed) && now >= accepted_ms + header_ms {
                    // Nothing useful arrived in time (slowloris before the first head): drop it.
                    return;
                }
                if now >= activity.last_ms.load(Ordering::Relaxed) + idle_ms {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2)
}

/// Records the time of the last read or write for the idle watchdog.
struct ActivityIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I> ActivityIo<I> {
    fn touch(&self) {
        self.activity.last_ms.store(clock_ms(), Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
