//! The request body of an HTTP/1.1 client, read from the connection it came on as the proxy
//! polls it (from the connection's task, or from the upstream client's when hyper streams it),
//! framed as the head said: `Content-Length` or strict chunked (RFC 9112 §7.1).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http1::chunked::{ChunkedDecoder, Decoded};
use crate::proxy::body::BoxError;

/// Body bytes are read in pieces up to this size.
const MAX_READ: usize = 64 * 1024;
/// What a read asks the socket for at least.
pub(super) const READ_CHUNK: usize = 8 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the body of the request being served is framed, and how far it has been read.
#[derive(Debug)]
pub(super) enum Framing {
    /// No body, or all of it read.
    Done,
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Cut short or malformed: the connection cannot carry another request.
    Failed,
}

/// The connection as the loop and the request's body share it.
pub(super) struct Shared<I> {
    pub(super) io: I,
    /// Bytes read and not used yet: a head being assembled, body bytes, the next request.
    pub(super) read_buf: BytesMut,
    /// Which request the body state belongs to; bodies of earlier requests read nothing.
    pub(super) request: u64,
    pub(super) framing: Framing,
    /// `Expect: 100-continue`: bytes of the interim response written so far, while the client
    /// waits for it (`None`: nothing to send).
    pub(super) continue_sent: Option<usize>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Shared<I> {
    pub(super) fn new(io: I, read_buf: BytesMut) -> Self {
        Shared {
            io,
            read_buf,
            request: 0,
            framing: Framing::Done,
            continue_sent: None,
        }
    }

    /// Reads what the socket has into `read_buf`; `Ok(0)` is the end of the stream.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        size: usize,
    ) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < size / 4 {
            self.read_buf.reserve(size);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }

    /// Whether the 100 Continue is still owed (the client may hold its body back for it).
    pub(super) fn continue_owed(&self) -> bool {
        self.continue_sent.is_some_and(|sent| sent < CONTINUE.len())
    }

    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(sent) = self.continue_sent
            && sent < CONTINUE.len()
        {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_sent = Some(sent + n);
            if sent + n == CONTINUE.len() {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The next piece of the current request's body.
    pub(super) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Err(err) = ready!(self.poll_continue(cx)) {
            self.framing = Framing::Failed;
            return Poll::Ready(Some(Err(BodyError::Io(err))));
        }
        loop {
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Failed => {
                    return Poll::Ready(Some(Err(BodyError::Framing("the body failed earlier"))));
                }
                Framing::Length(remaining) => {
                    if !self.read_buf.is_empty() {
                        let take = usize::try_from(*remaining)
                            .map_or(self.read_buf.len(), |r| r.min(self.read_buf.len()));
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            self.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(
                            self.read_buf.split_to(take).freeze(),
                        ))));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut self.read_buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        self.framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::Done) => {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => {
                        self.framing = Framing::Failed;
                        return Poll::Ready(Some(Err(BodyError::Framing(err.0))));
                    }
                },
            }
            let want = match self.framing {
                Framing::Length(remaining) => {
                    usize::try_from(remaining).map_or(MAX_READ, |r| r.clamp(READ_CHUNK, MAX_READ))
                }
                _ => READ_CHUNK,
            };
            match ready!(self.poll_fill(cx, want)) {
                Ok(0) => {
                    self.framing = Framing::Failed;
                    return Poll::Ready(Some(Err(BodyError::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))));
                }
                Ok(_) => {}
                Err(err) => {
                    self.framing = Framing::Failed;
                    return Poll::Ready(Some(Err(BodyError::Io(err))));
                }
            }
        }
    }
}

/// What the body needs of the connection, without its I/O type.
pub(super) trait BodySource: Send {
    fn poll_body_of(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>;
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> BodySource for Shared<I> {
    fn poll_body_of(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.request != request {
            return Poll::Ready(Some(Err(BodyError::Framing(
                "the connection moved on to the next request",
            ))));
        }
        self.poll_body(cx)
    }
}

/// Reading the client's body failed: it went away or broke the framing.
#[derive(Debug)]
pub enum BodyError {
    Io(io::Error),
    Framing(&'static str),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Io(err) => write!(f, "reading the request body failed: {err}"),
            BodyError::Framing(why) => write!(f, "invalid request body: {why}"),
        }
    }
}

impl StdError for BodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BodyError::Io(err) => Some(err),
            BodyError::Framing(_) => None,
        }
    }
}

/// An HTTP/1.1 request body, read on demand from the client's connection.
pub struct H1RequestBody {
    conn: Arc<Mutex<dyn BodySource>>,
    request: u64,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
    ended: bool,
}

impl H1RequestBody {
    pub(super) fn new(conn: Arc<Mutex<dyn BodySource>>, request: u64, length: Option<u64>) -> Self {
        H1RequestBody {
            conn,
            request,
            remaining: length,
            ended: false,
        }
    }
}

impl Body for H1RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = ready!(self.conn.lock().poll_body_of(self.request, cx));
        match &polled {
            Some(Ok(frame)) => {
                if let (Some(data), Some(remaining)) = (frame.data_ref(), self.remaining.as_mut()) {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
            }
            Some(Err(_)) | None => self.ended = true,
        }
        Poll::Ready(polled.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
