//! W3C Trace Context (`traceparent`): every request goes upstream with one, so the services
//! behind the gateway join one trace, and the access log names its trace id.
//!
//! A valid `traceparent` from the client is forwarded as it is, with its `tracestate`: the
//! gateway records no spans of its own, so putting its own span id in would point the
//! upstream's spans at a parent no tracer ever receives. A missing or malformed one starts a
//! new trace: random trace and parent ids, flags `01` (sampled), so that services whose
//! sampler follows the parent record it; any `tracestate` goes (it belonged to no valid
//! parent, and the spec forbids reading it then).

use super::headers::random_id_bits;
use crate::hex::hex_into;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-` trace id `-` parent id `-` flags.
const VERSION_00_LEN: usize = 55;

/// A trace id as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        // Only ever built from lowercase hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// The request's trace id: from its `traceparent` if that is valid, else from one put in.
pub fn ensure_traceparent(headers: &mut HeaderMap) -> TraceId {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let (first, more) = (values.next(), values.next().is_some());
    if let Some(value) = first
        && !more
        && let Some(trace_id) = parse(value.as_bytes())
    {
        return trace_id;
    }
    headers.remove(&TRACESTATE);
    let (trace_id, header) = new_traceparent();
    headers.insert(TRACEPARENT.clone(), header);
    trace_id
}

/// The trace id of a valid `traceparent`. Versions after 00 may append fields; their first
/// four are read the same way. Version `ff` and all-zero ids are invalid.
fn parse(value: &[u8]) -> Option<TraceId> {
    if value.len() < VERSION_00_LEN {
        return None;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let separators = [value[2], value[35], value[52]] == [b'-'; 3];
    let fields_hex = [version, trace_id, parent_id, flags]
        .iter()
        .all(|field| field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    let length_ok = match version {
        b"00" => value.len() == VERSION_00_LEN,
        b"ff" => false,
        _ => value.len() == VERSION_00_LEN || value[VERSION_00_LEN] == b'-',
    };
    let zero = |id: &[u8]| id.iter().all(|&b| b == b'0');
    if !(separators && fields_hex && length_ok) || zero(trace_id) || zero(parent_id) {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(trace_id);
    Some(TraceId(id))
}

fn new_traceparent() -> (TraceId, HeaderValue) {
    // 16 bytes of trace id, 8 of parent id, in one draw (`random::<[u8; N]>()` would draw
    // a word per byte).
    let mut random = [0u8; 24];
    random_id_bits(&mut random);
    // Zero ids are invalid; 2^-128 and 2^-64 chances, but cheap to rule out.
    random[15] |= u8::from(random[..16] == [0; 16]);
    random[23] |= u8::from(random[16..] == [0; 8]);
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&random[..16], &mut text[3..35]);
    hex_into(&random[16..], &mut text[36..52]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&text[3..35]);
    // Hex digits and dashes are always a valid header value.
    let header = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
    (TraceId(id), header)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_valid_traceparent_and_its_tracestate_are_kept() {
        let mut map = headers(&[("traceparent", VALID), ("tracestate", "vendor=x")]);
        let id = ensure_traceparent(&mut map);
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(map["traceparent"], VALID);
        assert_eq!(map["tracestate"], "vendor=x");
        // A later version with an extra field is read by its first four.
        let mut map = headers(&[(
            "traceparent",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        )]);
        assert_eq!(
            ensure_traceparent(&mut map).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_missing_or_malformed_one_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 has no more fields
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // forbidden version
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut map = headers(&[("traceparent", bad), ("tracestate", "vendor=x")]);
            let id = ensure_traceparent(&mut map);
            let sent = map["traceparent"].to_str().unwrap().to_owned();
            assert_eq!(parse(sent.as_bytes()), Some(id), "{bad:?} -> {sent}");
            assert!(sent.starts_with("00-") && sent.ends_with("-01"), "{sent}");
            assert_ne!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(!map.contains_key("tracestate"), "{bad:?}");
        }
        // Two traceparent headers: neither is believed.
        let mut map = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_ne!(
            ensure_traceparent(&mut map).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(map.get_all("traceparent").iter().count(), 1);
        // None at all: one is added, and each request gets its own.
        let (mut first, mut second) = (HeaderMap::new(), HeaderMap::new());
        assert_ne!(
            ensure_traceparent(&mut first),
            ensure_traceparent(&mut second)
        );
    }
}
