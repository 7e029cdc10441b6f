//! A text frame a client library reads from the relay (or from anything posing as one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_protocol::ServerMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = ServerMessage::parse(text) else {
        return;
    };
    // The relay writes with `to_text` what clients read with `parse`.
    let again = msg.to_text();
    match ServerMessage::parse(&again) {
        Ok(back) => assert_eq!(back, msg, "{text:?} -> {again:?}"),
        Err(e) => panic!("{text:?} parsed, but its re-serialisation {again:?} did not: {e}"),
    }
});
