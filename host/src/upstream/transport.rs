//! Connections to upstream targets: connect (TCP, optionally TLS), speak HTTP/1.1 or HTTP/2
//! over them, and keep idle HTTP/1.1 connections per target for reuse (HTTP/2 connections are
//! shared by concurrent requests). Most HTTP/1.1 exchanges go through the proxy's own client
//! ([`super::h1`]); hyper's connection API carries HTTP/2, upgrades and streamed request bodies.
//!
//! Why not hyper-util's pooled `Client`: on the proxy path its pool costs several thousand
//! instructions per request (a SipHash-keyed map under a mutex, a boxed request future, a
//! checkout future), a third of what nginx spends on a whole request. Here the pool belongs to
//! the target, so checkout is a pop from a short vector. As in Pingora, the proxy drives
//! connections directly.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::h1::{ExchangeError, H1Body, H1Connection};
use super::target::{InFlightGuard, Target};
use crate::config::Protocol;
use crate::error::{ErrorKind, ProxyError, find_in_chain};
use crate::http1::ReceivedFields;
use crate::proxy::body::{BodyTooLarge, BoxError, ClientBodyError, RequestBody};

/// Idle HTTP/1.1 connections kept per target.
const MAX_IDLE_PER_TARGET: usize = 256;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Connection settings shared by upstreams that use the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransportKey {
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    /// CA bundle for TLS upstreams; `None` trusts the public web roots.
    pub ca_file: Option<PathBuf>,
}

pub struct Transport {
    protocol: Protocol,
    connect_timeout: Duration,
    tls: Option<TlsConnector>,
}

/// The transports of one snapshot, by setting.
#[derive(Default)]
pub struct TransportCache {
    transports: std::collections::HashMap<TransportKey, Arc<Transport>>,
}

impl TransportCache {
    pub fn get_or_build(&mut self, key: TransportKey) -> Result<Arc<Transport>, String> {
        if let Some(transport) = self.transports.get(&key) {
            return Ok(transport.clone());
        }
        let transport = Arc::new(Transport::build(&key)?);
        self.transports.insert(key, transport.clone());
        Ok(transport)
    }
}

/// Idle connections to one target.
#[derive(Default)]
pub struct ConnectionPool {
    /// For the proxy's own HTTP/1.1 client.
    idle_h1: IdleList<Box<H1Connection>>,
    /// For hyper's (upgrades, streamed request bodies).
    idle: IdleList<http1::SendRequest<RequestBody>>,
    shared_h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("idle", &self.idle.0.lock().len())
            .field("idle_h1", &self.idle_h1.0.lock().len())
            .finish()
    }
}

impl ConnectionPool {
    fn take_h1(&self) -> Option<Box<H1Connection>> {
        self.idle_h1.take(|conn| conn.is_idle_usable())
    }

    pub(super) fn put_h1(&self, conn: Box<H1Connection>) {
        self.idle_h1.put(conn);
    }

    fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        self.idle.take(|sender| !sender.is_closed())
    }

    fn put(&self, sender: http1::SendRequest<RequestBody>) {
        if !sender.is_closed() {
            self.idle.put(sender);
        }
    }
}

/// Idle connections of one kind, in the order they came back (newest last).
struct IdleList<C>(Mutex<Vec<(C, Instant)>>);

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        IdleList(Mutex::new(Vec::new()))
    }
}

impl<C> IdleList<C> {
    /// The newest connection that is still `usable`. Expired ones are at the front, and go
    /// now, so that connections the upstream closed do not hold sockets for long.
    fn take(&self, usable: impl Fn(&C) -> bool) -> Option<C> {
        let now = Instant::now();
        let mut idle = self.0.lock();
        let expired = idle.partition_point(|(_, since)| now - *since >= IDLE_TIMEOUT);
        idle.drain(..expired);
        while let Some((conn, _)) = idle.pop() {
            if usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: C) {
        let mut idle = self.0.lock();
        if idle.len() >= MAX_IDLE_PER_TARGET {
            // The oldest connection goes; recent ones are likeliest to still be open.
            idle.remove(0);
        }
        idle.push((conn, Instant::now()));
    }
}

/// One exchange's hold on its target: counts it in flight and, for HTTP/1.1, gives the
/// connection back to the target's pool once the response body has been read to its end.
pub struct Lease {
    target: Arc<Target>,
    sender: Option<http1::SendRequest<RequestBody>>,
    _in_flight: InFlightGuard,
}

impl Lease {
    /// The response is over and its body was read completely: the connection can be reused.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.target.pool.put(sender);
        }
    }
}

