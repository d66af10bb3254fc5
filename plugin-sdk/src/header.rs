//! Header-name rules the gateway applies, for plugins that check header names in their config
//! at load time (so a mistake is a config error, not a failure on every request).

/// Headers the gateway manages: `set_header`, `append_header` and `set_trailer` refuse them,
/// and `remove_header` ignores them. (The one exception, `te: trailers` on a request, is a
/// value check the gateway makes when the header is set.)
pub const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
    "host",
];

/// `name` lowercased, if it is a valid header name (an HTTP token).
///
/// ```
/// assert_eq!(wasmgate_sdk::header::name("X-User").unwrap(), "x-user");
/// assert!(wasmgate_sdk::header::name("bad name").is_err());
/// ```
pub fn name(name: &str) -> Result<String, String> {
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if is_token {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("`{name}` is not a valid header name"))
    }
}

/// `name` lowercased, if it is a valid header name that a plugin may set.
///
/// ```
/// assert!(wasmgate_sdk::header::settable("x-user-id").is_ok());
/// assert!(wasmgate_sdk::header::settable("Content-Length").is_err());
/// ```
pub fn settable(header: &str) -> Result<String, String> {
    let lower = name(header)?;
    if RESERVED.contains(&lower.as_str()) {
        return Err(format!("`{lower}` is managed by the gateway"));
    }
    Ok(lower)
}
