//! The verification keys: the HMAC `secret` and the public keys of a JWKS document (RFC 7517),
//! checked when the config is loaded, and the choice of keys for one token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use wasmgate_sdk::serde_json;

/// RFC 7518 section 3.3: RSA keys of 2048 bits or larger MUST be used.
const MIN_RSA_BITS: usize = 2048;

/// A public key from the JWKS, with the algorithms it may verify.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// Every key the plugin verifies with.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    secret: Option<DecodingKey>,
    public: Vec<PublicKey>,
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// The token names a `kid` the JWKS does not have.
    UnknownKid,
    /// The named key exists but cannot verify the token's algorithm (RS256 token, EC key).
    KidDoesNotFitAlgorithm,
    /// A token without `kid`, and no key for its algorithm.
    NoKeyForAlgorithm,
}

impl KeyStore {
    /// `algorithms` is the parsed allow-list, `secret` the checked HMAC secret.
    pub fn new(
        algorithms: &[Algorithm],
        secret: Option<Vec<u8>>,
        jwks: Option<&str>,
    ) -> Result<KeyStore, String> {
        let secret = secret
            .map(|bytes| DecodingKey::from_secret(&bytes).map_err(|err| format!("`secret`: {err}")))
            .transpose()?;
        // The allow-list's public-key algorithms, by name, for the messages.
        let public_algorithms: Vec<String> = algorithms
            .iter()
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .map(|a| format!("{a:?}"))
            .collect();
        let public_algorithms = public_algorithms.join(", ");
        let public = match (jwks, public_algorithms.is_empty()) {
            (None, true) => Vec::new(),
            (None, false) => {
                return Err(format!(
                    "`algorithms` allows {public_algorithms} but no `jwks` is set"
                ));
            }
            (Some(_), true) => {
                return Err("`jwks` is set but `algorithms` allows only HMAC algorithms".into());
            }
            (Some(jwks), false) => {
                let keys = parse_jwks(jwks).map_err(|problem| format!("`jwks`: {problem}"))?;
                if !keys
                    .iter()
                    .any(|k| k.algorithms.iter().any(|a| algorithms.contains(a)))
                {
                    return Err(format!(
                        "`jwks` has no key for any allowed algorithm ({public_algorithms})"
                    ));
                }
                keys
            }
        };
        Ok(KeyStore { secret, public })
    }

