//! Encoding response heads for HTTP/1.1 clients: status line, the response's headers, a `Date`
//! when it has none, and the body's framing (RFC 9112 §6): a known length, else chunked for
//! HTTP/1.1 clients and until-close for HTTP/1.0 ones; no body for HEAD, 1xx, 204 and 304.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::response::Parts;
use http::{HeaderName, StatusCode, Version, header};

use crate::http1::{self, ReceivedFields};

/// How the response body goes out.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Nothing after the head.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients without a length).
    Close,
}

/// What the head said that the connection loop acts on.
pub struct Encoded {
    pub out: Out,
    pub keep_alive: bool,
}

/// Appends the response head to `buf`: the upstream's `received` fields (those still held as
/// received, see [`ReceivedFields`]) except the ones whose name the gateway set, then the
/// response's map. `keep_alive`: whether the connection may carry another request as far as
/// the client and the connection are concerned; `body_length` is the body's exact size when it
/// is known.
pub fn encode_head(
    parts: &Parts,
    received: Option<&ReceivedFields>,
    head_request: bool,
    version: Version,
    keep_alive: bool,
    body_length: Option<u64>,
    buf: &mut Vec<u8>,
) -> Encoded {
    let status = parts.status;
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    buf.extend_from_slice(b"\r\n");
    let mut head = HeadFields {
        bodiless: status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED,
        not_modified: status == StatusCode::NOT_MODIFIED,
        keep_alive,
        length: None,
        has_date: false,
        has_connection: false,
    };
    for (name, value) in received.into_iter().flat_map(ReceivedFields::iter) {
        let set_by_gateway = parts
            .headers
            .keys()
            .any(|set| set.as_str().as_bytes().eq_ignore_ascii_case(name));
        if !set_by_gateway {
            head.write(Role::of_received(name), name, value, buf);
        }
    }
    for (name, value) in &parts.headers {
        head.write(
            Role::of(name),
            name.as_str().as_bytes(),
            value.as_bytes(),
            buf,
        );
    }
    let HeadFields {
        bodiless,
        mut keep_alive,
        length,
        has_date,
        has_connection,
        ..
    } = head;
    let out = if bodiless || head_request {
        Out::Empty
    } else if let Some(length) = length {
        Out::Length(length)
    } else if let Some(length) = body_length {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        buf.extend_from_slice(b"\r\n");
        Out::Length(length)
    } else if version == Version::HTTP_11 {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    } else {
        keep_alive = false;
        Out::Close
    };
    if !has_date {
        buf.extend_from_slice(b"date: ");
        with_date(|date| buf.extend_from_slice(date));
        buf.extend_from_slice(b"\r\n");
    }
    if !has_connection && status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            buf.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    buf.extend_from_slice(b"\r\n");
    Encoded { out, keep_alive }
}

/// What the fields written so far said that the rest of the head depends on.
struct HeadFields {
    bodiless: bool,
    not_modified: bool,
    keep_alive: bool,
    length: Option<u64>,
    has_date: bool,
    has_connection: bool,
}

/// What a field means to the writer.
enum Role {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    Other,
}

impl Role {
    fn of(name: &HeaderName) -> Role {
        if *name == header::CONTENT_LENGTH {
            Role::ContentLength
        } else if *name == header::TRANSFER_ENCODING {
            Role::TransferEncoding
        } else if *name == header::CONNECTION {
            Role::Connection
        } else if *name == header::DATE {
            Role::Date
        } else {
            Role::Other
        }
    }

    /// The same for a name as received, in whatever case.
    fn of_received(name: &[u8]) -> Role {
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => Role::ContentLength,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => Role::TransferEncoding,
            10 if name.eq_ignore_ascii_case(b"connection") => Role::Connection,
            4 if name.eq_ignore_ascii_case(b"date") => Role::Date,
            _ => Role::Other,
        }
    }
}

impl HeadFields {
    fn write(&mut self, role: Role, name: &[u8], value: &[u8], buf: &mut Vec<u8>) {
        match role {
            Role::ContentLength => {
                // The first valid one decides; a response never carries two (the proxy builds
                // them, the upstream client refuses conflicting ones).
                if self.length.is_some() || self.bodiless && !self.not_modified {
                    return;
                }
                match http1::content_length(value) {
                    Some(n) => self.length = Some(n),
                    None => return,
                }
            }
            // The framing is ours to choose.
            Role::TransferEncoding => return,
            Role::Connection => {
                self.has_connection = true;
                if value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
                {
                    self.keep_alive = false;
                }
            }
            Role::Date => self.has_date = true,
            Role::Other => {}
        }
        buf.extend_from_slice(name);
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }
}

