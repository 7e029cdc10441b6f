//! Request deadlines in a cluster registry, in process: a real registry
//! actor with its bus and lease on a real `redis-server`. Its peer node `n1`
//! is a stopped one: its lease is live, but nothing reads its channel, so
//! every handover asked of it waits until it is cut short.

use crate::registry::cluster::test_node::start_node_full;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use relay_protocol::{ErrorCode, Role};
use tokio::time::Instant;

use super::now_ms;
use crate::cluster::store::testing::{TestRedis, dump};
use crate::conns::ConnId;
use crate::frame::Frame;
use crate::gate::Gate;
use crate::pipe::Pushed;
use crate::registry::cluster::{ClusterRegistry, HANDOVER_WAIT};
use crate::registry::secret::TokenHash;
use crate::registry::testing::{TestClient, settings, written};
use crate::registry::{Deadline, Join, Link, Refusal, Resume, Resumed};

const SID: &str = "s1";
const CODE: &str = "ABCDEF";
const MAC_TOKEN: &str = "the mac's token";

/// Longest wait for the registry's subscription to deliver.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Starts the registry of `node` and waits until it takes requests.
async fn start_node(r: &TestRedis, node: &str) -> Addr<ClusterRegistry> {
    let (addr, _bus, _lease) = start_node_full(r, node, settings(), Duration::from_secs(30)).await;
    addr
}

/// The registry of node `n3`, where the mac resumes.
async fn node_n3(r: &TestRedis) -> Addr<ClusterRegistry> {
    start_node(r, "n3").await
}

/// The browser of `link` sends `bytes`, which its pipe must queue.
fn browser_sends(link: &Link, bytes: &'static [u8]) {
    let pipe = link.outbound.pipe().expect("a pairing");
    let pushed = pipe.push(Frame::Binary(Bytes::from_static(bytes)), &Gate::new());
    assert!(matches!(pushed, Pushed::Queued { .. }), "{pushed:?}");
}

