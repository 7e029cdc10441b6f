//! Session codes: the short strings a person reads off the mac and types into
//! the browser. Owns the alphabet and the tolerant matching of typed codes.

use std::fmt;

/// Characters a code is made of: no look-alikes (no 0/O, 1/I, 2/Z, 5/S).
pub const ALPHABET: [char; 28] = [
    '3', '4', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'J', 'K', 'L', 'M', 'N',
    'P', 'Q', 'R', 'T', 'U', 'V', 'W', 'X', 'Y',
];

/// Number of characters in a code: 28^6 ≈ 4.8×10^8 possible codes.
pub const CODE_LEN: usize = 6;

/// Number of characters in a code issued while the relay is under a guessing
/// attack: 28^8 ≈ 3.8×10^11 possible codes, 784 times harder to hit.
pub const LONG_CODE_LEN: usize = 8;

/// What a person typed, as codes read it: spaces and `-` dropped, upper
/// case. Returns the first `keep` characters and how many there were, or
/// the first character that is in no code.
pub(crate) fn typed_chars(typed: &str, keep: usize) -> Result<(String, usize), char> {
    let mut chars = String::with_capacity(keep);
    let mut len = 0usize;
    for c in typed.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        len += 1;
        let upper = c.to_ascii_uppercase();
        if !ALPHABET.contains(&upper) {
            return Err(c);
        }
        if len <= keep {
            chars.push(upper);
        }
    }
    Ok((chars, len))
}

/// A well-formed session code: [`CODE_LEN`] or [`LONG_CODE_LEN`] characters of
/// [`ALPHABET`], upper case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionCode(String);

/// Why a typed code is not a session code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// After removing spaces and hyphens the code has the wrong length.
    #[error("a code has {CODE_LEN} characters (or {LONG_CODE_LEN}), this one has {0}")]
    WrongLength(usize),
    /// The code holds a character that no code contains.
    #[error("a code never contains {0:?}")]
    BadCharacter(char),
}

impl SessionCode {
    /// Reads a code as a person typed it: case-insensitive, spaces and `-` ignored.
    ///
    /// # Errors
    /// [`CodeError`] when what remains is not [`CODE_LEN`] or
    /// [`LONG_CODE_LEN`] characters of [`ALPHABET`].
    pub fn parse(typed: &str) -> Result<Self, CodeError> {
        let (code, len) = typed_chars(typed, LONG_CODE_LEN).map_err(CodeError::BadCharacter)?;
        if len != CODE_LEN && len != LONG_CODE_LEN {
            return Err(CodeError::WrongLength(len));
        }
        Ok(Self(code))
    }

    /// Wraps a freshly generated code; the caller guarantees it is well-formed.
    ///
    /// # Errors
    /// [`CodeError`] when `code` is not already in canonical form.
    pub fn from_canonical(code: String) -> Result<Self, CodeError> {
        let parsed = Self::parse(&code)?;
        if parsed.0 != code {
            return Err(CodeError::WrongLength(code.chars().count()));
        }
        Ok(parsed)
    }

    /// The canonical (upper-case, 6- or 8-character) form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionCode({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_codes_are_normalised() {
        for typed in [
            "H4F7KN",
            "h4f7kn",
            "h4f-7kn",
            " H4 F7 KN ",
            "H-4-F-7-K-N",
            "h4f\t7kn",
        ] {
            assert_eq!(
                SessionCode::parse(typed).unwrap().as_str(),
                "H4F7KN",
                "{typed:?}"
            );
        }
    }

    #[test]
    fn malformed_codes_are_refused() {
        assert_eq!(SessionCode::parse("H4F7K"), Err(CodeError::WrongLength(5)));
        assert_eq!(
            SessionCode::parse("H4F7KNN"),
            Err(CodeError::WrongLength(7))
        );
        assert_eq!(SessionCode::parse(""), Err(CodeError::WrongLength(0)));
        assert_eq!(
            SessionCode::parse("H4F7KNXY9"),
            Err(CodeError::WrongLength(9))
        );
        assert_eq!(
            SessionCode::parse("H0F7KN"),
            Err(CodeError::BadCharacter('0'))
        );
        assert_eq!(
            SessionCode::parse("H4F7KÑ"),
            Err(CodeError::BadCharacter('Ñ'))
        );
        // Look-alikes are not guessed back: O is not 0 and neither is in the alphabet.
        assert_eq!(
            SessionCode::parse("HOF7KN"),
            Err(CodeError::BadCharacter('O'))
        );
    }

    #[test]
    fn long_codes_are_read_the_same_way() {
        for typed in ["H4F7KNXY", "h4f7-knxy", " h4 f7 kn xy "] {
            assert_eq!(
                SessionCode::parse(typed).unwrap().as_str(),
                "H4F7KNXY",
                "{typed:?}"
            );
        }
        assert!(SessionCode::from_canonical("H4F7KNXY".into()).is_ok());
    }

    #[test]
    fn alphabet_has_no_look_alikes() {
        for c in ['0', 'O', '1', 'I', '2', 'Z', '5', 'S'] {
            assert!(!ALPHABET.contains(&c), "{c}");
        }
        let mut sorted = ALPHABET.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), 28);
    }

    #[test]
    fn canonical_form_round_trips() {
        assert!(SessionCode::from_canonical("H4F7KN".into()).is_ok());
        assert!(SessionCode::from_canonical("h4f7kn".into()).is_err());
    }
}
