//! Full codes: the relay code a person types plus the secret part the relay
//! never sees (`6YM9AQ-K7P3X`), and the link form that carries one in a URL
//! fragment (`https://HOST/#6YM9AQ-K7P3X`).

use std::fmt;

use rand::Rng;

use crate::code::{ALPHABET, CODE_LEN, LONG_CODE_LEN, typed_chars};
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
    /// Neither 6 or 8 characters (a relay code) nor 11 or 13 (one with its secret).
    #[error(
        "a code has {CODE_LEN} characters ({LONG_CODE_LEN} while the relay is under attack), or {SECRET_LEN} more with its secret part; this one has {0}"
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
    /// [`FullCodeError`] when what remains is not 6, 8, 11 or 13 characters
    /// of the alphabet (a relay code of 6, or 8 while the relay is under
    /// attack, with or without the 5 characters of its secret).
    pub fn parse(typed: &str) -> Result<Self, FullCodeError> {
        let typed = match typed.rsplit_once('#') {
            Some((_, fragment)) => fragment,
            None => typed,
        };
        let (chars, len) =
            typed_chars(typed, LONG_CODE_LEN + SECRET_LEN).map_err(FullCodeError::BadCharacter)?;
        // The lengths tell the parts apart: 6 and 8 are plain, 11 and 13 are
        // 6 and 8 with a secret (no two of them are equal).
        let (relay, secret) = match len {
            CODE_LEN | LONG_CODE_LEN => (chars.as_str(), None),
            n if n == CODE_LEN + SECRET_LEN || n == LONG_CODE_LEN + SECRET_LEN => {
                let (r, s) = chars.split_at(n - SECRET_LEN);
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
    fn long_relay_codes_take_a_secret_too() {
        let c = FullCode::parse("k7p3-6ym9-aq4hx").unwrap();
        assert_eq!(c.relay.as_str(), "K7P36YM9");
        assert_eq!(c.secret.as_ref().unwrap().as_str(), "AQ4HX");
        assert_eq!(c.to_string(), "K7P36YM9-AQ4HX");
        assert_eq!(FullCode::parse(&c.to_string()).unwrap(), c);
        let plain = FullCode::parse("#K7P3 6YM9").unwrap();
        assert_eq!((plain.relay.as_str(), plain.secret), ("K7P36YM9", None));
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
        for (typed, n) in [("6YM9AQK", 7), ("6YM9AQK7P", 9), ("K7P36YM9-AQ4HXY", 14)] {
            assert_eq!(FullCode::parse(typed), Err(FullCodeError::WrongLength(n)));
        }
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
