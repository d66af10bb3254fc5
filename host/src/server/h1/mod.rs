//! The gateway's own HTTP/1.1 server connection: the connection's task reads each request head
//! into one buffer, parses it with httparse, runs the proxy on it and writes the response back,
//! one request after the other (pipelined requests wait in the buffer), with no task, channel
//! or boxed future per request.
//!
//! Why not hyper's server connection: its dispatcher, general-purpose parser and encoder and
//! buffered I/O cost about a third of the gateway's instructions per request
//! (docs/benchmarks.md); as in Pingora, a proxy needs a much narrower server. hyper still
//! serves HTTP/2 (`super::conn`): a plain connection whose first bytes are the HTTP/2 preface
//! is handed back to it, with those bytes.
//!
//! Limits: a head larger than `max_header_bytes` or with more than 100 fields is answered with
//! 431, a malformed one with 400, and both close the connection; every head must be complete
//! within `header_read_timeout` of its first byte (the first one of accepting the connection),
//! else 408; a keep-alive connection waits `idle_timeout` for the next request. A drain lets
//! the request in flight finish and closes the connection after it.

mod body;
mod parse;
mod write;

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::Body as _;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ConnInfo;
use super::conn::ConnLimits;
use super::rewind::Rewind;
use crate::proxy::body::{ClientBody, ResponseBody};
use crate::snapshot::Snapshot;
pub use body::{BodyError, H1RequestBody};
use body::{BodySource, Framing, READ_CHUNK, Shared};
use parse::{BodyFraming, Head, ParseError};
use write::Out;

/// What a plain connection starts with when the client speaks HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Response body pieces up to this size are copied behind the head (or the previous piece)
/// so that a small response leaves in one write.
const COALESCE: usize = 16 * 1024;
/// A request body the proxy did not read to its end is read and dropped up to this size to
/// keep the connection; a larger rest closes it.
const DISCARD_LIMIT: usize = 64 * 1024;

/// How the HTTP/1.1 part of a connection ended.
pub enum Ended<I> {
    Closed,
    /// The client sent the HTTP/2 preface: these bytes were read already.
    Http2(I, Bytes),
}

/// The client's side of an `Upgrade` request: the connection, once the 101 has been written.
/// (Request extensions must be `Clone`; the first to wait for it gets it.)
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl ClientUpgrade {
    /// The upgraded connection, or `None` when the exchange ended without a 101.
    pub async fn connection(self) -> Option<Upgraded> {
        let receiver = self.0.lock().take()?;
        receiver.await.ok()
    }
}

/// A client connection after `101 Switching Protocols`, with any bytes read after the head
/// in front.
pub type Upgraded = Rewind<Box<dyn UpgradedIo>>;

pub trait UpgradedIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradedIo for T {}

/// What waiting for the next bytes of a head ended with.
enum Wait {
    Read(io::Result<usize>),
    Drain,
    Timeout,
}

