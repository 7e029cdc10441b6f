//! `RELAY_ALLOWED_ORIGINS` and the `Origin` (and `Host`) headers of a `/browser` upgrade, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::admission::Origins;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let list = lines.next().unwrap_or_default();
    let origin = lines.next();
    let own = lines.next();
    let Ok(origins) = Origins::parse(list) else {
        return;
    };
    let allowed = origins.allows(origin, own);
    // No header is no web page; no list is no restriction.
    if origin.is_none() || origins.allows_all() {
        assert!(allowed, "{text:?}");
    }
    // Every entry that names one origin lets that origin in, however it is
    // cased or spaced; a wildcard lets in one label under it.
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once("://*") {
            None => assert!(
                origins.allows(Some(entry), None),
                "{list:?} refuses {entry:?}"
            ),
            Some((scheme, rest)) => {
                let one = format!("{scheme}://x{rest}");
                assert!(origins.allows(Some(&one), None), "{list:?} refuses {one:?}");
            }
        }
    }
});
