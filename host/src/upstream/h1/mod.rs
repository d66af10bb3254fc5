//! The proxy's own HTTP/1.1 client for the common exchange: a request whose body is known
//! (none, or bytes a plugin produced) on a pooled keep-alive connection, answered by a response
//! whose body is streamed back by [`H1Body`].
//!
//! Why not hyper's client connection here: it runs each connection as a task of its own and
//! hands every request and response across a channel, so an exchange costs two task wake-ups,
//! a boxed request and its general-purpose encoder and parser, about a third of the gateway's
//! CPU per request (docs/benchmarks.md). As in Pingora, the request's own task writes the head
//! and parses the answer. hyper still speaks for the rest: HTTP/2, `Upgrade` requests and
//! request bodies streamed from the client (where the upstream may answer before the body is
//! sent), see `Transport::send`.

mod body;

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;

use super::target::Target;
use super::transport::UpstreamIo;
use crate::error::{ErrorKind, ProxyError};
use crate::http1::{self, FieldSet, MAX_HEADERS, ReceivedFields};
use body::Framing;
pub use body::H1Body;

/// A response head larger than this is refused (hyper's default limit is about the same).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const INLINE_BODY_BYTES: usize = 16 * 1024;
/// What a read asks the socket for at least.
const READ_CHUNK: usize = 8 * 1024;

/// An HTTP/1.1 connection to a target, between exchanges.
pub struct H1Connection {
    io: UpstreamIo,
    /// Bytes read and not yet used: a response head being assembled, or body bytes.
    read_buf: BytesMut,
    /// Request heads are encoded here; kept between exchanges so a request allocates nothing.
    write_buf: Vec<u8>,
    /// Whether an exchange completed on it already (a pooled connection).
    reused: bool,
}

/// Why an exchange failed.
pub enum ExchangeError {
    /// A pooled connection was closed by the upstream before it answered anything (the
    /// keep-alive race: it timed the connection out as the request went out). The request did
    /// not reach it, or may be sent again: try a fresh connection.
    Stale,
    Failed(ProxyError),
}

impl H1Connection {
    /// Boxed once per connection: the connection moves into the exchange and into the response
    /// body, which moves along the whole proxy path; as a pointer it keeps those moves small.
    pub fn new(io: UpstreamIo) -> Box<Self> {
        Box::new(H1Connection {
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: Vec::with_capacity(512),
            reused: false,
        })
    }