/// Serves HTTP/1.1 requests on `io` until either side closes the connection; with `sniff_h2`,
/// a connection that starts with the HTTP/2 preface is given back instead.
pub async fn serve<I>(
    io: I,
    info: &Arc<ConnInfo>,
    state: &ArcSwap<Snapshot>,
    limits: &ConnLimits,
    drain: &CancellationToken,
    sniff_h2: bool,
) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Instant::now();
    let shared = Arc::new(Mutex::new(Shared::new(
        io,
        BytesMut::with_capacity(READ_CHUNK),
    )));
    let mut drained = pin!(drain.cancelled());
    let mut timer = pin!(tokio::time::sleep_until(
        accepted + limits.header_read_timeout
    ));
    let mut write_buf = Vec::with_capacity(1024);
    let mut sniffing = sniff_h2;
    let mut request_no: u64 = 0;
    let mut waiting_since = accepted;
    loop {
        // The next request head: in the buffer already (pipelined), or still to be read.
        let mut head_started: Option<Instant> = None;
        let head = loop {
            let step = {
                let mut conn = shared.lock();
                head_step(&mut conn, &mut sniffing, limits.max_header_bytes)
            };
            let has_bytes = match step {
                Step::Head(head) => break head,
                Step::Wait { has_bytes } => has_bytes,
                Step::Http2 => {
                    return match Arc::try_unwrap(shared) {
                        Ok(conn) => {
                            let conn = conn.into_inner();
                            Ended::Http2(conn.io, conn.read_buf.freeze())
                        }
                        Err(_) => Ended::Closed,
                    };
                }
                Step::Refuse(status, why) => {
                    tracing::debug!(peer = %info.peer, "refused a request head: {why}");
                    reply_and_close(&shared, status, &mut write_buf).await;
                    return Ended::Closed;
                }
            };
            if has_bytes && head_started.is_none() {
                head_started = Some(Instant::now());
            }
            let deadline = match head_started {
                _ if request_no == 0 => accepted + limits.header_read_timeout,
                Some(started) => started + limits.header_read_timeout,
                None => waiting_since + limits.idle_timeout,
            };
            let waited = poll_fn(|cx| {
                if let Poll::Ready(read) = shared.lock().poll_fill(cx, READ_CHUNK) {
                    return Poll::Ready(Wait::Read(read));
                }
                if !has_bytes && drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Drain);
                }
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Timeout);
                }
                Poll::Pending
            })
            .await;
            match waited {
                Wait::Read(Ok(0)) | Wait::Read(Err(_)) | Wait::Drain => {
                    return Ended::Closed;
                }
                Wait::Read(Ok(_)) => {}
                Wait::Timeout => {
                    if has_bytes && !sniffing {
                        tracing::debug!(peer = %info.peer, "request head not complete in time");
                        reply_and_close(&shared, StatusCode::REQUEST_TIMEOUT, &mut write_buf).await;
                    }
                    return Ended::Closed;
                }
            }
        };
        sniffing = false;
        request_no += 1;

        let Head {
            request,
            body: framing,
            head_error,
            keep_alive,
            expects_continue,
        } = head;
        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        let length = match framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        let body = {
            let mut conn = shared.lock();
            conn.request = request_no;
            conn.continue_sent = expects_continue.then_some(0);
            conn.framing = match framing {
                BodyFraming::None => Framing::Done,
                BodyFraming::Length(n) => Framing::Length(n),
                BodyFraming::Chunked => Framing::Chunked(Default::default()),
            };
            drop(conn);
            if framing == BodyFraming::None {
                ClientBody::Empty
            } else {
                let source: Arc<Mutex<dyn BodySource>> = shared.clone();
                ClientBody::H1(H1RequestBody::new(source, request_no, length))
            }
        };
        let mut request = request.map(|()| body);
        let upgrade = crate::proxy::is_upgrade_request(&request).then(|| {
            let (sender, receiver) = oneshot::channel();
            request
                .extensions_mut()
                .insert(ClientUpgrade(Arc::new(Mutex::new(Some(receiver)))));
            sender
        });
        // The request keeps this snapshot to its end, whatever reloads happen meanwhile.
        let snapshot = state.load_full();
        let response = crate::proxy::serve(snapshot, info.clone(), request, head_error).await;

        let (parts, response_body) = response.into_parts();
        write_buf.clear();
        let encoded = write::encode_head(
            &parts,
            response_body.received_fields(),
            is_head,
            version,
            keep_alive && !drain.is_cancelled(),
            response_body.size_hint().exact(),
            &mut write_buf,
        );
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            drop(response_body);
            if let Some(sender) = upgrade
                && write_all(&shared, &write_buf).await.is_ok()
                && flush(&shared).await.is_ok()
                && let Ok(conn) = Arc::try_unwrap(shared)
            {
                let conn = conn.into_inner();
                let io: Box<dyn UpgradedIo> = Box::new(conn.io);
                let io = Rewind::new(conn.read_buf.freeze(), io);
                let _ = sender.send(io);
            }
            return Ended::Closed;
        }
        drop(upgrade);
        let complete = match send_body(&shared, &mut write_buf, response_body, encoded.out).await {
            Ok(complete) => complete,
            Err(err) => {
                tracing::debug!(peer = %info.peer, "writing the response failed: {err}");
                return Ended::Closed;
            }
        };
        if !complete || !encoded.keep_alive || drain.is_cancelled() {
            shutdown(&shared).await;
            return Ended::Closed;
        }
        if !finish_request_body(&shared, &mut timer, limits).await {
            shutdown(&shared).await;
            return Ended::Closed;
        }
        waiting_since = Instant::now();
    }
}

/// What the bytes read so far make of the next request.
// Lives on the stack for one call; boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    Head(Head),
    Wait { has_bytes: bool },
    Http2,
    Refuse(StatusCode, &'static str),
}

fn head_step<I>(conn: &mut Shared<I>, sniffing: &mut bool, max_head_bytes: usize) -> Step {
    if conn.read_buf.is_empty() {
        return Step::Wait { has_bytes: false };
    }
    if *sniffing {
        let n = conn.read_buf.len().min(H2_PREFACE.len());
        if conn.read_buf[..n] != H2_PREFACE[..n] {
            *sniffing = false;
        } else if n == H2_PREFACE.len() {
            return Step::Http2;
        } else {
            return Step::Wait { has_bytes: true };
        }
    }
    match parse::parse_head(&mut conn.read_buf, max_head_bytes) {
        Ok(Some(head)) => Step::Head(head),
        Ok(None) => Step::Wait { has_bytes: true },
        Err(ParseError::Reply(status, why)) => Step::Refuse(status, why),
    }
}

