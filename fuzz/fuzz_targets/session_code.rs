//! A session code as a person types it into the browser (the `code` of `join`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_protocol::SessionCode;
use relay_protocol::code::{ALPHABET, CODE_LEN, LONG_CODE_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(typed) = std::str::from_utf8(data) else {
        return;
    };
    // What PROTOCOL.md promises, written the slow and obvious way: case
    // does not matter, spaces and `-` are ignored, the rest is 6 characters
    // of the alphabet, or 8 (issued while the relay is under attack).
    let kept: Vec<char> = typed
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let expected = ((kept.len() == CODE_LEN || kept.len() == LONG_CODE_LEN) && kept.iter().all(|c| ALPHABET.contains(c)))
        .then(|| kept.iter().collect::<String>());

    match SessionCode::parse(typed) {
        Ok(code) => {
            assert_eq!(Some(code.as_str()), expected.as_deref(), "{typed:?}");
            assert_eq!(SessionCode::parse(code.as_str()).as_ref(), Ok(&code));
            assert_eq!(
                SessionCode::from_canonical(code.as_str().to_owned()).as_ref(),
                Ok(&code)
            );
            assert_eq!(
                SessionCode::from_canonical(typed.to_owned()).is_ok(),
                typed == code.as_str(),
                "{typed:?}"
            );
        }
        Err(e) => {
            assert_eq!(expected, None, "{typed:?} refused: {e}");
            // Only the canonical form of a code is canonical.
            assert!(SessionCode::from_canonical(typed.to_owned()).is_err());
        }
    }
});