    /// Whether an idle connection may carry another request: nothing arrived on it while it
    /// waited in the pool (an upstream closing it makes it readable). Costs no system call
    /// unless the reactor saw the socket become readable.
    pub fn is_idle_usable(&self) -> bool {
        let tcp = self.io.tcp();
        let peeked = tcp.try_io(Interest::READABLE, || {
            let mut byte = 0u8;
            // SAFETY: recv into one valid byte; MSG_PEEK leaves the stream as it is.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(tcp),
                    (&raw mut byte).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n)
            }
        });
        // WouldBlock: nothing to read, the connection is as it was left. Anything else (end
        // of stream, an error, bytes nobody asked for) makes it unusable.
        matches!(peeked, Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends a request (`head` and a known `body`, `None` for none) and reads the response
    /// head; the response's body reads the rest and gives the connection back to `target`'s
    /// pool when it ends cleanly. The head is only borrowed: a retry sends it again.
    pub async fn send(
        mut self: Box<Self>,
        head: &Parts,
        body: Option<&[u8]>,
        target: &Arc<Target>,
    ) -> Result<Response<H1Body>, ExchangeError> {
        let mut write_buf = std::mem::take(&mut self.write_buf);
        write_buf.clear();
        encode_head(head, body, &target.authority, &mut write_buf);
        let separate_body = match body {
            Some(body) if body.len() > INLINE_BODY_BYTES => Some(body),
            Some(body) => {
                write_buf.extend_from_slice(body);
                None
            }
            None => None,
        };
        let written = self.write_all(&write_buf, separate_body).await;
        self.write_buf = write_buf;
        if let Err(err) = written {
            // The upstream closed a pooled connection: it cannot act on a partial request.
            return Err(if self.reused {
                ExchangeError::Stale
            } else {
                ExchangeError::Failed(reset(&target.addr, "sending the request failed", err))
            });
        }
        let head_request = head.method == Method::HEAD;
        let answer = match self.read_head(head_request).await {
            Ok(answer) => answer,
            Err(HeadError::ClosedEarly(err)) if self.reused && is_idempotent(&head.method) => {
                tracing::debug!(target = %target.addr, "pooled connection closed before the response ({err}); sending again");
                return Err(ExchangeError::Stale);
            }
            Err(HeadError::ClosedEarly(err)) => {
                return Err(ExchangeError::Failed(reset(
                    &target.addr,
                    "the connection closed before the response",
                    err,
                )));
            }
            Err(HeadError::Io(err)) => {
                return Err(ExchangeError::Failed(reset(
                    &target.addr,
                    "reading the response failed",
                    err,
                )));
            }
            Err(HeadError::Invalid(why)) => {
                return Err(ExchangeError::Failed(ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("invalid response from {}: {why}", target.addr),
                )));
            }
        };
        self.reused = true;
        let FinalHead {
            response,
            fields,
            framing,
            keep_alive,
        } = answer;
        Ok(response.map(|()| H1Body::new(self, fields, framing, keep_alive, target.clone())))
    }

    async fn write_all(&mut self, head: &[u8], body: Option<&[u8]>) -> io::Result<()> {
        self.io.write_all(head).await?;
        if let Some(body) = body {
            self.io.write_all(body).await?;
        }
        // TLS buffers records; a plain TCP stream has nothing to flush.
        self.io.flush().await
    }

    /// Reads until a final (non-1xx) response head is complete and parses it.
    async fn read_head(&mut self, head_request: bool) -> Result<FinalHead, HeadError> {
        let mut got_bytes = !self.read_buf.is_empty();
        loop {
            if !self.read_buf.is_empty() {
                match parse_head(&mut self.read_buf, head_request)? {
                    Parsed::Final(head) => return Ok(head),
                    Parsed::Interim => continue,
                    Parsed::Partial => {}
                }
                if self.read_buf.len() >= MAX_HEAD_BYTES {
                    return Err(HeadError::Invalid("response head larger than 64 KiB"));
                }
            }
            let read = std::future::poll_fn(|cx| self.poll_fill(cx, READ_CHUNK)).await;
            match read {
                Ok(0) if got_bytes => return Err(HeadError::Invalid("response head cut short")),
                Ok(0) => {
                    return Err(HeadError::ClosedEarly(io::Error::from(
                        io::ErrorKind::UnexpectedEof,
                    )));
                }
                Ok(_) => got_bytes = true,
                Err(err) if !got_bytes => return Err(HeadError::ClosedEarly(err)),
                Err(err) => return Err(HeadError::Io(err)),
            }
        }
    }

    /// Reads what the socket has into `read_buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, size: usize) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < size / 4 {
            self.read_buf.reserve(size);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.read_buf)
    }
}

enum HeadError {
    /// Nothing of a response arrived before the connection ended or failed.
    ClosedEarly(io::Error),
    Io(io::Error),
    Invalid(&'static str),
}

/// A final response head: its status and version (and its fields, when they had to go into a
/// map), the fields as received otherwise, the body's framing, and whether the connection may
/// carry another exchange.
struct FinalHead {
    response: Response<()>,
    fields: Option<ReceivedFields>,
    framing: Framing,
    keep_alive: bool,
}

// Lives on the stack for one call; boxing the large variant would allocate per response.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Final(FinalHead),
    /// A 1xx response was consumed; the final one follows.
    Interim,
    Partial,
}

fn reset(addr: &str, what: &str, err: io::Error) -> ProxyError {
    ProxyError::new(ErrorKind::UpstreamReset, format!("{what}: {addr}")).with_source(err)
}

