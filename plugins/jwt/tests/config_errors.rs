//! Configs the jwt plugin must reject in `new` (so `wasmgate check` and reloads report them),
//! and JWKS members it skips on purpose.

mod support;

use jsonwebtoken::Algorithm;
use jwt::Jwt;
use support::*;
use wasmgate_sdk::serde_json::{Value, json};
use wasmgate_sdk::testing::Harness;

fn rejection(config: Value) -> String {
    match Harness::<Jwt>::new(&config.to_string()) {
        Ok(_) => panic!("accepted: {config}"),
        Err(message) => message,
    }
}

fn rsa_jwk() -> Value {
    SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "rsa").jwk()
}

fn with_jwks(keys: Value) -> Value {
    json!({ "algorithms": ["RS256", "ES256", "EdDSA"], "jwks": json!({ "keys": keys }).to_string() })
}

fn assert_contains(message: &str, part: &str) {
    assert!(
        message.contains(part),
        "`{message}` should contain `{part}`"
    );
}

#[test]
fn algorithm_list() {
    assert_contains(&rejection(json!({ "algorithms": [] })), "at least one");
    assert_contains(
        &rejection(json!({ "algorithms": ["none"], "secret": SECRET })),
        "never accepted",
    );
    assert_contains(
        &rejection(json!({ "algorithms": ["HS256", "ES521"], "secret": SECRET })),
        "unknown algorithm `ES521`",
    );
    assert_contains(
        &rejection(json!({ "secret": SECRET })),
        "missing field `algorithms`",
    );
    assert_contains(
        &rejection(json!({ "algorithms": ["HS256"], "secret": SECRET, "audiences": "x" })),
        "unknown field `audiences`",
    );
}

#[test]
fn keys_must_match_the_algorithms() {
    assert_contains(
        &rejection(json!({ "algorithms": ["HS256"] })),
        "no `secret`",
    );
    assert_contains(
        &rejection(json!({ "algorithms": ["HS256"], "secret": "too short" })),
        "at least 32 bytes",
    );
    assert_contains(
        &rejection(json!({ "algorithms": ["RS256"], "secret": SECRET, "jwks": "{\"keys\":[]}" })),
        "no HMAC algorithm",
    );
    assert_contains(
        &rejection(json!({ "algorithms": ["RS256"] })),
        "allows RS256 but no `jwks`",
    );
    assert_contains(
        &rejection(json!({ "algorithms": ["HS256"], "secret": SECRET, "jwks": "{}" })),
        "allows only HMAC algorithms",
    );
    // A JWKS with an RSA key only, for an ES256-only list.
    let jwks = json!({ "keys": [rsa_jwk()] }).to_string();
    assert_contains(
        &rejection(json!({ "algorithms": ["ES256"], "jwks": jwks })),
        "no key for any allowed algorithm (ES256)",
    );
}

#[test]
fn broken_jwks_documents() {
    let not_json = json!({ "algorithms": ["RS256"], "jwks": "-----BEGIN PUBLIC KEY-----" });
    assert_contains(&rejection(not_json), "not a JWKS document");
    let no_keys = json!({ "algorithms": ["RS256"], "jwks": "{\"kty\":\"RSA\"}" });
    assert_contains(&rejection(no_keys), "missing field `keys`");
    assert_contains(
        &rejection(with_jwks(json!([{ "kid": "k" }]))),
        "key #1: missing field `kty`",
    );
}

#[test]
fn broken_keys() {
    let mut private = rsa_jwk();
    private["d"] = json!("c2VjcmV0");
    assert_contains(
        &rejection(with_jwks(json!([private]))),
        "key `rsa`: this is a private key",
    );

    let mut small = rsa_jwk();
    let mut modulus = vec![0xc5u8; 128]; // 1024 bits, odd
    modulus[127] = 0x01;
    small["n"] = json!(base64_url(&modulus));
    assert_contains(
        &rejection(with_jwks(json!([small]))),
        "1024 bits; at least 2048",
    );

    let mut no_exponent = rsa_jwk();
    no_exponent.as_object_mut().unwrap().remove("e");
    assert_contains(
        &rejection(with_jwks(json!([no_exponent]))),
        "`e` is missing",
    );

    let mut not_base64 = rsa_jwk();
    not_base64["n"] = json!("not base64!");
    assert_contains(
        &rejection(with_jwks(json!([not_base64]))),
        "`n` is not base64url",
    );

    let mut off_curve = SigningKey::ec(Algorithm::ES256, "p256").jwk();
    off_curve["y"] = json!(base64_url(&[7u8; 32]));
    assert_contains(
        &rejection(with_jwks(json!([off_curve]))),
        "key `p256`: not a valid ES256 public key",
    );

    let mut short_ed = SigningKey::ed25519("ed").jwk();
    short_ed["x"] = json!(base64_url(&[1u8; 16]));
    assert_contains(
        &rejection(with_jwks(json!([short_ed]))),
        "16 bytes; an Ed25519 key has 32",
    );

    let mut wrong_alg = rsa_jwk();
    wrong_alg["alg"] = json!("ES256");
    assert_contains(
        &rejection(with_jwks(json!([wrong_alg]))),
        "`alg` ES256 does not fit a `RSA` key",
    );

    let oct = json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "s" });
    assert_contains(&rejection(with_jwks(json!([oct]))), "use `secret`");

    assert_contains(
        &rejection(with_jwks(json!([rsa_jwk(), rsa_jwk()]))),
        "more than once",
    );
}

#[test]
fn claim_settings() {
    let base = || json!({ "algorithms": ["HS256"], "secret": SECRET });
    let with = |key: &str, value: Value| {
        let mut config = base();
        config[key] = value;
        config
    };
    assert_contains(&rejection(with("leeway", json!(100_000))), "at most 86400");
    assert_contains(&rejection(with("leeway", json!(-1))), "invalid value");
    assert_contains(
        &rejection(with("issuer", json!(""))),
        "`issuer` must not be empty",
    );
    assert_contains(
        &rejection(with(
            "claims_to_headers",
            json!({ "sub": "content-length" }),
        )),
        "managed by the gateway",
    );
    assert_contains(
        &rejection(with("claims_to_headers", json!({ "sub": "x user" }))),
        "not a valid header name",
    );
    assert!(Harness::<Jwt>::new(&base().to_string()).is_ok());
}

#[test]
fn keys_that_are_not_for_signatures_are_skipped() {
    let mut encryption = rsa_jwk();
    encryption["use"] = json!("enc");
    encryption["kid"] = json!("enc");
    let p521 = json!({ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521" });
    let x25519 = json!({ "kty": "OKP", "crv": "X25519", "x": "AA", "kid": "x25519" });
    let oaep = json!({ "kty": "RSA", "alg": "RSA-OAEP", "n": "AA", "e": "AQAB", "kid": "oaep" });
    let config = with_jwks(json!([encryption, p521, x25519, oaep, rsa_jwk()]));
    assert!(Harness::<Jwt>::new(&config.to_string()).is_ok());
    // Nothing usable at all is an error.
    let mut only_encryption = rsa_jwk();
    only_encryption["use"] = json!("enc");
    assert_contains(
        &rejection(with_jwks(json!([only_encryption]))),
        "no key for any allowed",
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
