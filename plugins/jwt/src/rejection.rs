//! Why a request is refused, and the 401 that says so (RFC 6750 section 3).

use wasmgate_sdk::Reply;
use wasmgate_sdk::serde_json::json;

/// Every reason for a 401. The descriptions are fixed text: nothing from the token is echoed
/// into the `WWW-Authenticate` header, so a client cannot break its quoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Several `Authorization` headers: which one the upstream would read is anyone's guess.
    AmbiguousAuthorization,
    /// Not three base64url parts, a header or payload that is not JSON, an unusable claim.
    Malformed,
    /// `alg: none`.
    Unsigned,
    AlgorithmNotAllowed,
    /// A `crit` header parameter: we understand no extensions (RFC 7515 section 4.1.11).
    UnsupportedCritical,
    UnknownKey,
    KeyDoesNotFitAlgorithm,
    BadSignature,
    NoExpiry,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl Rejection {
    pub fn description(self) -> &'static str {
        match self {
            Rejection::Missing => "a bearer token is required",
            Rejection::AmbiguousAuthorization => "more than one Authorization header",
            Rejection::Malformed => "malformed token",
            Rejection::Unsigned => "unsigned tokens are not accepted",
            Rejection::AlgorithmNotAllowed => "signing algorithm not allowed",
            Rejection::UnsupportedCritical => "unsupported critical header parameter",
            Rejection::UnknownKey => "unknown signing key",
            Rejection::KeyDoesNotFitAlgorithm => "signing key does not fit the algorithm",
            Rejection::BadSignature => "invalid signature",
            Rejection::NoExpiry => "token has no expiry (exp)",
            Rejection::Expired => "token expired",
            Rejection::NotYetValid => "token not yet valid (nbf)",
            Rejection::WrongIssuer => "wrong issuer",
            Rejection::WrongAudience => "wrong audience",
        }
    }

    /// The 401. A request without credentials gets a bare `Bearer` challenge: RFC 6750 says
    /// it SHOULD NOT carry an error code. Every other case is `invalid_token`.
    pub fn reply(self) -> Reply {
        let description = self.description();
        let (challenge, code) = match self {
            Rejection::Missing => ("Bearer".to_owned(), "missing_token"),
            _ => (
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
                "invalid_token",
            ),
        };
        Reply::new(401)
            .header("www-authenticate", challenge)
            .header("cache-control", "no-store")
            .json(&json!({ "error": code, "message": description }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_has_no_error_code() {
        let reply = Rejection::Missing.reply();
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .headers
                .contains(&("www-authenticate".into(), b"Bearer".to_vec()))
        );
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            r#"{"error":"missing_token","message":"a bearer token is required"}"#
        );
    }

    #[test]
    fn invalid_token_names_the_reason() {
        let reply = Rejection::Expired.reply();
        assert!(reply.headers.contains(&(
            "www-authenticate".into(),
            br#"Bearer error="invalid_token", error_description="token expired""#.to_vec()
        )));
        assert!(
            reply
                .headers
                .contains(&("content-type".into(), b"application/json".to_vec()))
        );
    }
}
