//! The registered claims checked after the signature (RFC 7519 section 4.1), and claim values
//! as header or context text. `now` is a parameter so the rules are tested without a clock.

use wasmgate_sdk::serde_json::{Map, Value};

use crate::config::ClaimRules;
use crate::rejection::Rejection;

pub type Claims = Map<String, Value>;

/// Checks `exp` (required), `nbf` (when present), `iss` and `aud` (when configured).
pub fn check(claims: &Claims, rules: &ClaimRules, now: u64) -> Result<(), Rejection> {
    let now = now as f64;
    let leeway = rules.leeway as f64;
    // A token that never expires stays valid forever once stolen, so `exp` is required.
    let exp = numeric_date(claims, "exp")?.ok_or(Rejection::NoExpiry)?;
    // "The current date/time MUST be before the expiration date/time."
    if now >= exp + leeway {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(Rejection::NotYetValid);
    }
    if let Some(issuer) = &rules.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(Rejection::WrongIssuer);
    }
    if !rules.audience.is_empty() && !audience_matches(claims.get("aud"), &rules.audience) {
        return Err(Rejection::WrongAudience);
    }
    Ok(())
}

/// A NumericDate claim: seconds since the epoch, integer or not. Any other type is malformed.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|seconds| seconds.is_finite())
            .map(Some)
            .ok_or(Rejection::Malformed),
    }
}

/// `aud` is a string or a list of strings; one of them must be ours.
fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    let accepts = |value: &Value| {
        value
            .as_str()
            .is_some_and(|a| accepted.iter().any(|x| x == a))
    };
    match aud {
        Some(Value::Array(list)) => list.iter().any(accepts),
        Some(value) => accepts(value),
        None => false,
    }
}

/// A claim as header or context text: strings as they are, anything else as compact JSON
/// (`42`, `true`, `["admin","dev"]`). `null` and absent claims give nothing.
pub fn text(claims: &Claims, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use wasmgate_sdk::serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims(value: Value) -> Claims {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn rules(leeway: u64) -> ClaimRules {
        ClaimRules {
            issuer: None,
            audience: Vec::new(),
            leeway,
        }
    }

    #[test]
    fn expiry_with_leeway() {
        let at = |exp: u64| claims(json!({ "exp": exp }));
        assert_eq!(check(&at(NOW + 1), &rules(0), NOW), Ok(()));
        assert_eq!(check(&at(NOW), &rules(0), NOW), Err(Rejection::Expired));
        assert_eq!(
            check(&at(NOW - 10), &rules(10), NOW),
            Err(Rejection::Expired)
        );
        assert_eq!(check(&at(NOW - 9), &rules(10), NOW), Ok(()));
        assert_eq!(
            check(&claims(json!({})), &rules(0), NOW),
            Err(Rejection::NoExpiry)
        );
        assert_eq!(
            check(&claims(json!({ "exp": "tomorrow" })), &rules(0), NOW),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            check(
                &claims(json!({ "exp": (NOW as f64) + 0.5 })),
                &rules(0),
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn not_before_with_leeway() {
        let nbf = |nbf: u64| claims(json!({ "exp": NOW + 100, "nbf": nbf }));
        assert_eq!(check(&nbf(NOW), &rules(0), NOW), Ok(()));
        assert_eq!(
            check(&nbf(NOW + 1), &rules(0), NOW),
            Err(Rejection::NotYetValid)
        );
        assert_eq!(check(&nbf(NOW + 5), &rules(5), NOW), Ok(()));
        assert_eq!(
            check(&nbf(NOW + 6), &rules(5), NOW),
            Err(Rejection::NotYetValid)
        );
    }

    #[test]
    fn issuer_and_audience() {
        let rules = ClaimRules {
            issuer: Some("https://id.example".into()),
            audience: vec!["api".into(), "admin".into()],
            leeway: 0,
        };
        let token =
            |iss: Value, aud: Value| claims(json!({ "exp": NOW + 100, "iss": iss, "aud": aud }));
        assert_eq!(
            check(
                &token(json!("https://id.example"), json!("api")),
                &rules,
                NOW
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &token(json!("https://id.example"), json!(["other", "admin"])),
                &rules,
                NOW
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &token(json!("https://evil.example"), json!("api")),
                &rules,
                NOW
            ),
            Err(Rejection::WrongIssuer)
        );
        assert_eq!(
            check(
                &token(json!("https://id.example"), json!(["other"])),
                &rules,
                NOW
            ),
            Err(Rejection::WrongAudience)
        );
        assert_eq!(
            check(
                &claims(json!({ "exp": NOW + 100, "iss": "https://id.example" })),
                &rules,
                NOW
            ),
            Err(Rejection::WrongAudience)
        );
    }

    #[test]
    fn claims_as_text() {
        let c = claims(json!({ "sub": "u1", "n": 42, "roles": ["a", "b"], "none": null }));
        assert_eq!(text(&c, "sub").as_deref(), Some("u1"));
        assert_eq!(text(&c, "n").as_deref(), Some("42"));
        assert_eq!(text(&c, "roles").as_deref(), Some(r#"["a","b"]"#));
        assert_eq!(text(&c, "none"), None);
        assert_eq!(text(&c, "missing"), None);
    }
}
