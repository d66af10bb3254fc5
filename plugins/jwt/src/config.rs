//! The route's `config` table as the plugin receives it, and the checks that turn it into
//! settings. Every mistake is reported by `new`, so `wasmgate check` and reloads show it; no
//! request ever finds out about a bad config.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

/// The longest clock skew we accept. A larger `leeway` is surely a unit mistake (milliseconds
/// for seconds) and would keep expired tokens alive for days.
const MAX_LEEWAY_SECONDS: u64 = 24 * 60 * 60;

/// The shortest HMAC secret: RFC 7518 section 3.2 asks for at least the hash size, and 32 bytes
/// (HS256's) is the floor below which a secret can be guessed offline from one token.
const MIN_SECRET_BYTES: usize = 32;

/// Context value names are limited by the gateway.
const MAX_CONTEXT_NAME_BYTES: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The allow-list: a token whose `alg` is not here is refused.
    pub algorithms: Vec<String>,
    /// The shared secret for HS256/384/512.
    #[serde(default)]
    pub secret: Option<String>,
    /// A JWKS document (JSON text), usually `"@file:keys/jwks.json"`.
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<OneOrMany>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    #[serde(default)]
    pub leeway: u64,
    /// Claim name -> request header.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Claim name -> context value name.
    #[serde(default)]
    pub claims_to_context: BTreeMap<String, String>,
    /// Let requests without a token through (a bad token is still refused).
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// What `claims_to_headers` and `claims_to_context` ask for: claim name -> destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimMappings {
    pub to_headers: Vec<(String, String)>,
    pub to_context: Vec<(String, String)>,
}

/// The checks on the claims that follow a valid signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    /// Empty: `aud` is not checked.
    pub audience: Vec<String>,
    pub leeway: u64,
}

/// Parses the allow-list. `none` is refused by name so that the message says why.
pub fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("`algorithms` must list at least one algorithm".into());
    }
    let mut algorithms = Vec::new();
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err(
                "`algorithms`: `none` is never accepted (unsigned tokens prove nothing)".into(),
            );
        }
        let algorithm: Algorithm = name.parse().map_err(|_| {
            format!(
                "`algorithms`: unknown algorithm `{name}` (known: HS256, HS384, HS512, RS256, \
                 RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
            )
        })?;
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    Ok(algorithms)
}

/// The HMAC secret, if the allow-list has an HS algorithm (and only then).
pub fn secret(secret: Option<String>, algorithms: &[Algorithm]) -> Result<Option<Vec<u8>>, String> {
    let wants_hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    match (secret, wants_hmac) {
        (None, false) => Ok(None),
        (None, true) => Err("`algorithms` allows HS256/384/512 but no `secret` is set".into()),
        (Some(_), false) => {
            Err("`secret` is set but `algorithms` allows no HMAC algorithm (HS256/384/512)".into())
        }
        (Some(secret), true) => {
            // `@file:` keeps the file's final newline; it is never part of a secret.
            let secret = secret
                .strip_suffix('\n')
                .map(|s| s.strip_suffix('\r').unwrap_or(s))
                .unwrap_or(&secret);
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "`secret` is {} bytes; HMAC secrets must be at least {MIN_SECRET_BYTES} bytes",
                    secret.len()
                ));
            }
            Ok(Some(secret.as_bytes().to_vec()))
        }
    }
}

pub fn claim_rules(
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    leeway: u64,
) -> Result<ClaimRules, String> {
    if issuer.as_deref() == Some("") {
        return Err("`issuer` must not be empty".into());
    }
    let audience = audience.map(OneOrMany::into_vec).unwrap_or_default();
    if audience.iter().any(String::is_empty) {
        return Err("`audience` must not contain an empty string".into());
    }
    if leeway > MAX_LEEWAY_SECONDS {
        return Err(format!(
            "`leeway` is {leeway} seconds; at most {MAX_LEEWAY_SECONDS} (one day) is allowed"
        ));
    }
    Ok(ClaimRules {
        issuer,
        audience,
        leeway,
    })
}

