//! A second look at HTTP/1.1 request framing, to reject request-smuggling attempts outright.
//!
//! hyper handles ambiguous framing safely but leniently, as RFC 9112 allows: with both
//! `Content-Length` and `Transfer-Encoding` it drops the length, reads chunked and closes the
//! connection afterwards; duplicate equal `Content-Length` headers are merged. Neither is
//! visible in the request it hands us. A gateway should refuse such requests (Envoy and nginx
//! do), so this guard watches the bytes hyper reads, finds each request head, and records a
//! verdict per request, in order; the proxy consults it before routing.
//!
//! The guard follows message framing (Content-Length and chunked bodies) to find the next head
//! on keep-alive connections. On anything it does not understand (HTTP/2, a protocol switch,
//! garbage) it stops looking and defers to hyper, which has already rejected or will reject
//! malformed input itself.

use std::collections::VecDeque;

/// Largest head the guard buffers; hyper answers 431 well before this.
const MAX_HEAD: usize = 256 * 1024;
const MAX_HEADERS: usize = 128;

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkDataEnd(u8),
    /// Reading trailer lines until an empty one.
    Trailers,
    /// Not HTTP/1 request framing any more (HTTP/2, upgraded, or not understood).
    Off,
}

pub struct FramingGuard {
    state: State,
    /// Bytes of the current head, chunk-size line or trailer line.
    line: Vec<u8>,
    /// Verdicts of heads seen and not yet claimed: `Some(reason)` for a rejected one.
    verdicts: VecDeque<Option<&'static str>>,
}

impl Default for FramingGuard {
    fn default() -> Self {
        FramingGuard {
            state: State::Head,
            line: Vec::new(),
            verdicts: VecDeque::new(),
        }
    }
}

impl FramingGuard {
    /// The verdict for the next request hyper hands over (`None`: nothing wrong or unknown).
    pub fn next_verdict(&mut self) -> Option<&'static str> {
        self.verdicts.pop_front().flatten()
    }

    /// Feeds bytes as they are read from the client.
    pub fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    let consumed = self.feed_head(data);
                    data = &data[consumed..];
                }
                State::Body(remaining) => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if remaining == take {
                        State::Head
                    } else {
                        State::Body(remaining - take)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(end) = data.iter().position(|&b| b == b'\n') else {
                        self.push_line(data);
                        return;
                    };
                    self.push_line(&data[..=end]);
                    data = &data[end + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    self.end_of_line(&line);
                    line.clear();
                    self.line = line;
                }
                State::ChunkData(remaining) => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if remaining == take {
                        State::ChunkDataEnd(2)
                    } else {
                        State::ChunkData(remaining - take)
                    };
                }
                State::ChunkDataEnd(left) => {
                    data = &data[1..];
                    self.state = if left == 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkDataEnd(left - 1)
                    };
                }
            }
        }
    }

    fn push_line(&mut self, bytes: &[u8]) {
        self.line.extend_from_slice(bytes);
        if self.line.len() > MAX_HEAD {
            self.state = State::Off;
        }
    }

    fn end_of_line(&mut self, line: &[u8]) {
        match self.state {
            State::ChunkSize => {
                let text = std::str::from_utf8(line).unwrap_or("");
                let size = text.split(';').next().unwrap_or("").trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => self.state = State::Trailers,
                    Ok(n) => self.state = State::ChunkData(n),
                    Err(_) => self.state = State::Off,
                }
            }
            State::Trailers if line == b"\r\n" || line == b"\n" => self.state = State::Head,
            _ => {}
        }
    }

    /// Consumes head bytes; returns how many of `data` were used.
    fn feed_head(&mut self, data: &[u8]) -> usize {
        // Empty lines before a request line are allowed (RFC 9112 2.2).
        let mut skipped = 0;
        if self.line.is_empty() {
            skipped = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
        }
        let data = &data[skipped..];
        // Usually a whole head arrives in one read: judge it in place, without copying.
        if self.line.is_empty()
            && !data.starts_with(b"PRI * HTTP/2.0")
            && let Some(end) = find_head_end(data)
        {
            self.judge(&data[..end]);
            return skipped + end;
        }
        let search_from = self.line.len().saturating_sub(3);
        self.line.extend_from_slice(data);
        if self.line.starts_with(b"PRI * HTTP/2.0") {
            self.state = State::Off;
            return skipped + data.len();
        }
        let Some(end) = find_head_end(&self.line[search_from..]).map(|e| e + search_from) else {
            if self.line.len() > MAX_HEAD {
                self.state = State::Off;
            }
            return skipped + data.len();
        };
        let mut head = std::mem::take(&mut self.line);
        // Bytes after the head belong to the body or the next request.
        let used_of_data = data.len() - (head.len() - end);
        self.judge(&head[..end]);
        // Keep the buffer's capacity for the next head.
        head.clear();
        self.line = head;
        skipped + used_of_data
    }

    fn judge(&mut self, head: &[u8]) {
        // Most requests (GET, HEAD, ...) carry neither header: they have no body and nothing
        // to judge, and a scan of the line starts is much cheaper than a parse.
        if !mentions_framing(head) {
            let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            if !request_line.trim_ascii_end().ends_with(b" HTTP/1.1")
                && !request_line.trim_ascii_end().ends_with(b" HTTP/1.0")
            {
                self.state = State::Off;
                return;
            }
            self.verdicts.push_back(None);
            self.state = State::Head;
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
            self.state = State::Off;
            return;
        }
        let mut lengths = Vec::new();
        let mut chunked = false;
        let mut transfer_encoding = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                lengths.push(
                    std::str::from_utf8(header.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok()),
                );
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                chunked = header
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        let verdict = if transfer_encoding && !lengths.is_empty() {
            Some("both Content-Length and Transfer-Encoding")
        } else if lengths.len() > 1 {
            Some("more than one Content-Length header")
        } else {
            None
        };
        self.verdicts.push_back(verdict);
        self.state = if transfer_encoding {
            if chunked {
                State::ChunkSize
            } else {
                State::Off
            }
        } else {
            match lengths.first() {
                Some(Some(0)) | None => State::Head,
                Some(Some(n)) => State::Body(*n),
                Some(None) => State::Off,
            }
        };
    }
}

/// Whether any header line of `head` starts with `Content-Length` or `Transfer-Encoding`.
fn mentions_framing(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let starts =
            |name: &[u8]| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name);
        match line.first() {
            Some(b'c' | b'C') => starts(b"content-length"),
            Some(b't' | b'T') => starts(b"transfer-encoding"),
            _ => false,
        }
    })
}

/// Position just past the `\r\n\r\n` (or `\n\n`) that ends a head.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split_every: usize) -> Vec<Option<&'static str>> {
        let mut guard = FramingGuard::default();
        for piece in stream.chunks(split_every) {
            guard.observe(piece);
        }
        guard.verdicts.into_iter().collect()
    }

    #[test]
    fn follows_keep_alive_requests_with_bodies() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        for split in [1, 3, 7, 1000] {
            assert_eq!(
                verdicts(stream, split),
                vec![
                    None,
                    None,
                    None,
                    Some("more than one Content-Length header")
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn flags_cl_te() {
        let stream = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            verdicts(stream, 5),
            vec![Some("both Content-Length and Transfer-Encoding"), None]
        );
    }

    #[test]
    fn steps_aside_for_http2_and_garbage() {
        let mut guard = FramingGuard::default();
        guard.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(guard.state, State::Off);
        let mut guard = FramingGuard::default();
        guard.observe(b"\x16\x03\x01 not http\r\n\r\n");
        assert_eq!(guard.state, State::Off);
    }
}
