//! Session ids and resume tokens: generated from the OS's secure RNG, tokens
//! kept only as hashes and compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A session id: 21 URL-safe characters (126 random bits).
pub fn session_id() -> String {
    nanoid::nanoid!(21)
}

/// A resume token: 32 URL-safe characters (192 random bits).
pub fn resume_token() -> String {
    nanoid::nanoid!(32)
}

/// What the registry stores instead of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// The hash in hex, as stored in Redis.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` hashes to this, in time independent of where they differ.
    pub fn matches(&self, token: &str) -> bool {
        Self::of(token).0.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_unique_and_match_only_themselves() {
        let a = resume_token();
        let b = resume_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let h = TokenHash::of(&a);
        assert!(h.matches(&a));
        assert!(!h.matches(&b));
        assert!(!h.matches(""));
        assert_eq!(session_id().len(), 21);
    }
}
