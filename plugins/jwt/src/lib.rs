//! `jwt`: a first-party wasmgate plugin that authenticates requests with a JWT bearer token.
//!
//! It reads `Authorization: Bearer <token>`, verifies the signature with the HMAC `secret` or a
//! key of the `jwks` document (only algorithms on the `algorithms` allow-list; `none` never),
//! checks `exp`, `nbf`, `iss` and `aud`, and passes chosen claims on as request headers
//! (`claims_to_headers`) and context values (`claims_to_context`). Anything else gets a 401.
//! See docs/first-party-plugins.md for the config and every decision.

pub mod bearer;
pub mod cache;
pub mod claims;
pub mod config;
pub mod keys;
pub mod rejection;
pub mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

use wasmgate_sdk::{Action, Plugin, Request, log};

use crate::bearer::Credentials;
use crate::config::{ClaimMappings, Config};
use crate::keys::KeyStore;
use crate::verify::Verifier;

pub struct Jwt {
    verifier: Verifier,
    mappings: ClaimMappings,
    optional: bool,
}

impl Plugin for Jwt {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let algorithms = config::algorithms(&config.algorithms)?;
        let secret = config::secret(config.secret, &algorithms)?;
        let keys = KeyStore::new(&algorithms, secret, config.jwks.as_deref())?;
        let rules = config::claim_rules(config.issuer, config.audience, config.leeway)?;
        let mappings = config::claim_mappings(config.claims_to_headers, config.claims_to_context)?;
        Ok(Jwt {
            verifier: Verifier::new(&algorithms, keys, rules),
            mappings,
            optional: config.optional,
        })
    }

    fn on_request(&mut self, request: &mut Request<'_>) -> Action {
        // The claim headers are ours to set: a client's own copies must never reach the
        // upstream, whether or not a token follows.
        for (_, header) in &self.mappings.to_headers {
            request.remove_header(header);
        }
        let token = match bearer::credentials(&request.header_all("authorization")) {
            Ok(Credentials::Bearer(token)) => token,
            Ok(Credentials::None) if self.optional => return Action::Continue,
            Ok(Credentials::None) => return Action::Respond(rejection::Rejection::Missing.reply()),
            Err(rejection) => return Action::Respond(rejection.reply()),
        };
        match self.verifier.verify(&token, now()) {
            Ok(claims) => {
                self.pass_on(&claims, request);
                Action::Continue
            }
            Err(rejection) => {
                log::debug(&format!("token refused: {}", rejection.description()));
                Action::Respond(rejection.reply())
            }
        }
    }
}

impl Jwt {
    fn pass_on(&self, claims: &claims::Claims, request: &mut Request<'_>) {
        for (claim, header) in &self.mappings.to_headers {
            if let Some(value) = claims::text(claims, claim)
                && let Err(err) = request.set_header(header, &value)
            {
                // An authentic token with, say, a newline in a claim: the header stays unset
                // rather than failing the request.
                log::warn(&format!(
                    "claim `{claim}` not passed on as `{header}`: {err}"
                ));
            }
        }
        for (claim, name) in &self.mappings.to_context {
            if let Some(value) = claims::text(claims, claim) {
                request.set_ctx(name, &value);
            }
        }
    }
}

/// Seconds since the epoch from the wall clock (the gateway provides it to plugins).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

wasmgate_sdk::export_plugin!(Jwt);
