//! Verifying one token: its header picks the algorithm and the keys, jsonwebtoken checks the
//! signature, and `claims` checks the registered claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use wasmgate_sdk::serde_json::{self, Value};

use crate::cache::VerifiedTokens;
use crate::claims::{self, Claims};
use crate::config::ClaimRules;
use crate::keys::{KeyStore, NoKey};
use crate::rejection::Rejection;

pub struct Verifier {
    /// The allow-list, each with the jsonwebtoken validation that checks only the signature
    /// (the claims are ours to check, with our own messages and clock).
    algorithms: Vec<(Algorithm, Validation)>,
    keys: KeyStore,
    rules: ClaimRules,
    verified: VerifiedTokens,
}

/// The JOSE header members that decide how a token is verified.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

impl Verifier {
    pub fn new(algorithms: &[Algorithm], keys: KeyStore, rules: ClaimRules) -> Verifier {
        let algorithms = algorithms
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.required_spec_claims.clear();
                validation.validate_exp = false;
                validation.validate_nbf = false;
                validation.validate_aud = false;
                (algorithm, validation)
            })
            .collect();
        Verifier {
            algorithms,
            keys,
            rules,
            verified: VerifiedTokens::default(),
        }
    }

    /// The token's claims if it is valid at `now` (seconds since the epoch).
    pub fn verify(&mut self, token: &str, now: u64) -> Result<Claims, Rejection> {
        if let Some(claims) = self.verified.get(token) {
            claims::check(claims, &self.rules, now)?;
            return Ok(claims.clone());
        }
        let claims = self.verify_signature(token)?;
        claims::check(&claims, &self.rules, now)?;
        self.verified.insert(token, &claims);
        Ok(claims)
    }

    /// The claims of a token whose header and signature are good.
    fn verify_signature(&self, token: &str) -> Result<Claims, Rejection> {
        let header = jose_header(token)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(Rejection::Unsigned);
        }
        // The token's `alg` only ever selects from the allow-list.
        let named: Algorithm = header
            .alg
            .parse()
            .map_err(|_| Rejection::AlgorithmNotAllowed)?;
        let (algorithm, validation) = self
            .algorithms
            .iter()
            .find(|(algorithm, _)| *algorithm == named)
            .ok_or(Rejection::AlgorithmNotAllowed)?;
        if header.crit.is_some() {
            return Err(Rejection::UnsupportedCritical);
        }
        let keys = self
            .keys
            .candidates(*algorithm, header.kid.as_deref())
            .map_err(|no_key| match no_key {
                NoKey::UnknownKid | NoKey::NoKeyForAlgorithm => Rejection::UnknownKey,
                NoKey::KidDoesNotFitAlgorithm => Rejection::KeyDoesNotFitAlgorithm,
            })?;
        // Without a `kid`, each key of the algorithm may be the one (rotation): a bad signature
        // means "try the next key"; any other error is the token's own.
        let mut verified = None;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => {
                    verified = Some(data.claims);
                    break;
                }
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => continue,
                Err(err) => return Err(rejection(err.kind())),
            }
        }
        verified.ok_or(Rejection::BadSignature)
    }
}

/// The header, read before the signature is checked (it says which key to check with).
fn jose_header(token: &str) -> Result<JoseHeader, Rejection> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejection::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| Rejection::Malformed)
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::InvalidAlgorithm => Rejection::AlgorithmNotAllowed,
        // Bad base64, JSON or UTF-8 in the payload or signature, or a key the backend cannot
        // use with this token (keys are checked at load, so that means the token is off).
        _ => Rejection::Malformed,
    }
}
