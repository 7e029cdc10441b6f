//! A text frame a client sends to `/mac` or `/browser`: `register`, `join`, `resume`, `leave`, `ping`, `data`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    // The socket refuses non-UTF-8 text frames before anything parses them.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = ClientMessage::parse(text) else {
        return;
    };
    // Clients and tests build frames with `to_text`; the relay must read
    // back exactly what was meant.
    let again = msg.to_text();
    match ClientMessage::parse(&again) {
        Ok(back) => assert_eq!(back, msg, "{text:?} -> {again:?}"),
        Err(e) => panic!("{text:?} parsed, but its re-serialisation {again:?} did not: {e}"),
    }
});
