//! What the gateway's two HTTP/1.1 halves, the server connection (`server::h1`) and the
//! upstream client (`upstream::h1`), read the same way: where a parsed head's fields lie, the
//! framing fields, the header map built from them, and chunked bodies.

pub mod chunked;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields in one head; more is refused (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

/// Where a field lies in its head: name start and end, value start and end. Kept as offsets so
/// that, once the head is split off the read buffer, the values can share its bytes.
pub type FieldSpan = (u32, u32, u32, u32);

/// The span of one field parsed (by httparse) from a buffer starting at `base`.
pub fn field_span(base: *const u8, field: &httparse::Header<'_>) -> FieldSpan {
    let (name_at, name_end) = span(base, field.name.as_bytes());
    let (value_at, value_end) = span(base, field.value);
    (name_at, name_end, value_at, value_end)
}

/// The offsets of `part`, a slice of a buffer starting at `base`. Heads are bounded far below
/// 4 GiB, so the offsets fit.
pub fn span(base: *const u8, part: &[u8]) -> (u32, u32) {
    let at = part.as_ptr() as usize - base as usize;
    (at as u32, (at + part.len()) as u32)
}

/// A `Content-Length` value: `1*DIGIT` (RFC 9110 §8.6) that fits in 64 bits, nothing else
/// (no sign, no list, no inner spaces): a lenient reading is where smuggling starts.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked`: that decides the framing.
pub fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a field describes one connection rather than the message (RFC 9110 §7.6.1), in
/// any case: the upstream client leaves these out of the fields it passes on, and the proxy
/// removes them from the maps it forwards (`proxy::headers::strip_hop_by_hop`).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    match name.len() {
        2 => name.eq_ignore_ascii_case(b"te"),
        7 => name.eq_ignore_ascii_case(b"upgrade"),
        10 => name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"),
        16 => name.eq_ignore_ascii_case(b"proxy-connection"),
        17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
        18 => name.eq_ignore_ascii_case(b"proxy-authenticate"),
        _ => false,
    }
}

/// A set of field indexes (bit i: field i); [`MAX_HEADERS`] fits.
pub type FieldSet = u128;

/// The fields of `head` at `spans`, their values sharing `head`'s bytes, except those in
/// `skip`, in a map with room for `room` more. The error says which part was invalid.
pub fn header_map(
    head: &Bytes,
    spans: &[FieldSpan],
    skip: FieldSet,
    room: usize,
) -> Result<HeaderMap, &'static str> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    for (i, &(name_at, name_end, value_at, value_end)) in spans.iter().enumerate() {
        if skip & (1 << i) != 0 {
            continue;
        }
        let name = HeaderName::from_bytes(&head[name_at as usize..name_end as usize])
            .map_err(|_| "invalid header name")?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at as usize..value_end as usize))
                .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Header fields as they arrived, kept in the head's bytes instead of a [`HeaderMap`]: a
/// response the gateway only passes on is written out from these (names in the upstream's
/// case, as nginx and Pingora pass them), so it costs neither hashing every name nor building
/// and dropping the map, about a tenth of a plain request's instructions (docs/benchmarks.md).
/// Whoever needs to read or change the fields makes the map with [`ReceivedFields::merge_into`].
pub struct ReceivedFields {
    head: Bytes,
    spans: Box<[FieldSpan]>,
}

impl ReceivedFields {
    /// The fields of `head` at `spans` except those in `skip`. httparse checked them: the
    /// names are tokens and the values visible characters, blanks and obs-text, which is what
    /// `HeaderName` and `HeaderValue` accept.
    pub fn new(head: Bytes, spans: &[FieldSpan], skip: FieldSet) -> Self {
        // Sized up front: collecting the filtered spans would grow the vector and then shrink
        // it into the box, two reallocations and copies per response.
        let skipped = (skip & ((1 << spans.len().min(MAX_HEADERS)) - 1)).count_ones();
        let mut kept_spans = Vec::with_capacity(spans.len() - skipped as usize);
        let mut skip = skip;
        for &span in spans {
            if skip & 1 == 0 {
                kept_spans.push(span);
            }
            skip >>= 1;
        }
        ReceivedFields {
            head,
            spans: kept_spans.into_boxed_slice(),
        }
    }

    /// Name and value of each field, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&(name_at, name_end, value_at, value_end)| {
                (
                    &self.head[name_at as usize..name_end as usize],
                    &self.head[value_at as usize..value_end as usize],
                )
            })
    }

    /// Puts the fields into `headers`, under those already there: a name the gateway set
    /// (`X-Request-Id`, quota headers) replaces the received fields of that name, as the
    /// writer does when it writes them from the bytes. The error says which part was invalid.
    pub fn merge_into(self, headers: &mut HeaderMap) -> Result<(), &'static str> {
        let received = header_map(&self.head, &self.spans, 0, headers.len())?;
        let set = std::mem::replace(headers, received);
        headers.extend(set);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"0007"), Some(7));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1, 1",
            b"1 1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_last_coding_decides() {
        assert!(ends_chunked(b"gzip, Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert!(!ends_chunked(b"xchunked"));
    }

    #[test]
    fn hop_by_hop_names_in_any_case() {
        for name in [
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "transfer-encoding",
            "Upgrade",
            "proxy-authenticate",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "trailer",
            "proxy-authorization",
            "content-length",
            "tee",
            "",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn received_fields_keep_all_but_the_skipped_in_order() {
        // As many fields as a head may have, skipping some at both ends of the set's range.
        let mut text = Vec::new();
        let mut spans = Vec::new();
        for i in 0..MAX_HEADERS {
            let at = text.len();
            text.extend_from_slice(format!("X-F{i}: v").as_bytes());
            text.push(0xe9); // obs-text
            text.extend_from_slice(format!("{i}\r\n").as_bytes());
            let name_end = at + format!("X-F{i}").len();
            spans.push((
                at as u32,
                name_end as u32,
                name_end as u32 + 2,
                text.len() as u32 - 2,
            ));
        }
        let skip: FieldSet = 1 | 1 << 1 | 1 << 64 | 1 << (MAX_HEADERS - 1);
        let fields = ReceivedFields::new(Bytes::from(text), &spans, skip);
        assert_eq!(fields.iter().count(), MAX_HEADERS - 4);
        let names: Vec<String> = fields
            .iter()
            .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
            .collect();
        assert_eq!(names.first().map(String::as_str), Some("X-F2"));
        assert_eq!(names.last().map(String::as_str), Some("X-F98"));
        assert!(!names.iter().any(|name| name == "X-F64"));
        // Into a map: lower-case names, the obs-text values as they were.
        let mut headers = HeaderMap::new();
        fields.merge_into(&mut headers).unwrap();
        assert_eq!(headers.len(), MAX_HEADERS - 4);
        assert_eq!(headers["x-f63"].as_bytes(), b"v\xe963");
    }
}
