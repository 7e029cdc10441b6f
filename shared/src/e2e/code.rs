//! Full codes: the relay code a person types plus the secret part the relay
//! never sees (`6YM9AQ-K7P3X`), and the link form that carries one in a URL
//! fragment (`https://HOST/#6YM9AQ-K7P3X`).

use std::fmt;

use rand::Rng;

use crate::code::{ALPHABET, CODE_LEN};
use crate::{CodeError, SessionCode};

/// Characters of the secret part: 28^5 ≈ 2^24, above the 20 bits a guesser
/// must beat with its one try per session.
pub const SECRET_LEN: usize = 5;

/// The secret part of a full code: the password of the key exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A fresh secret from the thread's CSPRNG (ChaCha seeded by the OS).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        Secret(
            (0..SECRET_LEN)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect(),
        )
    }

    /// The upper-case characters: CPace's `PRS`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Never printed by accident (a `{:?}` in a log line).
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A code as typed or linked: the relay's part, and the secret when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullCode {
    /// What the relay is sent in `join`.
    pub relay: SessionCode,
    /// The key exchange's password; `None` for a plain (unencrypted) code.
    pub secret: Option<Secret>,
}

/// Why a typed code is not a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FullCodeError {
    /// Neither 6 characters (a relay code) nor 11 (one with its secret).
    #[error(
        "a code has {CODE_LEN} characters, or {full} with its secret part; this one has {0}",
        full = CODE_LEN + SECRET_LEN
    )]
    WrongLength(usize),
    /// A character no code contains.
    #[error("a code never contains {0:?}")]
    BadCharacter(char),
}

impl FullCode {
    /// A relay code with a fresh secret (the host's side).
    pub fn with_new_secret(relay: SessionCode) -> Self {
        FullCode {
            relay,
            secret: Some(Secret::generate()),
        }
    }

    /// Reads a code as a person typed it (any case, spaces and `-` ignored),
    /// or a link whose fragment holds one (`https://HOST/#6YM9AQ-K7P3X`).
    ///
    /// # Errors
    /// [`FullCodeError`] when what remains is not 6 or 11 characters of the alphabet.
    pub fn parse(typed: &str) -> Result<Self, FullCodeError> {
        let typed = match typed.rsplit_once('#') {
            Some((_, fragment)) => fragment,
            None => typed,
        };
        let mut chars = String::with_capacity(CODE_LEN + SECRET_LEN);
        let mut len = 0usize;
        for c in typed.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            len += 1;
            let upper = c.to_ascii_uppercase();
            if !ALPHABET.contains(&upper) {
                return Err(FullCodeError::BadCharacter(c));
            }
            if len <= CODE_LEN + SECRET_LEN {
                chars.push(upper);
            }
        }
        let (relay, secret) = match len {
            CODE_LEN => (chars.as_str(), None),
            n if n == CODE_LEN + SECRET_LEN => {
                let (r, s) = chars.split_at(CODE_LEN);
                (r, Some(Secret(s.to_owned())))
            }
            n => return Err(FullCodeError::WrongLength(n)),
        };
        let relay = SessionCode::parse(relay).map_err(|e| match e {
            CodeError::WrongLength(n) => FullCodeError::WrongLength(n),
            CodeError::BadCharacter(c) => FullCodeError::BadCharacter(c),
        })?;
        Ok(FullCode { relay, secret })
    }

    /// The link form: `page` (the relay's page, ending in `/`) with the full
    /// code as fragment, which browsers never send to a server.
    pub fn link(&self, page: &str) -> String {
        format!("{page}#{self}")
    }
}

impl fmt::Display for FullCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.secret {
            Some(s) => write!(f, "{}-{}", self.relay, s.0),
            None => write!(f, "{}", self.relay),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_code_splits_into_relay_code_and_secret() {
        let c = FullCode::parse("6ym9aq-k7p3x").unwrap();
        assert_eq!(c.relay.as_str(), "6YM9AQ");
        assert_eq!(c.secret.as_ref().unwrap().as_str(), "K7P3X");
        assert_eq!(c.to_string(), "6YM9AQ-K7P3X");
        assert_eq!(FullCode::parse(" 6YM 9AQK7 P3X ").unwrap(), c);
    }

    #[test]
    fn links_carry_the_code_in_the_fragment() {
        let c = FullCode::parse("https://relay.example/#6YM9AQ-K7P3X").unwrap();
        assert_eq!(c.to_string(), "6YM9AQ-K7P3X");
        assert_eq!(
            c.link("https://relay.example/"),
            "https://relay.example/#6YM9AQ-K7P3X"
        );
        assert_eq!(FullCode::parse("#6YM9AQ").unwrap().secret, None);
    }

    #[test]
    fn six_characters_are_a_plain_code() {
        let c = FullCode::parse("6YM9AQ").unwrap();
        assert_eq!(c.secret, None);
        assert_eq!(c.to_string(), "6YM9AQ");
    }

    #[test]
    fn other_lengths_and_letters_are_refused() {
        assert_eq!(
            FullCode::parse("6YM9AQ-K7P3"),
            Err(FullCodeError::WrongLength(10))
        );
        assert_eq!(
            FullCode::parse("6YM9AQ-K7P3XX"),
            Err(FullCodeError::WrongLength(12))
        );
        assert_eq!(
            FullCode::parse("6YM9AQ-K7P3O"),
            Err(FullCodeError::BadCharacter('O'))
        );
        assert_eq!(FullCode::parse(""), Err(FullCodeError::WrongLength(0)));
        assert_eq!(
            FullCode::parse("https://x/#"),
            Err(FullCodeError::WrongLength(0))
        );
    }

    #[test]
    fn secrets_are_fresh_and_well_formed() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.as_str().len(), SECRET_LEN);
        assert!(a.as_str().chars().all(|c| ALPHABET.contains(&c)));
        // 1 in 17 million to collide.
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }
}
