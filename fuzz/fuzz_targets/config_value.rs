//! One duration or size setting as written in a flag or `RELAY_*` variable (`30s`, `8MiB`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::config::{parse_bytes, parse_duration};

fuzz_target!(|data: &[u8]| {
    // Flags and variables reach clap's value parsers only as UTF-8.
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(value);
    if let Ok(n) = parse_bytes(value) {
        // Whatever a suffix means, the plain number it stands for must mean the same.
        assert_eq!(parse_bytes(&n.to_string()), Ok(n), "{value:?}");
    }
});
