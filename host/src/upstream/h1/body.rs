//! A response body read by the proxy's HTTP/1.1 client, framed as its head said (RFC 9112 §6.3),
//! streamed frame by frame. At its clean end the connection goes back to the target's pool; a
//! body dropped early, cut short or malformed takes its connection with it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::H1Connection;
use crate::http1::ReceivedFields;
use crate::http1::chunked::{ChunkedDecoder, Decoded};
use crate::proxy::body::BoxError;
use crate::upstream::target::Target;

/// Large bodies are read in pieces up to this size.
const MAX_READ: usize = 64 * 1024;

#[derive(Debug, PartialEq)]
pub enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Neither length nor chunks: the body ends when the upstream closes the connection.
    UntilClose,
}

impl Framing {
    pub fn chunked() -> Self {
        Framing::Chunked(ChunkedDecoder::default())
    }
}

pub struct H1Body {
    /// The response's header fields as received, until someone takes them (see
    /// [`ReceivedFields`]); `None` when they went into the response's map.
    fields: Option<ReceivedFields>,
    /// `None` once the body ended (or failed).
    conn: Option<Box<H1Connection>>,
    framing: Framing,
    /// The response allows another exchange on the connection.
    keep_alive: bool,
    target: Arc<Target>,
}

impl H1Body {
    pub(super) fn new(
        conn: Box<H1Connection>,
        fields: Option<ReceivedFields>,
        framing: Framing,
        keep_alive: bool,
        target: Arc<Target>,
    ) -> Self {
        let mut body = H1Body {
            fields,
            conn: Some(conn),
            framing,
            keep_alive,
            target,
        };
        if matches!(body.framing, Framing::Empty | Framing::Length(0)) {
            body.end();
        }
        body
    }

    /// The response's header fields still held as received.
    pub fn fields(&self) -> Option<&ReceivedFields> {
        self.fields.as_ref()
    }

    pub fn take_fields(&mut self) -> Option<ReceivedFields> {
        self.fields.take()
    }

    pub fn put_fields(&mut self, fields: ReceivedFields) {
        self.fields = Some(fields);
    }

    /// The body was read to its end: the connection is ready for the next exchange, unless
    /// the upstream sent more than it announced.
    fn end(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.read_buf.is_empty()
        {
            self.target.pool.put_h1(conn);
        }
    }

    fn fail(&mut self, err: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(err.into())))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let mut read_size = super::READ_CHUNK;
            match &mut this.framing {
                Framing::Empty => {
                    this.end();
                    return Poll::Ready(None);
                }
                Framing::Length(remaining) => {
                    if !conn.read_buf.is_empty() {
                        let take = usize::try_from(*remaining)
                            .map_or(conn.read_buf.len(), |r| r.min(conn.read_buf.len()));
                        let data = conn.read_buf.split_to(take).freeze();
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    read_size = usize::try_from(*remaining)
                        .unwrap_or(MAX_READ)
                        .clamp(super::READ_CHUNK, MAX_READ);
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.read_buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.end();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::Done) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => return this.fail(err),
                },
                Framing::UntilClose => {
                    if !conn.read_buf.is_empty() {
                        let data = conn.read_buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    read_size = MAX_READ;
                }
            }
            match ready!(conn.poll_fill(cx, read_size)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the body",
                    ));
                }
                Ok(_) => {}
                Err(err) => return this.fail(err),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) | (_, Framing::Empty) => SizeHint::with_exact(0),
            (_, Framing::Length(remaining)) => SizeHint::with_exact(*remaining),
            _ => SizeHint::default(),
        }
    }
}