    /// The keys to try for a token, in order. HMAC tokens use the secret whatever their `kid`;
    /// other tokens use the key their `kid` names, or, without a `kid`, every key that fits
    /// the algorithm.
    pub fn candidates(
        &self,
        algorithm: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<&DecodingKey>, NoKey> {
        if algorithm.family() == AlgorithmFamily::Hmac {
            return self
                .secret
                .as_ref()
                .map(|key| vec![key])
                .ok_or(NoKey::NoKeyForAlgorithm);
        }
        if let Some(kid) = kid {
            let key = self
                .public
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(NoKey::UnknownKid)?;
            if !key.algorithms.contains(&algorithm) {
                return Err(NoKey::KidDoesNotFitAlgorithm);
            }
            return Ok(vec![&key.key]);
        }
        let keys: Vec<&DecodingKey> = self
            .public
            .iter()
            .filter(|k| k.algorithms.contains(&algorithm))
            .map(|k| &k.key)
            .collect();
        if keys.is_empty() {
            Err(NoKey::NoKeyForAlgorithm)
        } else {
            Ok(keys)
        }
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// The members of a JWK that matter here. Others (`x5c`, `key_ops`, ...) are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    /// Present only in private keys, which have no place in a verifier's config.
    d: Option<serde_json::Value>,
}

/// Parses a JWKS document. Keys that can never verify a JWS signature (encryption keys,
/// unsupported curves) are skipped; keys that are broken are errors.
pub fn parse_jwks(text: &str) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|err| format!("not a JWKS document (a JSON object with `keys`): {err}"))?;
    let mut keys: Vec<PublicKey> = Vec::new();
    for (index, value) in set.keys.into_iter().enumerate() {
        let jwk: Jwk =
            serde_json::from_value(value).map_err(|err| format!("key #{}: {err}", index + 1))?;
        let label = match &jwk.kid {
            Some(kid) => format!("key `{kid}`"),
            None => format!("key #{}", index + 1),
        };
        let Some(key) = public_key(jwk).map_err(|problem| format!("{label}: {problem}"))? else {
            continue;
        };
        if let Some(kid) = &key.kid
            && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
        {
            return Err(format!("{label}: the kid appears more than once"));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// One JWK as a verification key; `None` for keys that are not for JWS signatures here.
fn public_key(jwk: Jwk) -> Result<Option<PublicKey>, String> {
    if jwk.d.is_some() {
        return Err("this is a private key (it has `d`); publish only public keys".into());
    }
    if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return Ok(None);
    }
    let fitting: &[Algorithm] = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => AlgorithmFamily::Rsa.algorithms(),
        ("EC", Some("P-256")) => &[Algorithm::ES256],
        ("EC", Some("P-384")) => &[Algorithm::ES384],
        ("OKP", Some("Ed25519")) => &[Algorithm::EdDSA],
        ("oct", _) => {
            return Err("symmetric (`oct`) keys are not read from `jwks`; use `secret`".into());
        }
        // P-521, secp256k1, Ed448, X25519 and other types: no algorithm here verifies them.
        _ => return Ok(None),
    };
    let algorithms = match jwk.alg.as_deref() {
        None => fitting.to_vec(),
        Some(name) => match name.parse::<Algorithm>() {
            Ok(algorithm) if fitting.contains(&algorithm) => vec![algorithm],
            Ok(_) => return Err(format!("`alg` {name} does not fit a `{}` key", jwk.kty)),
            // A JWE algorithm (RSA-OAEP, ECDH-ES...): an encryption key.
            Err(_) => return Ok(None),
        },
    };
    let key = match fitting[0] {
        Algorithm::ES256 | Algorithm::ES384 => {
            let (x, y) = (required(&jwk.x, "x")?, required(&jwk.y, "y")?);
            let key = DecodingKey::from_ec_components(x, y)
                .map_err(|err| format!("bad `x` or `y`: {err}"))?;
            check_point(&key, fitting[0])?;
            key
        }
        Algorithm::EdDSA => {
            let x = required(&jwk.x, "x")?;
            let length = decode(x, "x")?.len();
            if length != 32 {
                return Err(format!("`x` is {length} bytes; an Ed25519 key has 32"));
            }
            let key =
                DecodingKey::from_ed_components(x).map_err(|err| format!("bad `x`: {err}"))?;
            check_point(&key, Algorithm::EdDSA)?;
            key
        }
        _ => rsa_key(required(&jwk.n, "n")?, required(&jwk.e, "e")?)?,
    };
    Ok(Some(PublicKey {
        kid: jwk.kid,
        algorithms,
        key,
    }))
}

fn required<'a>(member: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    member
        .as_deref()
        .ok_or_else(|| format!("`{name}` is missing"))
}

fn decode(member: &str, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(member)
        .map_err(|err| format!("`{name}` is not base64url: {err}"))
}

/// Checks the modulus and exponent now, as the verifier would on every request.
fn rsa_key(n: &str, e: &str) -> Result<DecodingKey, String> {
    let modulus = decode(n, "n")?;
    let exponent = decode(e, "e")?;
    rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(&modulus),
        rsa::BoxedUint::from_be_slice_vartime(&exponent),
    )
    .map_err(|err| format!("not a valid RSA public key: {err}"))?;
    let bits = bit_length(&modulus);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(DecodingKey::from_rsa_raw_components(&modulus, &exponent))
}

/// The length in bits of a big-endian unsigned number.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize,
        None => 0,
    }
}

/// Builds the verifier once with an empty signature: that parses the curve point, so a key
/// that is not on its curve is reported now instead of failing every request.
fn check_point(key: &DecodingKey, algorithm: Algorithm) -> Result<(), String> {
    match jsonwebtoken::crypto::verify("", b"", key, algorithm) {
        Ok(_) => Ok(()),
        Err(err) => Err(format!("not a valid {algorithm:?} public key: {err}")),
    }
}
