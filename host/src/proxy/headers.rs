//! Header work on the proxy path: hop-by-hop removal, `X-Forwarded-*`, request ids.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use rand::RngCore;

use crate::hex::hex_into;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// How many fields the proxy may add to a request: `X-Request-Id`, `traceparent`,
/// `X-Forwarded-For/Proto/Host` and `Host`.
pub const ADDED_REQUEST_FIELDS: usize = 6;

/// Removes the headers that describe one connection rather than the message (RFC 9110 7.6.1),
/// including every header the `Connection` header names. `TE: trailers` is kept when the next
/// hop speaks HTTP/2 (gRPC needs it); `Upgrade` is kept for upgrade requests and 101 responses.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // Most messages carry none of these, or just `Connection: keep-alive`: look before touching
    // the map (every removal hashes, present or not).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        // Connection options that are not header names, or are removed below anyway.
        if ["close", "keep-alive", "upgrade", "te", ""]
            .iter()
            .any(|option| token.eq_ignore_ascii_case(option))
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            doomed.push(name);
        }
    }
    let te_is_trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in headers.keys() {
        let kept =
            (*name == header::TE && te_is_trailers) || (keep_upgrade && *name == header::UPGRADE);
        if is_hop_by_hop(name) && !kept {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::http1::is_hop_by_hop(name.as_str().as_bytes())
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            // Garbage in the chain: stop believing it here.
            Err(_) => break,
        }
    }
    client
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// Sets `X-Forwarded-For/Proto/Host`. From a trusted proxy the existing values are kept and the
/// peer is appended; from anyone else they are replaced, so clients cannot forge them.
/// `peer` is the peer's address as text ([`ip_header_value`]).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let forwarded_for = if peer_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        // Several lines of X-Forwarded-For form one list (RFC 9110 5.3).
        let mut value = Vec::with_capacity(64);
        for line in headers.get_all(&X_FORWARDED_FOR) {
            value.extend_from_slice(line.as_bytes());
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&value).ok()
    } else {
        Some(peer.clone())
    };
    if peer_trusted {
        // Several XFF lines are merged into the one value built above.
        headers.remove(&X_FORWARDED_FOR);
    }
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// `ip` as a header value.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let mut text = Vec::with_capacity(39);
    write_ip(&mut text, ip);
    // Digits, dots, colons and hex letters are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Writes `ip` as text. IPv4 by hand: `Display` goes through `core::fmt`, about 1.3k
/// instructions per request for the `X-Forwarded-For` of every proxied request.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Keeps the client's `X-Request-Id` when it is sane (visible ASCII, at most 128 bytes), else
/// generates one; returns the id in effect.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(existing) = headers.get(&X_REQUEST_ID)
        && !existing.is_empty()
        && existing.len() <= 128
        && existing.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return existing.clone();
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Fills `out` with random bits for ids (request ids, trace ids): a xoshiro generator per
/// thread, seeded from the OS-seeded `rand::rng()`. Ids must be unique, not secret, and
/// `rand::rng()`'s ChaCha costs several hundred instructions per request where this costs tens.
pub fn random_id_bits(out: &mut [u8]) {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    thread_local! {
        static IDS: std::cell::RefCell<SmallRng> =
            std::cell::RefCell::new(SmallRng::from_rng(&mut rand::rng()));
    }
    IDS.with_borrow_mut(|rng| rng.fill_bytes(out));
}

/// 128 random bits as 32 lowercase hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut bits = [0u8; 16];
    random_id_bits(&mut bits);
    let mut text = [0u8; 32];
    hex_into(&bits, &mut text);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut h = headers(&[
            ("te", "trailers"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true, true);
        assert!(h.contains_key("te") && h.contains_key("upgrade") && h.contains_key("connection"));
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 10.1.1.1")]);
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
    }

    #[test]
    fn forwarded_headers_are_replaced_for_strangers() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            &ip_header_value("8.8.8.8".parse().unwrap()),
            false,
            "http",
            Some(&HeaderValue::from_static("a.com")),
        );
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com");
        let mut h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer = ip_header_value("10.0.0.1".parse().unwrap());
        set_forwarded(&mut h, &peer, true, "http", None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids() {
        let mut h = headers(&[("x-request-id", "abc-123")]);
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        let mut h = headers(&[("x-request-id", "bad id with spaces")]);
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_ne!(new_request_id(), new_request_id());
    }
}
