//! Parsing a request head with httparse into an `http::Request`, with the framing rules a
//! gateway needs against request smuggling (RFC 9112 §6.1-6.3): a request with both
//! `Content-Length` and `Transfer-Encoding`, more than one `Content-Length`, an invalid one, or a
//! transfer coding other than a final `chunked` is refused with 400 and the connection closed,
//! where a lenient server would guess (nginx and Envoy refuse them too). So is a request with
//! more than one `Host`, or an HTTP/1.1 request without one (RFC 9112 §3.2): which host it is
//! for would be a guess too, and the proxy then forwards the one `Host` as it is.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{Method, Request, StatusCode, Uri, Version};

use crate::http1::{self, MAX_HEADERS};
use crate::proxy::headers::ADDED_REQUEST_FIELDS;

/// A complete request head.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub body: BodyFraming,
    /// Why the head cannot be trusted (its framing, its `Host`): the proxy answers 400 and the
    /// connection closes.
    pub head_error: Option<&'static str>,
    /// The client allows another request on the connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expects_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// 400 or 431, answered by the connection itself, which then closes.
    Reply(StatusCode, &'static str),
}

/// Parses the head at the front of `buf`, taking it off the buffer when complete
/// (`Ok(None)`: not complete yet).
pub fn parse_head(buf: &mut BytesMut, max_head_bytes: usize) -> Result<Option<Head>, ParseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head_bytes {
                return Err(too_large("request head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(too_large("more than 100 header fields"));
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    if len > max_head_bytes {
        return Err(too_large("request head too large"));
    }
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr();
    let path = parsed.path.unwrap_or("");
    let path_span = http1::span(base, path.as_bytes());

    // Where each field lies in the head, so the values can share the head's bytes.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    let mut lengths = 0usize;
    let mut length: Option<u64> = None;
    let mut length_invalid = false;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expects_continue = false;
    let mut hosts = 0usize;
    for (slot, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        *slot = http1::field_span(base, field);
        let name = field.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                match http1::content_length(field.value) {
                    Some(value) => length = Some(value),
                    None => length_invalid = true,
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encoding = true;
                chunked = http1::ends_chunked(field.value);
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in field.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expects_continue = field
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
    let head = buf.split_to(len).freeze();

    let head_error = if transfer_encoding && lengths > 0 {
        Some("both Content-Length and Transfer-Encoding")
    } else if lengths > 1 {
        Some("more than one Content-Length header")
    } else if length_invalid {
        Some("invalid Content-Length")
    } else if transfer_encoding && version == Version::HTTP_10 {
        Some("Transfer-Encoding in an HTTP/1.0 request")
    } else if transfer_encoding && !chunked {
        Some("Transfer-Encoding other than chunked")
    } else if hosts > 1 {
        Some("more than one Host header")
    } else if hosts == 0 && version == Version::HTTP_11 {
        Some("request without a Host header")
    } else {
        None
    };
    let body = match (head_error, chunked, length) {
        (Some(_), _, _) => BodyFraming::None,
        (None, true, _) => BodyFraming::Chunked,
        (None, false, Some(n)) if n > 0 => BodyFraming::Length(n),
        _ => BodyFraming::None,
    };
    let keep_alive =
        head_error.is_none() && !close && (version == Version::HTTP_11 || keep_alive_token);

    let (path_at, path_end) = path_span;
    let uri = Uri::from_maybe_shared(head.slice(path_at as usize..path_end as usize))
        .map_err(|_| bad("invalid request target"))?;
    // With room for what the proxy adds, so that adding it does not grow the map.
    let headers =
        http1::header_map(&head, &spans[..count], 0, ADDED_REQUEST_FIELDS).map_err(bad)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        expects_continue: expects_continue
            && version == Version::HTTP_11
            && body != BodyFraming::None,
        body,
        head_error,
        keep_alive,
    }))
}

fn bad(why: &'static str) -> ParseError {
    ParseError::Reply(StatusCode::BAD_REQUEST, why)
}

fn too_large(why: &'static str) -> ParseError {
    ParseError::Reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Head>, ParseError> {
        parse_head(&mut BytesMut::from(raw), 8192)
    }

    #[test]
    fn parses_a_request_head() {
        let mut buf = BytesMut::from(
            &b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Many: 1\r\nx-many: 2\r\nContent-Length: 5\r\n\r\nhelloGET"[..],
        );
        let head = parse_head(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/a/b?c=d");
        assert_eq!(head.request.version(), Version::HTTP_11);
        assert_eq!(head.request.headers()["host"], "example.com");
        let many: Vec<_> = head.request.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
        assert_eq!(head.body, BodyFraming::Length(5));
        assert!(head.keep_alive && head.head_error.is_none() && !head.expects_continue);
        // The body and the next request stay in the buffer.
        assert_eq!(&buf[..], b"helloGET");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(parse(b"GE").unwrap().is_none());
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keep = |raw: &[u8]| parse(raw).unwrap().unwrap().keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn frames_bodies() {
        let framing = |raw: &[u8]| parse(raw).unwrap().unwrap().body;
        assert_eq!(
            framing(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            BodyFraming::None
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            BodyFraming::None
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
        let head = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.expects_continue);
    }

    #[test]
    fn flags_smuggling_attempts() {
        let verdict = |raw: &[u8]| {
            let head = parse(raw).unwrap().unwrap();
            if head.head_error.is_some() {
                assert_eq!(head.body, BodyFraming::None);
                assert!(!head.keep_alive);
            }
            head.head_error
        };
        for (raw, why) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                "more than one Content-Length header",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in an HTTP/1.0 request",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                "more than one Host header",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
                "more than one Host header",
            ),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                "request without a Host header",
            ),
        ] {
            assert_eq!(verdict(raw), Some(why), "{}", String::from_utf8_lossy(raw));
        }
        // HTTP/1.0 did not require it.
        assert_eq!(verdict(b"GET / HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn refuses_bad_and_oversized_heads() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n").unwrap_err(),
            ParseError::Reply(StatusCode::BAD_REQUEST, "malformed request head")
        );
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap_err(),
            ParseError::Reply(StatusCode::BAD_REQUEST, "malformed request head")
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(
            parse(raw.as_bytes()).unwrap_err(),
            ParseError::Reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more than 100 header fields"
            )
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
            "a".repeat(9000)
        );
        assert_eq!(
            parse(big.as_bytes()).unwrap_err(),
            ParseError::Reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large"
            )
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(
            parse(big.as_bytes()).unwrap_err(),
            ParseError::Reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large"
            )
        );
    }
}