impl Transport {
    fn build(key: &TransportKey) -> Result<Self, String> {
        let tls = if key.protocol.is_tls() {
            let roots = match &key.ca_file {
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
                Some(path) => load_roots(path)?,
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|err| format!("TLS setup failed: {err}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = if key.protocol.is_http2() {
                vec![b"h2".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Transport {
            protocol: key.protocol,
            connect_timeout: key.connect_timeout,
            tls,
        })
    }

    /// Sends a request (`head` and `body`) to `target`, over an idle pooled connection when
    /// there is one. The head is borrowed: most exchanges send it without a copy, and a retry
    /// sends it again.
    pub async fn send(
        &self,
        target: &Arc<Target>,
        head: &Parts,
        body: RequestBody,
    ) -> Result<(Response<UpstreamBody>, Lease), ProxyError> {
        let in_flight = target.start_request();
        if !self.protocol.is_http2()
            && let Some(known) = own_client_body(head, &body)
        {
            let response = self.send_h1(target, head, known).await?;
            let lease = Lease {
                target: target.clone(),
                sender: None,
                _in_flight: in_flight,
            };
            return Ok((response.map(UpstreamBody::H1), lease));
        }
        // The rarer exchanges: boxed, so that every request's future does not carry (and
        // move around) their state.
        let mut request = Request::from_parts(head.clone(), body);
        set_uri_form(&mut request, self.protocol, target);
        let (response, sender) = if self.protocol.is_http2() {
            Box::pin(self.send_h2(target, request)).await?
        } else {
            Box::pin(self.send_hyper_h1(target, request)).await?
        };
        let lease = Lease {
            target: target.clone(),
            sender,
            _in_flight: in_flight,
        };
        Ok((response.map(UpstreamBody::Hyper), lease))
    }

    /// One exchange through the proxy's own HTTP/1.1 client, on a pooled connection when
    /// there is a usable one.
    async fn send_h1(
        &self,
        target: &Arc<Target>,
        head: &Parts,
        body: Option<&[u8]>,
    ) -> Result<Response<H1Body>, ProxyError> {
        loop {
            let conn = match target.pool.take_h1() {
                Some(conn) => conn,
                // Connecting is the rare path: boxed (see above).
                None => H1Connection::new(Box::pin(self.connect_io(target)).await?),
            };
            match conn.send(head, body, target).await {
                Ok(response) => return Ok(response),
                // Only a pooled connection can be stale; the next one may be new.
                Err(ExchangeError::Stale) => continue,
                Err(ExchangeError::Failed(err)) => return Err(err),
            }
        }
    }

    async fn send_h2(
        &self,
        target: &Arc<Target>,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<http1::SendRequest<RequestBody>>), ProxyError> {
        let mut sender = self.h2_sender(target).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| classify(err, &target.addr))?;
        Ok((response, None))
    }

    /// An HTTP/1.1 exchange through hyper's client: upgrades and streamed request bodies.
    async fn send_hyper_h1(
        &self,
        target: &Arc<Target>,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<http1::SendRequest<RequestBody>>), ProxyError> {
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(target.authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        loop {
            let (mut sender, reused) = match target.pool.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect_h1(target).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(ProxyError::new(
                    ErrorKind::ConnectFailed,
                    format!("connection to {} closed at once", target.addr),
                ));
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Some(sender))),
                Err(mut err) => match err.take_message() {
                    // A pooled connection the upstream had closed: nothing was sent, so the
                    // request goes out again on a fresh connection, whatever its method.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(classify(err.into_error(), &target.addr)),
                },
            }
        }
    }

    async fn h2_sender(
        &self,
        target: &Target,
    ) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
        let existing = target.pool.shared_h2.lock().clone();
        if let Some(mut sender) = existing
            && !sender.is_closed()
            && sender.ready().await.is_ok()
        {
            return Ok(sender);
        }
        let io = self.connect_io(target).await?;
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|err| connect_error(&target.addr, "HTTP/2 handshake failed", err))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("upstream HTTP/2 connection ended: {err}");
            }
        });
        sender
            .ready()
            .await
            .map_err(|err| connect_error(&target.addr, "HTTP/2 connection closed at once", err))?;
        *target.pool.shared_h2.lock() = Some(sender.clone());
        Ok(sender)
    }

    async fn connect_h1(
        &self,
        target: &Target,
    ) -> Result<http1::SendRequest<RequestBody>, ProxyError> {
        let io = self.connect_io(target).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|err| connect_error(&target.addr, "HTTP/1.1 handshake failed", err))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!("upstream connection ended: {err}");
            }
        });
        Ok(sender)
    }

    /// TCP (and TLS) to the target within `connect_timeout`. Errors here mean nothing was sent.
    async fn connect_io(&self, target: &Target) -> Result<UpstreamIo, ProxyError> {
        match tokio::time::timeout(self.connect_timeout, self.connect_io_now(target)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::new(
                ErrorKind::ConnectTimeout,
                format!(
                    "connecting to {} took longer than {}ms",
                    target.addr,
                    self.connect_timeout.as_millis()
                ),
            )),
        }
    }

    async fn connect_io_now(&self, target: &Target) -> Result<UpstreamIo, ProxyError> {
        let host = target.authority.host();
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|err| connect_error(&target.addr, "name resolution failed", err))?
                .collect(),
        };
        let mut last_error = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(err) => last_error = Some(err),
            }
        }
        let stream = match (stream, last_error) {
            (Some(stream), _) => stream,
            (None, Some(err)) => return Err(connect_error(&target.addr, "connection failed", err)),
            (None, None) => {
                return Err(ProxyError::new(
                    ErrorKind::ConnectFailed,
                    format!("{} resolves to no address", target.addr),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(UpstreamIo::Plain(stream));
        };
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|err| connect_error(&target.addr, "not a valid TLS server name", err))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|err| connect_error(&target.addr, "TLS handshake failed", err))?;
        Ok(UpstreamIo::Tls(Box::new(stream)))
    }
}

