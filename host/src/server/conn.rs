//! One client connection: HTTP/1.1 or HTTP/2 (detected), with the connection-level limits:
//! the first request head must arrive within `header_read_timeout` (hyper enforces it for later
//! HTTP/1.1 heads), a connection without traffic for `idle_timeout` is closed gracefully, and a
//! drain closes it gracefully too (in-flight requests finish first).

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::ConnInfo;
use super::framing::FramingGuard;
use crate::snapshot::Snapshot;
use crate::upstream::clock_ms;

/// What the watchdog knows about a connection.
struct Activity {
    last_ms: AtomicU64,
    request_seen: AtomicBool,
    /// Request-smuggling verdicts from the bytes read (HTTP/1 only).
    framing: parking_lot::Mutex<FramingGuard>,
}

pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

pub async fn serve<I>(
    io: I,
    info: Arc<ConnInfo>,
    state: Arc<ArcSwap<Snapshot>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<ConnLimits>,
    drain: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted_ms = clock_ms();
    let activity = Arc::new(Activity {
        last_ms: AtomicU64::new(accepted_ms),
        request_seen: AtomicBool::new(false),
        framing: parking_lot::Mutex::new(FramingGuard::default()),
    });
    let io = ActivityIo {
        inner: io,
        activity: activity.clone(),
    };
    let seen = activity.clone();
    let service = service_fn(move |request| {
        if !seen.request_seen.load(Ordering::Relaxed) {
            seen.request_seen.store(true, Ordering::Relaxed);
        }
        let framing_error = if request.version() < http::Version::HTTP_2 {
            seen.framing.lock().next_verdict()
        } else {
            None
        };
        // The request keeps this snapshot to its end, whatever reloads happen meanwhile.
        let snapshot = state.load_full();
        let info = info.clone();
        async move {
            Ok::<_, Infallible>(crate::proxy::serve(snapshot, info, request, framing_error).await)
        }
    });
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
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
            self.activity
                .framing
                .lock()
                .observe(&buf.filled()[before..]);
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
