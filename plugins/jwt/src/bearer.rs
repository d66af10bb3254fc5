//! The token in `Authorization: Bearer <token>` (RFC 6750 section 2.1).

use crate::rejection::Rejection;

/// What the request's `Authorization` headers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No `Authorization` header, or one with another scheme (`Basic ...`): not ours.
    None,
    Bearer(String),
}

/// Reads the bearer token from the request's `Authorization` values.
pub fn credentials(authorization: &[Vec<u8>]) -> Result<Credentials, Rejection> {
    let value = match authorization {
        [] => return Ok(Credentials::None),
        [value] => value,
        _ => return Err(Rejection::AmbiguousAuthorization),
    };
    let value = std::str::from_utf8(value).map_err(|_| Rejection::Malformed)?;
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // Auth schemes are case-insensitive (RFC 9110 section 11.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials::None);
    }
    let token = token.trim_start();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Rejection::Malformed);
    }
    Ok(Credentials::Bearer(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(values: &[&str]) -> Result<Credentials, Rejection> {
        let values: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        credentials(&values)
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            read(&["Bearer a.b.c"]),
            Ok(Credentials::Bearer("a.b.c".into()))
        );
        assert_eq!(
            read(&["bearer  a.b.c "]),
            Ok(Credentials::Bearer("a.b.c".into()))
        );
        assert_eq!(read(&[]), Ok(Credentials::None));
        assert_eq!(read(&["Basic dXNlcjpwYXNz"]), Ok(Credentials::None));
        assert_eq!(read(&["Bearer"]), Err(Rejection::Malformed));
        assert_eq!(read(&["Bearer "]), Err(Rejection::Malformed));
        assert_eq!(read(&["Bearer a b"]), Err(Rejection::Malformed));
        assert_eq!(
            read(&["Bearer a.b.c", "Bearer d.e.f"]),
            Err(Rejection::AmbiguousAuthorization)
        );
        assert_eq!(
            credentials(&[b"Bearer \xff".to_vec()]),
            Err(Rejection::Malformed)
        );
    }
}