/// What the proxy's own HTTP/1.1 client sends: requests whose body is known up front (none,
/// or bytes), except `Upgrade` and `CONNECT` requests, which hand the connection over. The
/// answer is the body to send (`None`: no body), or `None` when hyper's client must go.
fn own_client_body<'a>(head: &Parts, body: &'a RequestBody) -> Option<Option<&'a [u8]>> {
    if head.method == http::Method::CONNECT || head.headers.contains_key(header::UPGRADE) {
        return None;
    }
    match body {
        RequestBody::Empty => Some(None),
        RequestBody::Full(bytes) => Some(Some(bytes.as_ref().map_or(&[][..], |b| &b[..]))),
        RequestBody::Replay(_) => None,
    }
}

/// A response body from an upstream, read by whichever client carried the exchange.
pub enum UpstreamBody {
    Hyper(Incoming),
    H1(H1Body),
}

impl UpstreamBody {
    /// The response's header fields still held as received (the own HTTP/1.1 client's).
    pub fn fields(&self) -> Option<&ReceivedFields> {
        match self {
            UpstreamBody::H1(body) => body.fields(),
            UpstreamBody::Hyper(_) => None,
        }
    }

    pub fn take_fields(&mut self) -> Option<ReceivedFields> {
        match self {
            UpstreamBody::H1(body) => body.take_fields(),
            UpstreamBody::Hyper(_) => None,
        }
    }

    /// Gives back fields taken with [`UpstreamBody::take_fields`]; `Err` for a body that
    /// cannot hold them (hyper's).
    pub fn put_fields(&mut self, fields: ReceivedFields) -> Result<(), ReceivedFields> {
        match self {
            UpstreamBody::H1(body) => {
                body.put_fields(fields);
                Ok(())
            }
            UpstreamBody::Hyper(_) => Err(fields),
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BoxError::from))),
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::H1(body) => body.size_hint(),
        }
    }
}

/// HTTP/2 needs the scheme and authority (`:scheme`, `:authority`); HTTP/1.1 upstreams get the
/// origin form (`/path?query`) with the authority in `Host`.
fn set_uri_form(request: &mut Request<RequestBody>, protocol: Protocol, target: &Target) {
    let uri = request.uri();
    if protocol.is_http2() {
        if uri.authority().is_none() {
            let mut parts = uri.clone().into_parts();
            parts.scheme = Some(if protocol.is_tls() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            parts.authority = Some(target.authority.clone());
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(absolute) = http::Uri::from_parts(parts) {
                *request.uri_mut() = absolute;
            }
        }
        *request.version_mut() = http::Version::HTTP_2;
    } else {
        if uri.scheme().is_some()
            && let Some(origin) = uri.path_and_query().cloned()
        {
            *request.uri_mut() = http::Uri::from(origin);
        }
        *request.version_mut() = http::Version::HTTP_11;
    }
}

fn connect_error(
    addr: &str,
    what: &str,
    err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ProxyError {
    let err = err.into();
    let timed_out = find_in_chain::<io::Error>(err.as_ref())
        .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut);
    let kind = if timed_out {
        ErrorKind::ConnectTimeout
    } else {
        ErrorKind::ConnectFailed
    };
    ProxyError::new(kind, format!("{what}: {addr}")).with_source(err)
}

/// What a failed exchange means: whose fault, and whether the upstream may have seen it.
fn classify(err: hyper::Error, addr: &str) -> ProxyError {
    if let Some(too_large) = find_in_chain::<BodyTooLarge>(&err) {
        let message = too_large.to_string();
        return ProxyError::new(ErrorKind::BodyTooLarge, message);
    }
    if find_in_chain::<ClientBodyError>(&err).is_some() {
        return ProxyError::new(ErrorKind::ClientBody, "the client's request body failed")
            .with_source(err);
    }
    let kind = if err.is_parse() {
        ErrorKind::UpstreamProtocol
    } else {
        ErrorKind::UpstreamReset
    };
    ProxyError::new(kind, format!("exchange with {addr} failed")).with_source(err)
}

fn load_roots(path: &PathBuf) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("cannot read CA file {}: {err}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|err| format!("bad certificate in {}: {err}", path.display()))?;
        roots
            .add(cert)
            .map_err(|err| format!("unusable CA certificate in {}: {err}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {} holds no certificates", path.display()));
    }
    Ok(roots)
}

/// A connection to an upstream, with or without TLS.
pub(super) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// The TCP connection underneath.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamIo::Plain(stream) => stream,
            UpstreamIo::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            UpstreamIo::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(stream) => Pin::new(stream).poll_write(cx, data),
            UpstreamIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(stream) => stream.is_write_vectored(),
            UpstreamIo::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(stream) => Pin::new(stream).poll_flush(cx),
            UpstreamIo::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            UpstreamIo::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
