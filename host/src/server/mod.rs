//! Listeners: bind, accept (up to `max_connections`), hand each connection to [`conn::serve`],
//! and drain on shutdown: stop accepting, let in-flight requests finish, then return.

mod conn;
pub mod h1;
pub mod rewind;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::snapshot::{ListenerSettings, Snapshot};
use crate::telemetry::metrics::{Listener, metrics};
use conn::ConnLimits;

/// What the proxy knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as text (`X-Forwarded-For`, the access log), formatted once for
    /// the connection's requests.
    pub peer_text: HeaderValue,
    pub tls: bool,
    /// Work that outlives the request but belongs to the connection (upgraded tunnels), so
    /// that a drain waits for it as for the connection itself.
    pub tasks: TaskTracker,
}

/// Bound sockets, ready to serve.
pub struct Listeners {
    plain: Vec<TcpListener>,
    tls: Vec<TcpListener>,
}

impl Listeners {
    pub fn bind(settings: &ListenerSettings) -> io::Result<Listeners> {
        let bind_all = |addrs: &[SocketAddr]| -> io::Result<Vec<TcpListener>> {
            addrs
                .iter()
                .map(|addr| {
                    bind(*addr).map_err(|err| {
                        io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"))
                    })
                })
                .collect()
        };
        Ok(Listeners {
            plain: bind_all(&settings.listen)?,
            tls: bind_all(&settings.tls_listen)?,
        })
    }

    /// Actual addresses (a configured port 0 becomes the port the OS chose).
    pub fn addresses(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let local =
            |list: &[TcpListener]| list.iter().filter_map(|l| l.local_addr().ok()).collect();
        (local(&self.plain), local(&self.tls))
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Serves until `shutdown` resolves, then drains for at most `drain_timeout`.
pub async fn serve(
    listeners: Listeners,
    state: Arc<ArcSwap<Snapshot>>,
    settings: &ListenerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http2_builder(settings));
    let limits = Arc::new(ConnLimits {
        header_read_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        max_header_bytes: settings.max_header_bytes,
    });
    let drain = CancellationToken::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let acceptor = settings.tls.clone().map(TlsAcceptor::from);
    let mut accept_loops = Vec::new();
    let all = listeners
        .plain
        .into_iter()
        .map(|l| (l, None))
        .chain(listeners.tls.into_iter().map(|l| (l, acceptor.clone())));
    for (listener, tls) in all {
        let ctx = AcceptContext {
            state: state.clone(),
            builder: builder.clone(),
            limits: limits.clone(),
            drain: drain.clone(),
            connections: connections.clone(),
            permits: permits.clone(),
            tls,
        };
        accept_loops.push(tokio::spawn(accept_loop(listener, ctx)));
    }
    shutdown.await;
    tracing::info!(
        in_flight_connections = connections.len(),
        "draining: no new connections, finishing in-flight requests"
    );
    drain.cancel();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    connections.close();
    if tokio::time::timeout(settings.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = connections.len(),
            "drain timeout reached; closing remaining connections"
        );
    } else {
        tracing::info!("drained");
    }
}

/// HTTP/1.1 is the gateway's own (`h1`); hyper serves HTTP/2.
fn http2_builder(settings: &ListenerSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

struct AcceptContext {
    state: Arc<ArcSwap<Snapshot>>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    limits: Arc<ConnLimits>,
    drain: CancellationToken,
    connections: TaskTracker,
    permits: Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
}

async fn accept_loop(listener: TcpListener, ctx: AcceptContext) {
    loop {
        // Past max_connections, stop accepting: further clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = ctx.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = ctx.drain.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.drain.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let open = metrics().connection_opened(if ctx.tls.is_some() {
            Listener::https
        } else {
            Listener::http
        });
        let info = Arc::new(ConnInfo {
            peer,
            peer_text: crate::proxy::headers::ip_header_value(peer.ip()),
            tls: ctx.tls.is_some(),
            tasks: ctx.connections.clone(),
        });
        let state = ctx.state.clone();
        let builder = ctx.builder.clone();
        let limits = ctx.limits.clone();
        let drain = ctx.drain.clone();
        let tls = ctx.tls.clone();
        ctx.connections.spawn(async move {
            let _counted = (permit, open);
            match tls {
                None => conn::serve(stream, info, state, builder, limits, drain, false).await,
                Some(initial) => {
                    // Each handshake uses the current snapshot's certificate, so a reload that
                    // brings a new one applies to new connections.
                    let acceptor = state
                        .load()
                        .listeners
                        .tls
                        .clone()
                        .map_or(initial, TlsAcceptor::from);
                    if let Some(stream) =
                        tls_handshake(acceptor, stream, limits.header_read_timeout).await
                    {
                        let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        conn::serve(stream, info, state, builder, limits, drain, alpn_h2).await;
                    }
                }
            }
        });
    }
}

async fn tls_handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!("TLS handshake failed: {err}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}
