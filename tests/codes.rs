//! Session codes over thousands of registrations: the documented format,
//! unique among live codes.

use std::collections::HashSet;

use futures_util::future::join_all;
use relay_protocol::code::ALPHABET;

use crate::support::{Relay, register};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_codes_are_well_formed_and_unique_among_live_ones() {
    const LIVE: usize = 1000;
    const ROUNDS: usize = 3;
    let relay = Relay::start(&[]);
    let mut total = 0;
    for _ in 0..ROUNDS {
        // The previous round's sessions end as their sockets close.
        relay.wait_metric("relay_sessions_live", |v| v == 0.0).await;
        let macs = join_all((0..LIVE).map(|_| register(&relay))).await;
        let mut live = HashSet::new();
        for r in &macs {
            assert_eq!(r.code.chars().count(), 6, "{}", r.code);
            assert!(r.code.chars().all(|c| ALPHABET.contains(&c)), "{}", r.code);
            assert!(
                live.insert(r.code.clone()),
                "code {} issued twice while live",
                r.code
            );
        }
        total += live.len();
        assert_eq!(relay.metric("relay_sessions_live").await, LIVE as f64);
        join_all(macs.into_iter().map(|r| r.ws.close(1000))).await;
    }
    assert_eq!(total, LIVE * ROUNDS);
    assert_eq!(
        relay.metric("relay_codes_issued_total").await,
        (LIVE * ROUNDS) as f64
    );
}
