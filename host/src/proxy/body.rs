//! Body types of the proxy path.
//!
//! Request bodies stream to the upstream as they arrive; the size limit is enforced on the way.
//! When a retry may need the body again, it goes through [`ReplayBody`], which keeps what it has
//! sent up to a bound (as linkerd2-proxy's replay body does) and gives up replay beyond it.
//! Response bodies stream back and report their size to the access log when they end.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::time::Sleep;

use crate::error::{ErrorKind, ProxyError};
use crate::http1::ReceivedFields;
use crate::server::h1::H1RequestBody;
use crate::upstream::{Lease, UpstreamBody};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The request body grew past `max_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge {
    pub limit: u64,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body exceeds {} bytes", self.limit)
    }
}
impl StdError for BodyTooLarge {}

/// Reading the client's body failed (the client went away or broke the framing).
#[derive(Debug)]
pub struct ClientBodyError(pub BoxError);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the client's request body failed: {}", self.0)
    }
}
impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// A request body as the client sends it: over HTTP/2 (hyper's server) or HTTP/1.1 (the
/// gateway's own, `server::h1`).
pub enum ClientBody {
    Empty,
    H2(Incoming),
    H1(H1RequestBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BoxError::from))),
            ClientBody::H1(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H2(body) => body.is_end_stream(),
            ClientBody::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H2(body) => body.size_hint(),
            ClientBody::H1(body) => body.size_hint(),
        }
    }
}

/// The response body was still streaming when the exchange's timeout passed.
#[derive(Debug)]
pub struct ResponseTimedOut;

impl fmt::Display for ResponseTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream's response did not complete within the timeout")
    }
}
impl StdError for ResponseTimedOut {}

/// A replay body was polled after a newer attempt took over.
#[derive(Debug)]
struct Superseded;
impl fmt::Display for Superseded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body superseded by a retry")
    }
}
impl StdError for Superseded {}

/// The client's body with the size limit applied as it streams.
pub struct LimitedIncoming {
    inner: ClientBody,
    seen: u64,
    limit: u64,
}

impl LimitedIncoming {
    pub fn new(inner: ClientBody, limit: u64) -> Self {
        LimitedIncoming {
            inner,
            seen: 0,
            limit,
        }
    }
}

impl Body for LimitedIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(Box::new(ClientBodyError(err))))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct ReplayState {
    /// `None` once the client's body has ended.
    source: Option<LimitedIncoming>,
    buffered: Vec<Bytes>,
    buffered_len: usize,
    cap: usize,
    /// The buffer no longer holds everything read so far: replay is impossible.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    /// Only the newest clone may read; older attempts are over.
    generation: u64,
}

/// A request body that can be sent again, as long as no more than `cap` bytes had to be kept.
pub struct ReplayBody {
    state: Arc<Mutex<ReplayState>>,
    generation: u64,
    /// Next buffered chunk this clone replays.
    position: usize,
    trailers_sent: bool,
    hint: SizeHint,
}

impl ReplayBody {
    pub fn new(source: LimitedIncoming, cap: usize) -> Self {
        let hint = source.size_hint();
        ReplayBody {
            state: Arc::new(Mutex::new(ReplayState {
                source: Some(source),
                buffered: Vec::new(),
                buffered_len: 0,
                cap,
                overflowed: false,
                trailers: None,
                generation: 0,
            })),
            generation: 0,
            position: 0,
            trailers_sent: false,
            hint,
        }
    }

    /// A fresh copy that replays the body from the start, if everything read so far was kept.
    /// Earlier copies stop yielding data.
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut state = self.state.lock();
        if state.overflowed {
            return None;
        }
        state.generation += 1;
        Some(ReplayBody {
            state: self.state.clone(),
            generation: state.generation,
            position: 0,
            trailers_sent: false,
            hint: self.hint,
        })
    }
}

impl ReplayBody {
    /// Whether [`ReplayBody::replay`] would succeed now.
    pub fn replay_possible(&self) -> bool {
        !self.state.lock().overflowed
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut state = this.state.lock();
        if state.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if this.position < state.buffered.len() {
            let chunk = state.buffered[this.position].clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(source) = state.source.as_mut() else {
            if !this.trailers_sent
                && let Some(trailers) = state.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        };
        match ready!(Pin::new(source).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !state.overflowed && state.buffered_len + data.len() <= state.cap {
                        state.buffered_len += data.len();
                        state.buffered.push(data.clone());
                        this.position = state.buffered.len();
                    } else if !state.overflowed {
                        state.overflowed = true;
                        state.buffered = Vec::new();
                        state.buffered_len = 0;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    state.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err))),
            None => {
                state.source = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.hint.exact() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// What the gateway sends upstream.
pub enum RequestBody {
    Empty,
    /// A whole body (buffered for plugins); each attempt sends a copy (`Bytes` is shared).
    Full(Option<Bytes>),
    Replay(ReplayBody),
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody::Empty
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Replay(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Replay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Replay(body) => body.size_hint(),
        }
    }
}

/// Called once when a response body is over, with the bytes sent and whether it ended cleanly.
pub trait OnBodyEnd: Send + Sync + 'static {
    fn on_end(self: Box<Self>, bytes: u64, complete: bool);
}

/// What the gateway sends to the client.
pub struct ResponseBody {
    inner: ResponseInner,
    bytes: u64,
    on_end: Option<Box<dyn OnBodyEnd>>,
    /// End of the whole exchange; the timer is armed only when the upstream makes us wait.
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The exchange's hold on its target and connection, released when the body is over.
    lease: Option<Lease>,
}

enum ResponseInner {
    Upstream(UpstreamBody),
    /// A whole body (error pages, plugin replies, bodies plugins rewrote) and its trailers.
    /// (The trailers are boxed: rare, and this body moves along the whole proxy path.)
    Full(Option<Bytes>, Option<Box<HeaderMap>>),
}

impl ResponseBody {
    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            inner: ResponseInner::Upstream(body),
            bytes: 0,
            on_end: None,
            deadline: None,
            timer: None,
            lease: None,
        }
    }

    /// Trailers after a whole body.
    pub fn with_trailers(mut self, trailers: Option<HeaderMap>) -> Self {
        if let ResponseInner::Full(_, slot) = &mut self.inner {
            *slot = trailers.map(Box::new);
        }
        self
    }

    /// Holds `lease` until the body is over; a body read to its end gives the connection back.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Cuts the body off (as an error, so the client sees it truncated) at `deadline`.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            inner: ResponseInner::Full((!bytes.is_empty()).then_some(bytes), None),
            bytes: 0,
            on_end: None,
            deadline: None,
            timer: None,
            lease: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The upstream's header fields still held as received: the response's map holds only
    /// what the gateway set, which goes out instead of received fields of the same name.
    pub fn received_fields(&self) -> Option<&ReceivedFields> {
        match &self.inner {
            ResponseInner::Upstream(body) => body.fields(),
            ResponseInner::Full(..) => None,
        }
    }

    pub fn take_received_fields(&mut self) -> Option<ReceivedFields> {
        match &mut self.inner {
            ResponseInner::Upstream(body) => body.take_fields(),
            ResponseInner::Full(..) => None,
        }
    }

    /// Gives back fields taken with [`ResponseBody::take_received_fields`] that nobody needed
    /// in the map; `Err` (with the fields) for a body that cannot hold them.
    pub fn restore_received_fields(
        &mut self,
        fields: ReceivedFields,
    ) -> Result<(), ReceivedFields> {
        match &mut self.inner {
            ResponseInner::Upstream(body) => body.put_fields(fields),
            ResponseInner::Full(..) => Err(fields),
        }
    }

    pub fn set_on_end(&mut self, on_end: Box<dyn OnBodyEnd>) {
        self.on_end = Some(on_end);
    }

    fn finish(&mut self, complete: bool) {
        if let Some(lease) = self.lease.take()
            && complete
        {
            lease.release();
        }
        if let Some(on_end) = self.on_end.take() {
            on_end.on_end(self.bytes, complete);
        }
    }
}

/// Puts the upstream's header fields that are still held as received into the response's map,
/// under those the gateway set there: for whoever reads or changes the response's headers
/// rather than only adding its own (the plugins, the HTTP/2 server).
pub fn merge_received_fields(response: &mut Response<ResponseBody>) -> Result<(), ProxyError> {
    match response.body_mut().take_received_fields() {
        Some(fields) => merge_fields(fields, response.headers_mut()),
        None => Ok(()),
    }
}

/// Puts `fields` into `headers`, under those already there (see [`ReceivedFields::merge_into`]).
pub fn merge_fields(fields: ReceivedFields, headers: &mut HeaderMap) -> Result<(), ProxyError> {
    fields.merge_into(headers).map_err(|why| {
        ProxyError::new(
            ErrorKind::UpstreamProtocol,
            format!("invalid response head: {why}"),
        )
    })
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::full(bytes)
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            ResponseInner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    let Some(deadline) = this.deadline else {
                        return Poll::Pending;
                    };
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                    ready!(timer.as_mut().poll(cx));
                    this.finish(false);
                    return Poll::Ready(Some(Err(Box::new(ResponseTimedOut))));
                }
            },
            ResponseInner::Full(bytes, trailers) => match bytes.take() {
                Some(bytes) => Some(Ok(Frame::data(bytes))),
                None => trailers.take().map(|t| Ok(Frame::trailers(*t))),
            },
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Some(Err(_)) => this.finish(false),
            None => this.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Upstream(body) => body.is_end_stream(),
            ResponseInner::Full(bytes, trailers) => bytes.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Upstream(body) => body.size_hint(),
            ResponseInner::Full(bytes, _) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