/// Methods whose request may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `METHOD path HTTP/1.1`, the headers as they are (with `Host` from the target's authority
/// when the request has none), and the body's framing: a known body is sent with its exact
/// `Content-Length` whatever the client said, since plugins may have replaced it; a request
/// without a body keeps the client's headers (at most a zero length).
fn encode_head(head: &Parts, body: Option<&[u8]>, authority: &Authority, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |path| path.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !head.headers.contains_key(http::header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut had_length = false;
    for (name, value) in &head.headers {
        if body.is_some()
            && (name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING)
        {
            had_length = true;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body
        && (!body.is_empty() || had_length)
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head at the front of `buf`, taking it off the buffer when complete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Invalid("more than 100 header fields"));
        }
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    let code = parsed.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| HeadError::Invalid("invalid status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgrade requests never come this way (Transport::send).
            return Err(HeadError::Invalid("switched protocols without being asked"));
        }
        // 100 Continue, 103 Early Hints: the final response follows.
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }
    let http10 = parsed.version == Some(0);

    // Where each field lies in the head, so the values can share the head's bytes.
    let base = buf.as_ptr();
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = http10;
    // Hop-by-hop fields (bit i: field i; RFC 9110 §7.6.1) are the client's business: the
    // connection-management ones are consumed here, and none is passed on. Unless `Connection`
    // names other fields: then all stay, in a header map, for the proxy's full hop-by-hop
    // removal (`proxy::headers::strip_hop_by_hop`).
    let mut hop_by_hop: FieldSet = 0;
    let mut length_fields: FieldSet = 0;
    let mut connection_names_fields = false;
    for (i, (span, field)) in spans.iter_mut().zip(parsed.headers.iter()).enumerate() {
        *span = http1::field_span(base, field);
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length_fields |= 1 << i;
            let value = http1::content_length(field.value)
                .ok_or(HeadError::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|earlier| earlier != value) {
                return Err(HeadError::Invalid("conflicting Content-Length fields"));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            hop_by_hop |= 1 << i;
            transfer_encoding = true;
            chunked = http1::ends_chunked(field.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            hop_by_hop |= 1 << i;
            for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    connection_names_fields = true;
                }
            }
        } else if http1::is_hop_by_hop(name) {
            hop_by_hop |= 1 << i;
        }
    }
    let head = buf.split_to(len).freeze();

    // RFC 9112 §6.3, in order.
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else if transfer_encoding {
            // Content-Length next to Transfer-Encoding is dropped, and the connection is not
            // reused: the message was framed by someone who disagrees with themselves.
            if length.is_some() {
                close = true;
            }
            if chunked {
                Framing::chunked()
            } else {
                close = true;
                Framing::UntilClose
            }
        } else if let Some(length) = length {
            Framing::Length(length)
        } else {
            close = true;
            Framing::UntilClose
        };
    // Content-Length next to Transfer-Encoding is not passed on (see the framing above).
    let length_skipped = if transfer_encoding { length_fields } else { 0 };
    let mut response = Response::new(());
    let fields = if connection_names_fields {
        *response.headers_mut() = http1::header_map(&head, &spans[..count], length_skipped, 1)
            .map_err(HeadError::Invalid)?;
        None
    } else {
        Some(ReceivedFields::new(
            head,
            &spans[..count],
            hop_by_hop | length_skipped,
        ))
    };
    *response.status_mut() = status;
    *response.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Parsed::Final(FinalHead {
        response,
        fields,
        framing,
        keep_alive: !close,
    }))
}

#[cfg(test)]
use crate::proxy::body::RequestBody;

