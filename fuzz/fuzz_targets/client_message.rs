//! A text frame a client sends to `/mac` or `/browser`: `register`, `join`, `resume`, `leave`, `ping`, `data`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    // The socket refuses non-UTF-8 text frames before anything parses them.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The relay's fast path for data frames never says yes to what the
    // full parse does not read as data.
    let parsed = ClientMessage::parse(text);
    if ClientMessage::is_plain_data(text) {
        assert!(
            matches!(parsed, Ok(ClientMessage::Data { .. })),
            "{text:?}: fast path says data, full parse {parsed:?}"
        );
    }
    let Ok(msg) = parsed else {
        return;
    };
    if matches!(msg, ClientMessage::Data { .. }) {
        // Data of the usual shape takes the fast path (a `data` frame with
        // duplicate keys may not: the full parse then decides).
        let again = msg.to_text();
        assert!(ClientMessage::is_plain_data(&again), "{again:?}");
    }
    // Clients and tests build frames with `to_text`; the relay must read
    // back exactly what was meant.
    let again = msg.to_text();
    match ClientMessage::parse(&again) {
        Ok(back) => assert_eq!(back, msg, "{text:?} -> {again:?}"),
        Err(e) => panic!("{text:?} parsed, but its re-serialisation {again:?} did not: {e}"),
    }
});