/// Appends a chunk's size line.
pub fn chunk_size_line(len: usize, buf: &mut Vec<u8>) {
    let mut hex = [0u8; 16];
    let mut at = hex.len();
    let mut n = len;
    loop {
        at -= 1;
        hex[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&hex[at..]);
    buf.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, the trailers and the end of the body.
pub fn last_chunk(trailers: Option<&http::HeaderMap>, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The IMF-fixdate of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != now {
            *cached = (now, imf_fixdate(now));
        }
        f(&cached.1);
    });
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for seconds since the epoch (RFC 9110 §5.6.7).
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |out: &mut [u8], at: usize, n: u64| {
        out[at] = b'0' + (n / 10 % 10) as u8;
        out[at + 1] = b'0' + (n % 10) as u8;
    };
    two(&mut out, 5, day as u64);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    let year = year as u64;
    two(&mut out, 12, year / 100);
    two(&mut out, 14, year % 100);
    two(&mut out, 17, hour);
    two(&mut out, 20, minute);
    two(&mut out, 23, second);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn head(
        response: Response<()>,
        head_request: bool,
        version: Version,
        length: Option<u64>,
    ) -> (String, Out, bool) {
        let (parts, ()) = response.into_parts();
        let mut buf = Vec::new();
        let encoded = encode_head(&parts, None, head_request, version, true, length, &mut buf);
        let text = String::from_utf8(buf).unwrap();
        // The date changes; everything else is fixed.
        let text = text
            .lines()
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n");
        (text, encoded.out, encoded.keep_alive)
    }

    #[test]
    fn formats_dates() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_709_210_096),
            b"Thu, 29 Feb 2024 12:34:56 GMT"
        );
    }

    #[test]
    fn frames_by_length_chunks_or_close() {
        let response = || {
            Response::builder()
                .status(200)
                .header("x-a", "1")
                .body(())
                .unwrap()
        };
        assert_eq!(
            head(response(), false, Version::HTTP_11, Some(5)),
            (
                "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 5\n".into(),
                Out::Length(5),
                true
            )
        );
        assert_eq!(
            head(response(), false, Version::HTTP_11, None),
            (
                "HTTP/1.1 200 OK\nx-a: 1\ntransfer-encoding: chunked\n".into(),
                Out::Chunked,
                true
            )
        );
        assert_eq!(
            head(response(), false, Version::HTTP_10, None),
            (
                "HTTP/1.1 200 OK\nx-a: 1\nconnection: close\n".into(),
                Out::Close,
                false
            )
        );
        assert_eq!(
            head(response(), false, Version::HTTP_10, Some(0)),
            (
                "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 0\nconnection: keep-alive\n".into(),
                Out::Length(0),
                true
            )
        );
        // HEAD: the upstream's length stays, nothing follows.
        let with_length = Response::builder()
            .header("content-length", "10")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert_eq!(
            head(with_length, true, Version::HTTP_11, Some(0)),
            (
                "HTTP/1.1 200 OK\ncontent-length: 10\n".into(),
                Out::Empty,
                true
            )
        );
        let no_content = Response::builder().status(204).body(()).unwrap();
        assert_eq!(
            head(no_content, false, Version::HTTP_11, None),
            ("HTTP/1.1 204 No Content\n".into(), Out::Empty, true)
        );
        let closing = Response::builder()
            .status(400)
            .header("connection", "close")
            .header("content-length", "2")
            .body(())
            .unwrap();
        assert_eq!(
            head(closing, false, Version::HTTP_11, Some(2)),
            (
                "HTTP/1.1 400 Bad Request\nconnection: close\ncontent-length: 2\n".into(),
                Out::Length(2),
                false
            )
        );
    }

    #[test]
    fn received_fields_go_out_as_received_unless_the_gateway_set_the_name() {
        let raw = bytes::Bytes::from_static(
            b"Server: up\r\nX-Request-Id: theirs\r\nContent-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n",
        );
        let mut spans = Vec::new();
        let mut at = 0;
        for line in raw.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let colon = line.iter().position(|&b| b == b':').unwrap();
            let end = at + line.len() - 1;
            spans.push((
                at as u32,
                (at + colon) as u32,
                (at + colon + 2) as u32,
                end as u32,
            ));
            at += line.len() + 1;
        }
        // The upstream client consumed `Connection` (field 4) itself.
        let fields = ReceivedFields::new(raw, &spans, 1 << 4);
        let response = Response::builder()
            .header("x-request-id", "ours")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let mut buf = Vec::new();
        let encoded = encode_head(
            &parts,
            Some(&fields),
            false,
            Version::HTTP_11,
            true,
            Some(5),
            &mut buf,
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nx-request-id: ours\r\n\r\n"
        );
        assert_eq!((encoded.out, encoded.keep_alive), (Out::Length(5), true));
        // Merged into a map, the gateway's value wins the same way.
        let mut headers = parts.headers;
        fields.merge_into(&mut headers).unwrap();
        assert_eq!(headers["x-request-id"], "ours");
        assert_eq!(headers["server"], "up");
        assert!(!headers.contains_key("connection"));
    }

    #[test]
    fn encodes_chunks() {
        let mut buf = Vec::new();
        chunk_size_line(0x1a2b, &mut buf);
        chunk_size_line(1, &mut buf);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        last_chunk(Some(&trailers), &mut buf);
        assert_eq!(buf, b"1a2b\r\n1\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }
}