/// Writes the response body as `out` frames it; `Ok(false)` when it could not be framed to
/// its end (the body failed, or did not match its length): the connection must close.
async fn send_body<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Mutex<Shared<I>>,
    buf: &mut Vec<u8>,
    mut body: ResponseBody,
    out: Out,
) -> io::Result<bool> {
    if out == Out::Empty {
        drop(body);
        write_all(shared, buf).await?;
        flush(shared).await?;
        return Ok(true);
    }
    let mut left = match out {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    let mut trailers_sent = false;
    loop {
        let frame = if body.is_end_stream() {
            None
        } else {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // The body makes us wait: what is ready goes out meanwhile.
                    if !buf.is_empty() {
                        write_all(shared, buf).await?;
                        flush(shared).await?;
                        buf.clear();
                    }
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            }
        };
        let frame = match frame {
            None => {
                // Polled to its end (or known to be over): the access log has its line.
                drop(body);
                let complete = match out {
                    Out::Chunked if !trailers_sent => {
                        write::last_chunk(None, buf);
                        true
                    }
                    Out::Length(_) => left == 0,
                    _ => true,
                };
                write_all(shared, buf).await?;
                flush(shared).await?;
                return Ok(complete && out != Out::Close);
            }
            Some(Err(err)) => {
                tracing::debug!("response body failed: {err}");
                drop(body);
                // What arrived goes out; the missing end tells the client it was cut short.
                write_all(shared, buf).await?;
                flush(shared).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers()
                    && out == Out::Chunked
                    && !trailers_sent
                {
                    write::last_chunk(Some(&trailers), buf);
                    trailers_sent = true;
                }
                continue;
            }
        };
        if data.is_empty() || trailers_sent {
            continue;
        }
        let mut data = data;
        let mut overrun = false;
        match out {
            Out::Length(_) => {
                if data.len() as u64 > left {
                    // More than the head announced: send what was announced, then close.
                    data.truncate(left as usize);
                    overrun = true;
                }
                left -= data.len() as u64;
            }
            Out::Chunked => write::chunk_size_line(data.len(), buf),
            _ => {}
        }
        if buf.len() + data.len() <= COALESCE {
            buf.extend_from_slice(&data);
        } else {
            write_all(shared, buf).await?;
            buf.clear();
            write_all(shared, &data).await?;
        }
        if out == Out::Chunked {
            buf.extend_from_slice(b"\r\n");
        }
        if overrun {
            write_all(shared, buf).await?;
            flush(shared).await?;
            return Ok(false);
        }
    }
}

/// After a response: a request body the proxy left unread is read and dropped (up to
/// [`DISCARD_LIMIT`]) so the next request can be found. `false`: the connection must close.
async fn finish_request_body<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Mutex<Shared<I>>,
    timer: &mut Pin<&mut tokio::time::Sleep>,
    limits: &ConnLimits,
) -> bool {
    {
        let mut conn = shared.lock();
        // A body still held by an upstream exchange reads nothing from now on.
        conn.request = 0;
        match conn.framing {
            Framing::Done => return true,
            Framing::Failed => return false,
            // The client may be waiting for a 100 Continue before it sends the body.
            _ if conn.continue_owed() => return false,
            _ => conn.continue_sent = None,
        }
    }
    timer
        .as_mut()
        .reset(Instant::now() + limits.header_read_timeout);
    let mut dropped = 0usize;
    loop {
        let polled = poll_fn(|cx| {
            if let Poll::Ready(frame) = shared.lock().poll_body(cx) {
                return Poll::Ready(Some(frame));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match polled {
            Some(None) => return true,
            Some(Some(Ok(frame))) => {
                dropped += frame.data_ref().map_or(0, Bytes::len);
                if dropped > DISCARD_LIMIT {
                    return false;
                }
            }
            Some(Some(Err(_))) | None => return false,
        }
    }
}

/// Answers a head the connection refuses (400, 408, 431) and closes.
async fn reply_and_close<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Mutex<Shared<I>>,
    status: StatusCode,
    buf: &mut Vec<u8>,
) {
    let response = http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, "0")
        .header(http::header::CONNECTION, "close")
        .body(())
        .unwrap_or_default();
    let (parts, ()) = response.into_parts();
    buf.clear();
    write::encode_head(
        &parts,
        None,
        false,
        http::Version::HTTP_11,
        false,
        Some(0),
        buf,
    );
    if write_all(shared, buf).await.is_ok() {
        let _ = flush(shared).await;
    }
    shutdown(shared).await;
}

async fn write_all<I: AsyncWrite + Unpin>(
    shared: &Mutex<Shared<I>>,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut shared.lock().io).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

async fn flush<I: AsyncWrite + Unpin>(shared: &Mutex<Shared<I>>) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut shared.lock().io).poll_flush(cx)).await
}

/// Ends the connection's sending side (a TLS close_notify, a FIN), best effort.
async fn shutdown<I: AsyncWrite + Unpin>(shared: &Mutex<Shared<I>>) {
    let _ = poll_fn(|cx| Pin::new(&mut shared.lock().io).poll_shutdown(cx)).await;
}
