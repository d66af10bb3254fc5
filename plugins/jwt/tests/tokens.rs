//! The jwt plugin on real tokens, through the SDK's native harness: every supported algorithm,
//! every reason for a 401, claims passed on, `optional`, and key rotation in a JWKS.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwt::Jwt;
use support::*;
use wasmgate_sdk::Action;
use wasmgate_sdk::serde_json::{Value, json};
use wasmgate_sdk::testing::{Harness, TestRequest};

fn jwt(config: Value) -> Harness<Jwt> {
    Harness::new(&config.to_string()).unwrap_or_else(|err| panic!("{err}"))
}

/// A plugin that accepts HS256 with the test secret and every public-key algorithm with the
/// keys of `keys`.
fn plugin_for(algorithms: &[&str], keys: &[&SigningKey]) -> Harness<Jwt> {
    let mut config = json!({ "algorithms": algorithms });
    if algorithms.iter().any(|a| a.starts_with("HS")) {
        config["secret"] = json!(SECRET);
    }
    if !keys.is_empty() {
        config["jwks"] = json!(jwks(keys));
    }
    jwt(config)
}

fn with_token(token: &str) -> TestRequest {
    TestRequest::get("/").with_header("authorization", format!("Bearer {token}"))
}

/// Runs the request phase; `Ok` for Continue, `Err(www-authenticate)` for a 401.
fn run(plugin: &mut Harness<Jwt>, request: &mut TestRequest) -> Result<(), String> {
    match plugin.on_request(request) {
        Action::Continue => Ok(()),
        Action::Respond(reply) => {
            assert_eq!(reply.status, 401);
            let challenge = reply
                .headers
                .iter()
                .find(|(name, _)| name == "www-authenticate")
                .map(|(_, value)| String::from_utf8(value.clone()).unwrap())
                .expect("a 401 has a challenge");
            let body: Value = wasmgate_sdk::serde_json::from_slice(&reply.body).unwrap();
            assert!(body["message"].is_string(), "{body}");
            Err(challenge)
        }
    }
}

/// The `error_description` of a refused token.
fn refused(plugin: &mut Harness<Jwt>, token: &str) -> String {
    let challenge = run(plugin, &mut with_token(token)).expect_err("the token must be refused");
    let description = challenge
        .split("error_description=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no description in {challenge}"));
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    description.trim_end_matches('"').to_owned()
}

fn accepted(plugin: &mut Harness<Jwt>, token: &str) {
    if let Err(challenge) = run(plugin, &mut with_token(token)) {
        panic!("refused: {challenge}");
    }
}

#[test]
fn hmac_algorithms() {
    for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let name = format!("{algorithm:?}");
        let mut plugin = plugin_for(&[&name], &[]);
        accepted(
            &mut plugin,
            &SigningKey::hmac(algorithm).sign(&valid_claims()),
        );
    }
}

#[test]
fn public_key_algorithms() {
    let keys = [
        SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "rsa"),
        SigningKey::rsa("rsa-a.pem", Algorithm::RS384, "rsa"),
        SigningKey::rsa("rsa-a.pem", Algorithm::RS512, "rsa"),
        SigningKey::rsa("rsa-a.pem", Algorithm::PS256, "rsa"),
        SigningKey::ec(Algorithm::ES256, "p256"),
        SigningKey::ec(Algorithm::ES384, "p384"),
        SigningKey::ed25519("ed"),
    ];
    // One JWKS with the three public keys serves every algorithm.
    let set = [&keys[0], &keys[4], &keys[5], &keys[6]];
    for key in &keys {
        let name = format!("{:?}", key.algorithm);
        let mut plugin = plugin_for(&[&name], &set);
        accepted(&mut plugin, &key.sign(&valid_claims()));
        // And without a kid, the key is found by algorithm.
        accepted(
            &mut plugin,
            &key.clone().without_kid().sign(&valid_claims()),
        );
    }
}

#[test]
fn missing_token_is_a_bare_challenge() {
    let mut plugin = plugin_for(&["HS256"], &[]);
    assert_eq!(
        run(&mut plugin, &mut TestRequest::get("/")),
        Err("Bearer".into())
    );
    let mut basic = TestRequest::get("/").with_header("authorization", "Basic dXNlcjpwYXNz");
    assert_eq!(run(&mut plugin, &mut basic), Err("Bearer".into()));
}