pub fn claim_mappings(
    to_headers: BTreeMap<String, String>,
    to_context: BTreeMap<String, String>,
) -> Result<ClaimMappings, String> {
    let mut mappings = ClaimMappings::default();
    for (claim, header) in to_headers {
        check_claim_name(&claim, "claims_to_headers")?;
        let header = wasmgate_sdk::header::settable(&header)
            .map_err(|problem| format!("`claims_to_headers.{claim}`: {problem}"))?;
        if mappings.to_headers.iter().any(|(_, h)| *h == header) {
            return Err(format!(
                "`claims_to_headers`: header `{header}` is the target of more than one claim"
            ));
        }
        mappings.to_headers.push((claim, header));
    }
    for (claim, name) in to_context {
        check_claim_name(&claim, "claims_to_context")?;
        if name.is_empty() || name.len() > MAX_CONTEXT_NAME_BYTES {
            return Err(format!(
                "`claims_to_context.{claim}`: a context name must be 1 to \
                 {MAX_CONTEXT_NAME_BYTES} bytes"
            ));
        }
        mappings.to_context.push((claim, name));
    }
    Ok(mappings)
}

fn check_claim_name(claim: &str, table: &str) -> Result<(), String> {
    if claim.is_empty() {
        return Err(format!("`{table}`: a claim name must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn algorithms_are_an_allow_list_without_none() {
        assert_eq!(
            algorithms(&names(&["RS256", "ES256", "RS256"])).unwrap(),
            [Algorithm::RS256, Algorithm::ES256]
        );
        assert!(algorithms(&[]).unwrap_err().contains("at least one"));
        assert!(
            algorithms(&names(&["none"]))
                .unwrap_err()
                .contains("never accepted")
        );
        assert!(
            algorithms(&names(&["NONE"]))
                .unwrap_err()
                .contains("never accepted")
        );
        assert!(
            algorithms(&names(&["HS1024"]))
                .unwrap_err()
                .contains("unknown algorithm `HS1024`")
        );
        assert!(
            algorithms(&names(&["rs256"])).is_err(),
            "names are case-sensitive (RFC 7518)"
        );
    }

    #[test]
    fn secret_goes_with_hmac_algorithms() {
        let hs = [Algorithm::HS256];
        let rs = [Algorithm::RS256];
        let long = "x".repeat(32);
        assert_eq!(
            secret(Some(format!("{long}\n")), &hs).unwrap(),
            Some(long.clone().into_bytes())
        );
        assert_eq!(
            secret(Some(format!("{long}\r\n")), &hs).unwrap(),
            Some(long.clone().into_bytes())
        );
        assert!(secret(None, &hs).unwrap_err().contains("no `secret`"));
        assert!(
            secret(Some(long), &rs)
                .unwrap_err()
                .contains("no HMAC algorithm")
        );
        assert!(
            secret(Some("short".into()), &hs)
                .unwrap_err()
                .contains("at least 32 bytes")
        );
        assert_eq!(secret(None, &rs).unwrap(), None);
    }

    #[test]
    fn claim_rules_check_their_values() {
        let rules = claim_rules(
            Some("https://issuer".into()),
            Some(OneOrMany::One("api".into())),
            30,
        )
        .unwrap();
        assert_eq!(rules.audience, ["api"]);
        assert!(claim_rules(Some(String::new()), None, 0).is_err());
        assert!(claim_rules(None, Some(OneOrMany::Many(vec![String::new()])), 0).is_err());
        assert!(
            claim_rules(None, None, 90_000)
                .unwrap_err()
                .contains("at most 86400")
        );
    }

    #[test]
    fn claim_mappings_need_settable_headers() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let mappings =
            claim_mappings(map(&[("sub", "X-User-Id")]), map(&[("sub", "user_id")])).unwrap();
        assert_eq!(
            mappings.to_headers,
            [("sub".to_string(), "x-user-id".to_string())]
        );
        assert_eq!(
            mappings.to_context,
            [("sub".to_string(), "user_id".to_string())]
        );
        let err = claim_mappings(map(&[("sub", "bad header")]), BTreeMap::new()).unwrap_err();
        assert!(err.contains("not a valid header name"), "{err}");
        let err = claim_mappings(map(&[("sub", "Host")]), BTreeMap::new()).unwrap_err();
        assert!(err.contains("managed by the gateway"), "{err}");
        let err =
            claim_mappings(map(&[("sub", "x-a"), ("email", "X-A")]), BTreeMap::new()).unwrap_err();
        assert!(err.contains("more than one claim"), "{err}");
        let err = claim_mappings(BTreeMap::new(), map(&[("sub", "")])).unwrap_err();
        assert!(err.contains("context name"), "{err}");
    }
}
