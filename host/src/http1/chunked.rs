//! Decoding a `Transfer-Encoding: chunked` response body (RFC 9112 §7.1) from the connection's
//! read buffer, strictly: CRLF line ends, hex sizes that fit in 64 bits, bounded size lines and
//! trailers. A lenient decoder in front of a lenient client is how response splitting starts.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A chunk-size line with extensions longer than this is refused.
const MAX_SIZE_LINE: usize = 4096;
/// All trailer fields together.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, PartialEq)]
pub struct ChunkedDecoder {
    state: State,
    /// Boxed: trailers are rare, and the decoder lives in every chunked response body, which
    /// moves along the proxy path.
    trailers: Option<Box<HeaderMap>>,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes to go.
    Data(u64),
    /// After a chunk's data: expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended; every byte of it has been consumed from the buffer.
    Done,
    /// The buffer holds no complete element: read more.
    NeedMore,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked body from the upstream: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            trailers: None,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Consumes what it can from `buf` and returns the next element of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf, MAX_SIZE_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let limit = MAX_TRAILERS.saturating_sub(self.trailer_bytes).max(2);
                    let Some(line) = take_line(buf, limit)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        if let Some(trailers) = self.trailers.take() {
                            return Ok(Decoded::Trailers(*trailers));
                        }
                        return Ok(Decoded::Done);
                    }
                    self.trailer_bytes += line.len() + 2;
                    let (name, value) = parse_trailer(&line)?;
                    self.trailers
                        .get_or_insert_with(Box::default)
                        .append(name, value);
                }
                State::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// Takes one CRLF-terminated line off the front of `buf` (without the CRLF), or `None` when
/// the buffer does not hold a whole one yet.
fn take_line(buf: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, ChunkError> {
    let Some(lf) = buf.iter().take(limit).position(|&b| b == b'\n') else {
        if buf.len() >= limit {
            return Err(ChunkError("line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ChunkError("line not ended by CRLF"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError("chunk size is not hexadecimal"));
    }
    if digits > 16 {
        return Err(ChunkError("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ChunkError("garbage after the chunk size"));
    }
    if rest.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(ChunkError("control character in a chunk extension"));
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let digit = (b as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(digit)))
            .ok_or(ChunkError("chunk size too large"))?;
    }
    Ok(size)
}

fn parse_trailer(line: &[u8]) -> Result<(HeaderName, HeaderValue), ChunkError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ChunkError("trailer field without a colon"))?;
    let name =
        HeaderName::from_bytes(&line[..colon]).map_err(|_| ChunkError("invalid trailer name"))?;
    let value = line[colon + 1..].trim_ascii();
    let value = HeaderValue::from_bytes(value).map_err(|_| ChunkError("invalid trailer value"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the body.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(map) => trailers = Some(map),
                Decoded::Done => return Ok((body, trailers)),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(ChunkError("input ended"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_at_any_split() {
        let input = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\n\r\n";
        for step in 1..=input.len() {
            let (body, trailers) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn leaves_the_next_response_in_the_buffer() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(decoder.state, State::Done);
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn collects_trailers() {
        let input = b"A\r\n0123456789\r\n0\r\ngrpc-status: 0\r\nx-sum:  abc \r\n\r\n";
        let (body, trailers) = decode_all(input, 3).unwrap();
        assert_eq!(body, b"0123456789");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-sum"], "abc");
    }

    #[test]
    fn refuses_malformed_framing() {
        for (input, why) in [
            (&b"zz\r\n"[..], "chunk size is not hexadecimal"),
            (b"5\nhello\r\n0\r\n\r\n", "line not ended by CRLF"),
            (b"5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"5 x\r\nhello\r\n", "garbage after the chunk size"),
            (b"10000000000000000\r\n", "chunk size too large"),
            (b"0\r\nno-colon\r\n\r\n", "trailer field without a colon"),
            (b"-5\r\n", "chunk size is not hexadecimal"),
        ] {
            assert_eq!(
                decode_all(input, 64).unwrap_err(),
                ChunkError(why),
                "{input:?}"
            );
        }
        let long = [b"5;".as_slice(), &[b'x'; MAX_SIZE_LINE]].concat();
        assert_eq!(
            decode_all(&long, 512).unwrap_err(),
            ChunkError("line too long")
        );
    }

    #[test]
    fn large_sizes_are_read_in_pieces() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffff\r\nabc"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::NeedMore));
        assert_eq!(decoder.state, State::Data(0xffff_ffff - 3));
    }
}