#[test]
fn malformed_tokens() {
    let mut plugin = plugin_for(&["HS256"], &[]);
    for token in [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        "e30.e30.sig",
        "bm90IGpzb24.e30.sig",
    ] {
        assert_eq!(refused(&mut plugin, token), "malformed token", "{token}");
    }
    let mut empty = TestRequest::get("/").with_header("authorization", "Bearer ");
    assert!(
        run(&mut plugin, &mut empty)
            .unwrap_err()
            .contains("malformed token")
    );
    let mut two = with_token("a.b.c").with_header("authorization", "Bearer d.e.f");
    assert!(
        run(&mut plugin, &mut two)
            .unwrap_err()
            .contains("more than one Authorization header")
    );
    // A signed token whose payload is not JSON is malformed too (after the signature).
    let header = json!({ "alg": "HS256" });
    let token = raw_token(&header, &json!("not an object"), "");
    let unsigned = token.trim_end_matches('.');
    let signature = jsonwebtoken::crypto::sign(
        unsigned.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        refused(&mut plugin, &format!("{unsigned}.{signature}")),
        "malformed token"
    );
}

#[test]
fn bad_signature() {
    let rsa = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "a");
    let mut plugin = plugin_for(&["RS256", "HS256"], &[&rsa]);
    // Signed by another key under the same kid.
    let impostor = SigningKey::rsa("rsa-b.pem", Algorithm::RS256, "a");
    assert_eq!(
        refused(&mut plugin, &impostor.sign(&valid_claims())),
        "invalid signature"
    );
    // A changed payload with the original signature.
    let token = rsa.sign(&valid_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = raw_token(
        &json!({ "alg": "RS256", "kid": "a" }),
        &json!({ "sub": "admin", "exp": now() + 3600 }),
        parts[2],
    );
    assert_eq!(refused(&mut plugin, &forged), "invalid signature");
    // HMAC with another secret.
    let other = EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long").unwrap();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &valid_claims(), &other).unwrap();
    assert_eq!(refused(&mut plugin, &token), "invalid signature");
}

#[test]
fn expiry_and_not_before() {
    let key = SigningKey::hmac(Algorithm::HS256);
    let mut plugin = plugin_for(&["HS256"], &[]);
    let expired = json!({ "sub": "u", "exp": now() - 120 });
    assert_eq!(refused(&mut plugin, &key.sign(&expired)), "token expired");
    let early = json!({ "sub": "u", "exp": now() + 3600, "nbf": now() + 120 });
    assert_eq!(
        refused(&mut plugin, &key.sign(&early)),
        "token not yet valid (nbf)"
    );
    let forever = json!({ "sub": "u" });
    assert_eq!(
        refused(&mut plugin, &key.sign(&forever)),
        "token has no expiry (exp)"
    );

    // `leeway` covers small clock differences both ways.
    let mut lenient = jwt(json!({ "algorithms": ["HS256"], "secret": SECRET, "leeway": 300 }));
    accepted(&mut lenient, &key.sign(&expired));
    accepted(&mut lenient, &key.sign(&early));
    let long_expired = json!({ "sub": "u", "exp": now() - 400 });
    assert_eq!(
        refused(&mut lenient, &key.sign(&long_expired)),
        "token expired"
    );
    let far_future = json!({ "sub": "u", "exp": now() + 3600, "nbf": now() + 400 });
    assert_eq!(
        refused(&mut lenient, &key.sign(&far_future)),
        "token not yet valid (nbf)"
    );
}

#[test]
fn issuer_and_audience() {
    let key = SigningKey::hmac(Algorithm::HS256);
    let mut plugin = jwt(json!({
        "algorithms": ["HS256"],
        "secret": SECRET,
        "issuer": "https://id.example",
        "audience": ["api", "admin"],
    }));
    let claims = |iss: &str, aud: Value| json!({ "exp": now() + 60, "iss": iss, "aud": aud });
    accepted(
        &mut plugin,
        &key.sign(&claims("https://id.example", json!("api"))),
    );
    accepted(
        &mut plugin,
        &key.sign(&claims("https://id.example", json!(["x", "admin"]))),
    );
    assert_eq!(
        refused(
            &mut plugin,
            &key.sign(&claims("https://evil.example", json!("api")))
        ),
        "wrong issuer"
    );
    assert_eq!(
        refused(
            &mut plugin,
            &key.sign(&claims("https://id.example", json!("web")))
        ),
        "wrong audience"
    );
    // A single audience string is accepted in the config too.
    let mut single = jwt(json!({ "algorithms": ["HS256"], "secret": SECRET, "audience": "api" }));
    accepted(&mut single, &key.sign(&claims("anyone", json!("api"))));
}