#[cfg(test)]
fn encode_for_test(request: &http::Request<RequestBody>) -> String {
    let body = match request.body() {
        RequestBody::Full(bytes) => Some(bytes.as_ref().map_or(&[][..], |b| &b[..])),
        _ => None,
    };
    let head = http::Request::builder()
        .method(request.method())
        .uri(request.uri())
        .body(())
        .unwrap();
    let (mut head, ()) = head.into_parts();
    head.headers = request.headers().clone();
    let mut out = Vec::new();
    encode_head(
        &head,
        body,
        &Authority::from_static("upstream.test:8080"),
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;

    fn parse(
        raw: &[u8],
        head_request: bool,
    ) -> Result<(Response<()>, Framing, bool), &'static str> {
        let mut buf = BytesMut::from(raw);
        loop {
            match parse_head(&mut buf, head_request) {
                Ok(Parsed::Final(head)) => {
                    // What the proxy passes on: the fields received, or the map.
                    let mut response = head.response;
                    if let Some(fields) = head.fields {
                        fields.merge_into(response.headers_mut())?;
                    }
                    return Ok((response, head.framing, head.keep_alive));
                }
                Ok(Parsed::Interim) => continue,
                Ok(Parsed::Partial) => return Err("partial"),
                Err(HeadError::Invalid(why)) => return Err(why),
                Err(_) => return Err("io"),
            }
        }
    }

    #[test]
    fn encodes_a_request_without_body() {
        use http::Request;
        let mut request = Request::new(RequestBody::Empty);
        *request.uri_mut() = "/a/b?c=d".parse().unwrap();
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("example.com"));
        request
            .headers_mut()
            .append("x-many", HeaderValue::from_static("1"));
        request
            .headers_mut()
            .append("x-many", HeaderValue::from_static("2"));
        assert_eq!(
            encode_for_test(&request),
            "GET /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_known_body_gets_its_own_length() {
        use http::Request;
        let mut request = Request::new(RequestBody::Full(Some(Bytes::from_static(b"hello"))));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/".parse().unwrap();
        // What the client said no longer holds: a plugin replaced the body.
        request
            .headers_mut()
            .insert("content-length", HeaderValue::from_static("100"));
        request
            .headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(
            encode_for_test(&request),
            "POST / HTTP/1.1\r\nhost: upstream.test:8080\r\ncontent-length: 5\r\n\r\n"
        );
        *request.body_mut() = RequestBody::Full(None);
        assert_eq!(
            encode_for_test(&request),
            "POST / HTTP/1.1\r\nhost: upstream.test:8080\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn parses_a_response_head() {
        let (response, framing, keep_alive) = parse(
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Odd:  spaced  \r\n\r\nhello",
            false,
        )
        .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(framing, Framing::Length(5));
        assert!(keep_alive);
        let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(response.headers()["x-odd"], "spaced");
    }

    #[test]
    fn connection_management_fields_stay_here() {
        let (response, framing, keep_alive) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((framing, keep_alive), (Framing::chunked(), true));
        let names: Vec<_> = response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        // A `Connection` that names other fields leaves them all to the proxy's removal.
        let (response, _, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(response.headers().contains_key("connection"));
        assert!(response.headers().contains_key("x-secret"));
    }

    #[test]
    fn frames_bodies_as_rfc_9112_says() {
        let framing = |raw: &[u8], head: bool| {
            let (_, framing, keep_alive) = parse(raw, head).unwrap();
            (framing, keep_alive)
        };
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            (Framing::chunked(), true)
        );
        // Both: chunked wins, the length goes, the connection is not reused.
        let (response, framing_, keep_alive) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((framing_, keep_alive), (Framing::chunked(), false));
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false
            ),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive, close\r\n\r\n",
                false
            ),
            (Framing::Length(2), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false),
            (Framing::Length(2), false)
        );
    }

    #[test]
    fn skips_interim_responses() {
        let (response, _, _) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("link"));
    }

    #[test]
    fn refuses_bad_heads() {
        for (raw, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
                "conflicting Content-Length fields",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "switched protocols without being asked",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response head"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed response head"),
        ] {
            assert_eq!(
                parse(raw, false).unwrap_err(),
                why,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse(raw.as_bytes(), false).unwrap_err(),
            "more than 100 header fields"
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap_err(),
            "partial"
        );
    }
}
