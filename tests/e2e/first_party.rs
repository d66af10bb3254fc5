//! The first-party plugins (plugins/jwt, plugins/headers) through the real gateway: tokens
//! accepted and refused, claims reaching the upstream, the headers plugin and the access log,
//! `optional`, a JWKS rotated on disk and picked up by SIGHUP, header templates in both
//! phases, and config mistakes reported by `check`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::client::Reply;
use crate::support::*;

const SECRET: &str = "an-e2e-secret-that-is-long-enough";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `[plugins.jwt]` and `[plugins.headers]` tables. An RS256 check takes about a millisecond
/// in WebAssembly, more on a loaded machine, so jwt gets more than the default 5ms (as the docs
/// advise for RSA keys).
fn plugin_tables() -> String {
    format!(
        "[plugins.jwt]\npath = \"{}\"\ntime_limit = \"50ms\"\n\n[plugins.headers]\npath = \"{}\"\n",
        wasm("jwt"),
        wasm("headers")
    )
}

fn config(upstream: &TestUpstream, routes: &str) -> String {
    format!(
        "{SERVER}{}\n{}\n{routes}",
        upstream_table("app", &[(upstream.addr, 1)], ""),
        plugin_tables()
    )
}

/// An RSA private key of the jwt plugin's fixtures, signing RS256 under `kid`.
struct RsaKey {
    kid: &'static str,
    key: EncodingKey,
}