#[test]
fn unknown_kid_and_keys_that_do_not_fit() {
    let rsa = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "rsa");
    let ec = SigningKey::ec(Algorithm::ES256, "p256");
    let mut plugin = plugin_for(&["RS256", "ES256"], &[&rsa, &ec]);
    let unknown = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "retired");
    assert_eq!(
        refused(&mut plugin, &unknown.sign(&valid_claims())),
        "unknown signing key"
    );
    // An ES256 token that names the RSA key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa".into());
    let token = jsonwebtoken::encode(
        &header,
        &valid_claims(),
        &EncodingKey::from_ec_pem(include_bytes!("fixtures/ec-p256.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        refused(&mut plugin, &token),
        "signing key does not fit the algorithm"
    );
}

#[test]
fn algorithms_outside_the_allow_list() {
    let rsa = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "rsa");
    let mut plugin = plugin_for(&["RS256"], &[&rsa]);
    let rs512 = SigningKey::rsa("rsa-a.pem", Algorithm::RS512, "rsa");
    assert_eq!(
        refused(&mut plugin, &rs512.sign(&valid_claims())),
        "signing algorithm not allowed"
    );
    let made_up = raw_token(&json!({ "alg": "XS999" }), &valid_claims(), "c2ln");
    assert_eq!(
        refused(&mut plugin, &made_up),
        "signing algorithm not allowed"
    );
    // `crit` names extensions we do not understand: refused even when signed.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".into());
    header.crit = Some(vec!["exp".into()]);
    let token = jsonwebtoken::encode(
        &header,
        &valid_claims(),
        &EncodingKey::from_rsa_pem(include_bytes!("fixtures/rsa-a.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        refused(&mut plugin, &token),
        "unsupported critical header parameter"
    );
}

#[test]
fn alg_none_is_always_refused() {
    let mut plugin = plugin_for(&["HS256"], &[]);
    for alg in ["none", "None", "NONE"] {
        let token = raw_token(&json!({ "alg": alg, "typ": "JWT" }), &valid_claims(), "");
        assert_eq!(
            refused(&mut plugin, &token),
            "unsigned tokens are not accepted"
        );
    }
}

/// The classic confusion: an HS256 token "signed" with the RSA public key as the HMAC secret.
#[test]
fn hmac_token_against_an_rsa_key() {
    let rsa = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "rsa");
    let public_key_bytes = rsa.jwk().to_string();
    let forge = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_secret(public_key_bytes.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &valid_claims(), &key).unwrap()
    };
    // HS256 is not on the list: refused before any key is touched.
    let mut rsa_only = plugin_for(&["RS256"], &[&rsa]);
    assert_eq!(
        refused(&mut rsa_only, &forge(Some("rsa"))),
        "signing algorithm not allowed"
    );
    // HS256 on the list: HMAC tokens are only ever checked with `secret`, never a JWKS key.
    let mut both = plugin_for(&["RS256", "HS256"], &[&rsa]);
    assert_eq!(refused(&mut both, &forge(Some("rsa"))), "invalid signature");
    assert_eq!(refused(&mut both, &forge(None)), "invalid signature");
}

#[test]
fn several_keys_for_rotation() {
    let old = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "2025");
    let new = SigningKey::rsa("rsa-b.pem", Algorithm::RS256, "2026");
    let mut plugin = plugin_for(&["RS256"], &[&old, &new]);
    accepted(&mut plugin, &old.sign(&valid_claims()));
    accepted(&mut plugin, &new.sign(&valid_claims()));
    // Without a kid every RS256 key is tried.
    let new_without_kid = SigningKey::rsa("rsa-b.pem", Algorithm::RS256, "x").without_kid();
    accepted(&mut plugin, &new_without_kid.sign(&valid_claims()));
    // After the rotation the old kid is unknown.
    let mut rotated = plugin_for(&["RS256"], &[&new]);
    assert_eq!(
        refused(&mut rotated, &old.sign(&valid_claims())),
        "unknown signing key"
    );
}