/// Waits until `conn` has `n` things to write from `link` (what other nodes
/// say arrives over the bus), and returns them.
async fn heard(link: &Link, conn: ConnId, n: usize) -> Vec<String> {
    let until = Instant::now() + READY_WAIT;
    loop {
        let seen = written(link, conn).unwrap();
        if seen.len() >= n {
            return seen;
        }
        assert!(Instant::now() < until, "only heard {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Session `s1` with its mac homed on the stopped node `n1` (connection 1),
/// away if `away` (as `n1` marked it before it stopped).
async fn mac_on_stopped_n1(r: &TestRedis, away: bool) {
    r.lease("n1").await;
    let n1 = r.store("n1");
    let (ttl, expires) = (Duration::from_secs(60), now_ms() + 60_000);
    n1.register(
        SID,
        CODE,
        &TokenHash::of(MAC_TOKEN),
        ConnId(1),
        ttl,
        expires,
    )
    .await
    .unwrap();
    if away {
        n1.away(SID, Role::Mac, ConnId(1), now_ms() + 60_000)
            .await
            .unwrap();
    }
}

fn resume_mac(client: &TestClient, deadline: Deadline) -> Resume {
    Resume {
        client: client.client.clone(),
        deadline,
        role: Role::Mac,
        session_id: SID.to_owned(),
        resume_token: MAC_TOKEN.to_owned(),
        last_seq: 0,
        guest_seqs: Default::default(),
    }
}

fn code_of(r: &Result<Resumed, Refusal>) -> Option<ErrorCode> {
    r.as_ref().err().map(|r| r.code)
}

/// The mac resumes on n3 with too little time for its old node's handover:
/// the wait ends at the deadline, and the resume, which moved the side in
/// Redis and asked n1, is undone instead of committed. Its peer on n3 never
/// hears `peer_resumed` for it, and the mac resumes properly afterwards.
#[actix::test]
async fn a_resume_that_misses_its_deadline_is_undone_and_can_be_made_again() {
    let r = TestRedis::start().await;
    mac_on_stopped_n1(&r, true).await;
    let n3 = node_n3(&r).await;
    let browser = TestClient::start();
    let joined = n3
        .send(Join {
            client: browser.client.clone(),
            deadline: Deadline::for_request(),
            code: CODE.to_owned(),
            name: None,
        })
        .await
        .unwrap()
        .unwrap();
    let heard = || written(&joined.link, browser.conn()).unwrap();
    assert_eq!(heard(), ["peer_disconnected"]);

    let asked = Instant::now();
    let first = TestClient::start();
    let deadline = Deadline::at(asked + Duration::from_millis(300));
    let late = n3.send(resume_mac(&first, deadline)).await.unwrap();
    assert_eq!(code_of(&late), Some(ErrorCode::Unavailable));
    assert!(
        asked.elapsed() < HANDOVER_WAIT,
        "the handover wait outlasted the deadline: {:?}",
        asked.elapsed()
    );
    // Homed on n3 now, away, its grace period running again.
    let s = dump(&r, "relay:s:s1").await;
    let conn = first.conn().0.to_string();
    assert_eq!(
        (&*s["m_at"], &*s["m_conn"], &*s["m_state"]),
        ("n3", conn.as_str(), "away")
    );
    assert!(r.zscore("relay:grace", "s1|mac").await.is_some());
    assert_eq!(heard(), ["peer_disconnected"], "no peer_resumed");

    let second = TestClient::start();
    let resumed = n3
        .send(resume_mac(&second, Deadline::for_request()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard(), ["peer_disconnected", "peer_resumed"]);
    let s = dump(&r, "relay:s:s1").await;
    let conn = second.conn().0.to_string();
    assert_eq!((&*s["m_conn"], &*s["m_state"]), (conn.as_str(), "here"));
    assert_eq!(r.zscore("relay:grace", "s1|mac").await, None);
    // The browser's frames reach the resumed mac.
    browser_sends(&joined.link, b"after");
    assert_eq!(written(&resumed.link, second.conn()).unwrap(), ["data"]);
    assert_eq!(written(&resumed.link, first.conn()), None);
}

/// A resume queued behind another of its session, whose handover waits for
/// the stopped node, is refused once too little of its deadline is left for
/// a handover of its own, without touching Redis; the one ahead then
/// finishes as it would have.
#[actix::test]
async fn a_queued_resume_is_refused_at_its_latest_start_and_changes_nothing() {
    let r = TestRedis::start().await;
    mac_on_stopped_n1(&r, false).await;
    let n3 = node_n3(&r).await;

    let asked = Instant::now();
    let (ahead, queued) = (TestClient::start(), TestClient::start());
    // Both are in n3's mailbox, in this order, once `send` returns.
    let first = n3.send(resume_mac(&ahead, Deadline::for_request()));
    let short = Deadline::at(asked + HANDOVER_WAIT + Duration::from_millis(500));
    let second = n3.send(resume_mac(&queued, short));

    let refused = second.await.unwrap();
    assert_eq!(code_of(&refused), Some(ErrorCode::Unavailable));
    assert!(
        asked.elapsed() < HANDOVER_WAIT,
        "refused only after the resume ahead: {:?}",
        asked.elapsed()
    );
    let conn = ahead.conn().0.to_string();
    assert_eq!(dump(&r, "relay:s:s1").await["m_conn"], conn);

    let resumed = first.await.unwrap().unwrap();
    assert!(asked.elapsed() >= HANDOVER_WAIT, "n1 never hands over");
    assert_eq!(written(&resumed.link, ahead.conn()), Some(vec![]));
    assert_eq!(dump(&r, "relay:s:s1").await["m_conn"], conn);
    assert_eq!((ahead.replaced(), queued.replaced()), (0, 0));
}

/// As above, with the browser on another node, n2: the move told n2 before
/// the handover wait ran out, so the browser heard `peer_resumed` from it;
/// the undone resume tells n2 the mac is away again, and the browser hears
/// `peer_disconnected`. The mac's next resume reaches the browser across
/// nodes as usual.
#[actix::test]
async fn an_undone_resume_tells_the_peer_node_the_side_is_away_again() {
    let r = TestRedis::start().await;
    mac_on_stopped_n1(&r, true).await;
    let n2 = start_node(&r, "n2").await;
    let n3 = node_n3(&r).await;
    let browser = TestClient::start();
    let joined = n2
        .send(Join {
            client: browser.client.clone(),
            deadline: Deadline::for_request(),
            code: CODE.to_owned(),
            name: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        heard(&joined.link, browser.conn(), 1).await,
        ["peer_disconnected"]
    );

    let first = TestClient::start();
    let deadline = Deadline::at(Instant::now() + Duration::from_millis(300));
    let late = n3.send(resume_mac(&first, deadline)).await.unwrap();
    assert_eq!(code_of(&late), Some(ErrorCode::Unavailable));
    assert_eq!(
        heard(&joined.link, browser.conn(), 3).await,
        ["peer_disconnected", "peer_resumed", "peer_disconnected"]
    );
    assert_eq!(dump(&r, "relay:s:s1").await["m_state"], "away");

    let second = TestClient::start();
    let resumed = n3
        .send(resume_mac(&second, Deadline::for_request()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        heard(&joined.link, browser.conn(), 4).await,
        [
            "peer_disconnected",
            "peer_resumed",
            "peer_disconnected",
            "peer_resumed"
        ]
    );
    browser_sends(&joined.link, b"across");
    assert_eq!(heard(&resumed.link, second.conn(), 1).await, ["data"]);
}
