//! Redis behind Sentinel: nodes given `redis+sentinel://...` ask the
//! sentinels for the master, and when a failover moves the master they ask
//! again and reconnect by themselves. Each test has its own master, replica
//! and three sentinels (`support::cluster::SentinelSet`).
//!
//! After a failover, every node must be ready again, take new sessions, and
//! carry on the sessions it had: a pair made before the failover goes on
//! exchanging data both ways, nothing lost, duplicated or reordered.

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{assert_sequence, collect, send_range};
use crate::support::cluster::{Cluster, Resp, SentinelSet, pair_at, redis_command, register_at};
use crate::support::{Got, Pair, Stream, Ws};

/// A pair whose two sides send and read at once, keeping every sequence
/// number each side received since the start, and every control message.
struct Flowing {
    mac_tx: SplitSink<Stream, Message>,
    mac_rx: SplitStream<Stream>,
    browser_tx: SplitSink<Stream, Message>,
    browser_rx: SplitStream<Stream>,
    /// Frames sent each way so far.
    sent: u64,
    to_mac: Vec<u64>,
    to_browser: Vec<u64>,
    /// Control messages each side received, in order: (who, message).
    events: Vec<(&'static str, Value)>,
}

impl Flowing {
    fn new(p: Pair) -> Flowing {
        let (mac_tx, mac_rx) = p.mac.into_inner().split();
        let (browser_tx, browser_rx) = p.browser.into_inner().split();
        Flowing {
            mac_tx,
            mac_rx,
            browser_tx,
            browser_rx,
            sent: 0,
            to_mac: Vec::new(),
            to_browser: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Sends `n` more frames each way at once and reads them; every frame
    /// since the start must have come exactly once and in order.
    async fn exchange(&mut self, n: u64) {
        let (from, to) = (self.sent + 1, self.sent + n);
        let count = usize::try_from(n).expect("count");
        let ((), (), (to_browser, browser_saw), (to_mac, mac_saw)) = tokio::join!(
            send_range(&mut self.mac_tx, from, to),
            send_range(&mut self.browser_tx, from, to),
            collect(&mut self.browser_rx, count, None),
            collect(&mut self.mac_rx, count, None),
        );
        self.sent = to;
        self.to_browser.extend(to_browser);
        self.to_mac.extend(to_mac);
        self.events
            .extend(browser_saw.into_iter().map(|v| ("browser", v)));
        self.events.extend(mac_saw.into_iter().map(|v| ("mac", v)));
        assert_sequence(&self.to_browser, to, "browser received");
        assert_sequence(&self.to_mac, to, "mac received");
    }

    /// Checks the control messages seen: none at all, or a side's peer
    /// going away and coming back (if the relay needs to tell that across a
    /// failover), never anything else.
    fn check_events(&self) {
        for who in ["mac", "browser"] {
            let types: Vec<&str> = self
                .events
                .iter()
                .filter(|(w, _)| *w == who)
                .map(|(_, v)| v["type"].as_str().unwrap_or("?"))
                .collect();
            for (i, t) in types.iter().enumerate() {
                let want = if i % 2 == 0 {
                    "peer_disconnected"
                } else {
                    "peer_resumed"
                };
                assert_eq!(*t, want, "{who} heard {types:?}");
            }
        }
    }
}

/// What every node must do after the master moved: be ready again, register,
/// pair across nodes, let a browser join a code registered before the
/// failover, and carry the pair made before it.
async fn after_failover(c: &Cluster, old_pair: &mut Flowing, old_mac: &mut Ws, old_code: &str) {
    for node in c.nodes() {
        node.wait_status("/readyz", 200).await;
    }
    // The pair made before the failover (mac on node 1, browser on node 2).
    old_pair.exchange(100).await;
    old_pair.check_events();

    // The code registered before the failover survived it (it had reached
    // the replica that is now the master) and joins on another node.
    let mut b = c.node(3).browser().await;
    b.json(json!({"type": "join", "code": old_code})).await;
    b.expect("joined").await;
    old_mac.expect("peer_joined").await;
    old_mac.binary(vec![7]).await;
    assert_eq!(b.recv().await, Got::Binary(vec![7]));

    // New sessions on every node, and a new pair across two of them.
    for node in c.nodes() {
        let _ = register_at(&node.url("/mac")).await;
    }
    let mut fresh = Flowing::new(pair_at(&c.node(2).url("/mac"), &c.node(3).url("/browser")).await);
    fresh.exchange(50).await;
    fresh.check_events();
}

/// Three nodes on a sentinel set: a cross-node pair exchanging data, and a
/// mac waiting with a code, before `fail_over` moves the master.
async fn survive(fail_over: impl FnOnce(&mut SentinelSet)) {
    let mut set = SentinelSet::start();
    let c = Cluster::start_with_redis_url(3, &set.url(), &[]);
    let old_master = set.master_port();
    let mut waiting = register_at(&c.node(1).url("/mac")).await;
    let mut pair = Flowing::new(pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await);
    pair.exchange(100).await;

    set.wait_replicated();
    fail_over(&mut set);
    assert_ne!(set.master_port(), old_master, "the master did not move");
    after_failover(&c, &mut pair, &mut waiting.ws, &waiting.code).await;
}

#[tokio::test]
async fn nodes_find_the_master_through_sentinel_and_pair_across_nodes() {
    let set = SentinelSet::start();
    let c = Cluster::start_with_redis_url(2, &set.url(), &[]);
    let mut pair = Flowing::new(pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await);
    pair.exchange(200).await;
    assert!(pair.events.is_empty(), "events: {:?}", pair.events);

    // The sessions are in the master the sentinels named.
    let master = set.master_port();
    let keys = redis_command(master, &["DBSIZE"]).expect("DBSIZE");
    assert!(
        matches!(keys, Resp::Int(n) if n > 0),
        "the master holds no keys: {keys:?}"
    );
}

#[tokio::test]
async fn after_a_planned_failover_nodes_reconnect_to_the_new_master() {
    survive(SentinelSet::failover).await;
}

#[tokio::test]
async fn after_the_master_dies_nodes_reconnect_to_the_promoted_replica() {
    survive(SentinelSet::kill_master).await;
}