impl RsaKey {
    fn fixture(file: &str, kid: &'static str) -> RsaKey {
        let path = format!(
            "{}/../plugins/jwt/tests/fixtures/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let pem = std::fs::read(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        RsaKey {
            kid,
            key: EncodingKey::from_rsa_pem(&pem).unwrap(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// A JWKS document with this key's public half.
    fn jwks(&self) -> String {
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(self.kid.to_owned());
        json!({ "keys": [jwk] }).to_string()
    }
}

fn hs(algorithm: Algorithm, claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(algorithm), claims, &key).unwrap()
}

fn claims() -> Value {
    json!({
        "sub": "user-42",
        "email": "ada@example.com",
        "iss": "https://id.example",
        "aud": "orders",
        "exp": now() + 3600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn base64url(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    client.send(Method::GET, url, headers, "").await
}

async fn get_with_token(client: &HttpClient, url: &str, token: &str) -> Reply {
    let authorization = format!("Bearer {token}");
    get(client, url, &[("authorization", &authorization)]).await
}

/// Checks a 401 from the jwt plugin and returns its `error_description`.
fn refusal(reply: &Reply) -> String {
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    let challenge = reply.headers["www-authenticate"].to_str().unwrap();
    let body = reply.json();
    assert_eq!(body["error"], "invalid_token", "{body}");
    let description = challenge
        .strip_prefix("Bearer error=\"invalid_token\", error_description=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("unexpected challenge {challenge}"));
    assert_eq!(body["message"], description);
    description.to_owned()
}

/// jwt (HS256 and RS256 from a JWKS file, issuer, audience, claims out) followed by headers
/// (the context value in a request and a response header).
fn secured_route() -> String {
    r#"[[routes]]
name = "orders"
path = "/orders/{*rest}"
upstream = "app"
plugins = [
  { use = "jwt", config = { algorithms = ["HS256", "RS256"], secret = "SECRET", jwks = "@file:jwks.json", issuer = "https://id.example", audience = ["orders", "admin"], claims_to_headers = { sub = "x-user-id", email = "x-user-email" }, claims_to_context = { sub = "user_id" } } },
  { use = "headers", config = { request = { set = { x-user = "{ctx.user_id}" } }, response = { set = { x-user = "{ctx.user_id}" } } } },
]
"#
    .replace("\"SECRET\"", &format!("\"{SECRET}\""))
}

/// Starts a gateway whose folder holds `jwks.json` with `key`'s public half.
fn start_with_jwks(config: &str, key: &RsaKey) -> GatewayProcess {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), key.jwks()).unwrap();
    GatewayProcess::start_in(dir, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_passes_claims_on_and_headers_sees_them() {
    let upstream = TestUpstream::start("app").await;
    let rsa = RsaKey::fixture("rsa-a.pem", "2026-a");
    let gateway = start_with_jwks(&config(&upstream, &secured_route()), &rsa);
    let client = HttpClient::http1();
    let url = gateway.url("/orders/7");

    for token in [hs(Algorithm::HS256, &claims()), rsa.sign(&claims())] {
        let authorization = format!("Bearer {token}");
        let reply = get(
            &client,
            &url,
            &[
                ("authorization", &authorization),
                ("x-user-id", "spoofed-admin"),
                ("x-user-email", "spoofed@example.com"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = reply.json();
        // Exactly the token's values: the client's copies were removed first.
        assert_eq!(seen["headers"]["x-user-id"], "user-42");
        assert_eq!(seen["headers"]["x-user-email"], "ada@example.com");
        // ctx:user_id reached the headers plugin in both phases.
        assert_eq!(seen["headers"]["x-user"], "user-42");
        assert_eq!(reply.headers["x-user"], "user-42");
        assert_eq!(seen["headers"]["authorization"], authorization.as_str());
    }
    let log = gateway.wait_access_log(2);
    assert_eq!(log[0]["ctx"]["user_id"], "user-42", "{:?}", log[0]);
    assert_eq!(log[1]["ctx"]["user_id"], "user-42", "{:?}", log[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_refuses_bad_tokens_with_401() {
    let upstream = TestUpstream::start("app").await;
    let rsa = RsaKey::fixture("rsa-a.pem", "2026-a");
    let gateway = start_with_jwks(&config(&upstream, &secured_route()), &rsa);
    let client = HttpClient::http1();
    let url = gateway.url("/orders/7");

    // No token: a bare challenge (RFC 6750: no error code when no credentials were sent).
    let missing = get(&client, &url, &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert_eq!(missing.json()["error"], "missing_token");

    let valid = rsa.sign(&claims());
    let signature = valid.rsplit('.').next().unwrap();
    let forged = format!(
        "{}.{}.{signature}",
        base64url(&json!({ "alg": "RS256", "kid": "2026-a" })),
        base64url(&with(claims(), "sub", json!("admin")))
    );
    let other_key = RsaKey::fixture("rsa-b.pem", "2026-a");
    let retired = RsaKey::fixture("rsa-a.pem", "2025-z");
    let none = format!(
        "{}.{}.",
        base64url(&json!({ "alg": "none" })),
        base64url(&claims())
    );
    // An HS256 token whose "secret" is the RSA public key: HMAC only ever uses `secret`.
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("2026-a".into());
        let public = EncodingKey::from_secret(rsa.jwks().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims(), &public).unwrap()
    };
    let cases = [
        ("not.a-token", "malformed token"),
        (forged.as_str(), "invalid signature"),
        (&other_key.sign(&claims()), "invalid signature"),
        (&confused, "invalid signature"),
        (
            &hs(Algorithm::HS256, &with(claims(), "exp", json!(now() - 60))),
            "token expired",
        ),
        (
            &hs(Algorithm::HS256, &with(claims(), "nbf", json!(now() + 600))),
            "token not yet valid (nbf)",
        ),
        (
            &hs(
                Algorithm::HS256,
                &with(claims(), "iss", json!("https://evil.example")),
            ),
            "wrong issuer",
        ),
        (
            &hs(Algorithm::HS256, &with(claims(), "aud", json!(["billing"]))),
            "wrong audience",
        ),
        (&retired.sign(&claims()), "unknown signing key"),
        (
            &hs(Algorithm::HS384, &claims()),
            "signing algorithm not allowed",
        ),
        (&none, "unsigned tokens are not accepted"),
    ];
    for (token, description) in cases {
        let reply = get_with_token(&client, &url, token).await;
        assert_eq!(refusal(&reply), description, "token {token}");
    }
    assert_eq!(
        upstream.hits(),
        0,
        "no refused request reached the upstream"
    );
    // Never a plugin failure: every refusal was the plugin's own answer.
    assert!(
        !gateway.stderr().contains("plugin_failed"),
        "{}",
        gateway.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_jwt_lets_only_requests_without_a_token_through() {
    let upstream = TestUpstream::start("app").await;
    let route = r#"[[routes]]
path = "/{*rest}"
upstream = "app"
plugins = [{ use = "jwt", config = { algorithms = ["HS256"], secret = "SECRET", optional = true, claims_to_headers = { sub = "x-user-id" } } }]
"#
    .replace("\"SECRET\"", &format!("\"{SECRET}\""));
    let gateway = GatewayProcess::start(&config(&upstream, &route));
    let client = HttpClient::http1();
    let url = gateway.url("/public");

    let anonymous = get(&client, &url, &[("x-user-id", "spoofed")]).await;
    assert_eq!(anonymous.status, 200);
    assert!(
        anonymous.json()["headers"].get("x-user-id").is_none(),
        "the client's x-user-id is removed even without a token"
    );
    let signed_in = get_with_token(&client, &url, &hs(Algorithm::HS256, &claims())).await;
    assert_eq!(signed_in.json()["headers"]["x-user-id"], "user-42");
    let expired = hs(Algorithm::HS256, &with(claims(), "exp", json!(now() - 60)));
    assert_eq!(
        refusal(&get_with_token(&client, &url, &expired).await),
        "token expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_rotation_is_picked_up_by_sighup() {
    let upstream = TestUpstream::start("app").await;
    let old = RsaKey::fixture("rsa-a.pem", "old");
    let new = RsaKey::fixture("rsa-b.pem", "new");
    let route = "[[routes]]\npath = \"/{*rest}\"\nupstream = \"app\"\nplugins = [{ use = \"jwt\", config = { algorithms = [\"RS256\"], jwks = \"@file:jwks.json\" } }]\n";
    let gateway = start_with_jwks(&config(&upstream, route), &old);
    let client = HttpClient::http1();
    let url = gateway.url("/x");
    let old_token = old.sign(&claims());
    let new_token = new.sign(&claims());
    assert_eq!(get_with_token(&client, &url, &old_token).await.status, 200);
    assert_eq!(
        refusal(&get_with_token(&client, &url, &new_token).await),
        "unknown signing key"
    );

    // Rotate: the file now holds only the new key (written aside, then renamed into place).
    let path = gateway.dir.path().join("jwks.json");
    std::fs::write(path.with_extension("tmp"), new.jwks()).unwrap();
    std::fs::rename(path.with_extension("tmp"), &path).unwrap();
    let pid = gateway.pid();
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_with_token(&client, &url, &new_token).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the new key was not picked up:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        refusal(&get_with_token(&client, &url, &old_token).await),
        "unknown signing key"
    );
    assert_eq!(gateway.pid(), pid, "same process: reloaded, not restarted");
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_rewrites_requests_and_responses_with_templates() {
    let upstream = TestUpstream::start("app").await;
    let route = "[[routes]]\nname = \"h\"\npath = \"/h/{*rest}\"\nupstream = \"app\"\nplugins = [{ use = \"headers\", config = { \
         request = { remove = [\"x-debug\"], set = { x-client = \"{client_ip}\", x-original = \"{method} {path}\", x-host = \"{host}\", x-rid = \"{request_id}\", x-env = \"prod\" }, add = { x-env = \"eu\" } }, \
         response = { remove = [\"x-upstream\"], set = { x-served-for = \"{method} {path} for {client_ip}\" }, add = { cache-control = \"no-store\" } } } }]\n";
    let gateway = GatewayProcess::start(&config(&upstream, route));
    let client = HttpClient::http1();
    let reply = client
        .send(
            Method::POST,
            &gateway.url("/h/items?q=1"),
            &[
                ("x-debug", "1"),
                ("x-env", "client"),
                ("x-request-id", "rid-1"),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json()["headers"].clone();
    assert!(seen.get("x-debug").is_none(), "{seen}");
    assert_eq!(seen["x-client"], "127.0.0.1");
    assert_eq!(seen["x-original"], "POST /h/items");
    assert_eq!(seen["x-host"], gateway.addr.to_string().as_str());
    assert_eq!(seen["x-rid"], "rid-1");
    // set replaced the client's value, add appended one (the upstream joins them with ", ").
    assert_eq!(seen["x-env"], "prod, eu");

    assert!(reply.headers.get("x-upstream").is_none());
    assert_eq!(reply.headers["x-served-for"], "POST /h/items for 127.0.0.1");
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.headers["x-request-id"], "rid-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_header_a_plugin_sets_replaces_the_upstream_s() {
    // A chain that only sets response headers leaves the upstream's fields as received (no
    // header map is built for them): the set value still replaces the upstream's.
    let upstream = TestUpstream::start("app").await;
    let route = "[[routes]]\npath = \"/{*rest}\"\nupstream = \"app\"\nplugins = [{ use = \"headers\", config = { \
         response = { set = { x-upstream = \"replaced\" } } } }]\n";
    let gateway = GatewayProcess::start(&config(&upstream, route));
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let reply = client.get(&gateway.url("/a")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let values: Vec<_> = reply.headers.get_all("x-upstream").iter().collect();
        assert_eq!(values, ["replaced"]);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert!(reply.headers.contains_key("x-request-id"));
    }
}

#[test]
fn check_reports_config_mistakes_of_both_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "{SERVER}\n{}\n[upstreams.app]\ntargets = [{{ addr = \"127.0.0.1:9\" }}]\n\n\
             [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"app\"\nplugins = [{{ use = \"jwt\", config = {{ algorithms = [\"RS256\"] }} }}]\n\n\
             [[routes]]\nname = \"b\"\npath = \"/b\"\nupstream = \"app\"\nplugins = [{{ use = \"jwt\", config = {{ algorithms = [\"none\"] }} }}]\n\n\
             [[routes]]\nname = \"c\"\npath = \"/c\"\nupstream = \"app\"\nplugins = [{{ use = \"headers\", config = {{ request = {{ set = {{ x-a = \"{{user}}\" }} }} }} }}]\n\n\
             [[routes]]\nname = \"d\"\npath = \"/d\"\nupstream = \"app\"\nplugins = [{{ use = \"jwt\", config = {{ algorithms = [\"RS256\"], jwks = \"@file:missing.json\" }} }}]\n",
            plugin_tables()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = gateway::check(&path);
    assert!(!ok);
    for expected in [
        "route a: plugin `jwt` rejected its config: `algorithms` allows RS256 but no `jwks` is set",
        "route b: plugin `jwt` rejected its config: `algorithms`: `none` is never accepted",
        "route c: plugin `headers` rejected its config: `request.set.x-a`: unknown placeholder `{user}`",
        "route d: plugin `jwt` config: @file:",
        "missing.json: No such file",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}
