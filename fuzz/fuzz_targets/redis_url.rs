//! `RELAY_REDIS_URL`: a Redis server or Sentinel list, with credentials, as an operator writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::cluster::RedisTarget;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = RedisTarget::parse(url) {
        // Logged at start-up, so it must not fail on anything parse accepted.
        let _ = target.describe();
    }
});