#[test]
fn claims_become_headers_and_context() {
    let key = SigningKey::hmac(Algorithm::HS256);
    let mut plugin = jwt(json!({
        "algorithms": ["HS256"],
        "secret": SECRET,
        "claims_to_headers": { "sub": "X-User-Id", "roles": "x-roles", "email": "x-email" },
        "claims_to_context": { "sub": "user_id", "tenant": "tenant" },
    }));
    let token = key.sign(&json!({
        "sub": "user-42", "roles": ["admin", "dev"], "tenant": 7, "exp": now() + 60
    }));
    let mut request = with_token(&token)
        .with_header("x-user-id", "spoofed")
        .with_header("x-email", "spoofed@example");
    assert_eq!(run(&mut plugin, &mut request), Ok(()));
    assert_eq!(request.header_str("x-user-id").as_deref(), Some("user-42"));
    assert_eq!(request.headers.all("x-user-id").len(), 1);
    assert_eq!(
        request.header_str("x-roles").as_deref(),
        Some(r#"["admin","dev"]"#)
    );
    assert_eq!(
        request.header_str("x-email"),
        None,
        "no claim: the client's copy is gone anyway"
    );
    assert_eq!(request.ctx["user_id"], "user-42");
    assert_eq!(request.ctx["tenant"], "7");
    assert!(
        request.header_str("authorization").is_some(),
        "the token goes on upstream"
    );

    // A claim that cannot be a header value is skipped, not a failure.
    let token = key.sign(&json!({ "sub": "line\nbreak", "exp": now() + 60 }));
    let mut request = with_token(&token);
    assert_eq!(run(&mut plugin, &mut request), Ok(()));
    assert_eq!(request.header_str("x-user-id"), None);
    assert_eq!(request.ctx["user_id"], "line\nbreak");
}

#[test]
fn optional_lets_only_tokenless_requests_through() {
    let key = SigningKey::hmac(Algorithm::HS256);
    let mut plugin = jwt(json!({
        "algorithms": ["HS256"],
        "secret": SECRET,
        "optional": true,
        "claims_to_headers": { "sub": "x-user-id" },
        "claims_to_context": { "sub": "user_id" },
    }));
    let mut anonymous = TestRequest::get("/").with_header("x-user-id", "spoofed");
    assert_eq!(run(&mut plugin, &mut anonymous), Ok(()));
    assert_eq!(
        anonymous.header_str("x-user-id"),
        None,
        "spoofed header removed"
    );
    assert!(anonymous.ctx.is_empty());

    let mut signed_in = with_token(&key.sign(&valid_claims()));
    assert_eq!(run(&mut plugin, &mut signed_in), Ok(()));
    assert_eq!(
        signed_in.header_str("x-user-id").as_deref(),
        Some("user-42")
    );

    let expired = key.sign(&json!({ "sub": "u", "exp": now() - 60 }));
    assert_eq!(refused(&mut plugin, &expired), "token expired");
}

/// A token verified once is remembered by the instance, but its claims are checked again on
/// every request: a remembered token still expires.
#[test]
fn remembered_tokens_still_expire() {
    use jwt::config::ClaimRules;
    use jwt::keys::KeyStore;
    use jwt::rejection::Rejection;
    use jwt::verify::Verifier;

    let key = SigningKey::rsa("rsa-a.pem", Algorithm::RS256, "a");
    let algorithms = [Algorithm::RS256];
    let keys = KeyStore::new(&algorithms, None, Some(&jwks(&[&key]))).unwrap();
    let mut verifier = Verifier::new(&algorithms, keys, ClaimRules::default());
    let exp = now() + 60;
    let token = key.sign(&json!({ "sub": "u", "exp": exp }));
    assert_eq!(verifier.verify(&token, now()).unwrap()["sub"], "u");
    assert_eq!(verifier.verify(&token, now()).unwrap()["sub"], "u");
    assert_eq!(verifier.verify(&token, exp), Err(Rejection::Expired));
    // A token that differs in one character of its signature is not the remembered one (a
    // character inside the signature: the last one also carries padding bits).
    let at = token.len() - 10;
    let replacement = if &token[at..at + 1] == "A" { "B" } else { "A" };
    let tampered = format!("{}{replacement}{}", &token[..at], &token[at + 1..]);
    assert_eq!(
        verifier.verify(&tampered, now()),
        Err(Rejection::BadSignature)
    );
}
