//! Tokens whose signature this instance has verified. A client sends the same token on every
//! request, and an RS256 check costs about a millisecond in WebAssembly, so the signature is
//! checked once per token and instance. The claims are still checked on every request (the
//! token may have expired since), and the cache dies with the instance, so a reload (new keys)
//! starts with an empty one.

use std::collections::HashMap;

use crate::claims::Claims;

/// At most this many tokens per instance: bounded memory whatever the clients send.
const CAPACITY: usize = 256;

/// Longer tokens are verified every time rather than kept.
const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Default)]
pub struct VerifiedTokens {
    /// Keyed by the whole token: only the exact bytes that were verified are trusted.
    entries: HashMap<String, Claims>,
}

impl VerifiedTokens {
    pub fn get(&self, token: &str) -> Option<&Claims> {
        self.entries.get(token)
    }

    pub fn insert(&mut self, token: &str, claims: &Claims) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        if self.entries.len() >= CAPACITY {
            // Any entry will do: a token evicted early costs one more verification.
            if let Some(victim) = self.entries.keys().next().cloned() {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(token.to_owned(), claims.clone());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keyed_by_the_whole_token() {
        let mut cache = VerifiedTokens::default();
        let claims = Claims::new();
        for n in 0..CAPACITY + 10 {
            cache.insert(&format!("token-{n}"), &claims);
        }
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.get(&format!("token-{}", CAPACITY + 9)).is_some());
        assert!(cache.get("token-").is_none());
        cache.insert(&"x".repeat(MAX_TOKEN_BYTES + 1), &claims);
        assert!(cache.get(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }
}
