//! Signing keys (the PEM fixtures and an HMAC secret), their public JWKs, token making, and
//! configs for the jwt plugin's tests.

#![allow(dead_code)] // each test file uses a part

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use wasmgate_sdk::serde_json::{self, Value, json};

pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// Seconds since the epoch, as the plugin sees it.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A private key from tests/fixtures (or the test secret), and the algorithm it signs with.
#[derive(Clone)]
pub struct SigningKey {
    pub algorithm: Algorithm,
    pub kid: Option<&'static str>,
    key: EncodingKey,
}

impl SigningKey {
    pub fn hmac(algorithm: Algorithm) -> SigningKey {
        SigningKey {
            algorithm,
            kid: None,
            key: EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        }
    }

    /// `rsa-a.pem` or `rsa-b.pem`, for RS* or PS*.
    pub fn rsa(file: &str, algorithm: Algorithm, kid: &'static str) -> SigningKey {
        SigningKey {
            algorithm,
            kid: Some(kid),
            key: EncodingKey::from_rsa_pem(&fixture(file)).unwrap(),
        }
    }

    pub fn ec(algorithm: Algorithm, kid: &'static str) -> SigningKey {
        let file = match algorithm {
            Algorithm::ES256 => "ec-p256.pem",
            _ => "ec-p384.pem",
        };
        SigningKey {
            algorithm,
            kid: Some(kid),
            key: EncodingKey::from_ec_pem(&fixture(file)).unwrap(),
        }
    }

    pub fn ed25519(kid: &'static str) -> SigningKey {
        SigningKey {
            algorithm: Algorithm::EdDSA,
            kid: Some(kid),
            key: EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap(),
        }
    }

    pub fn without_kid(mut self) -> SigningKey {
        self.kid = None;
        self
    }

    /// A signed token with these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// The public JWK of this key (with its kid, without `alg`), as JSON.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).unwrap();
        jwk.common.key_id = self.kid.map(str::to_owned);
        jwk.common.key_algorithm = None;
        serde_json::to_value(&jwk).unwrap()
    }
}

/// A JWKS document with the public keys of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Claims valid for an hour.
pub fn valid_claims() -> Value {
    json!({ "sub": "user-42", "exp": now() + 3600 })
}

/// A token made by hand: any header, any payload, any signature bytes.
pub fn raw_token(header: &Value, payload: &Value, signature: &str) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{signature}", b64(header), b64(payload))
}
