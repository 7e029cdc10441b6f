//! A side that moves while its peer is on a third node, in process: three
//! real registry actors with their buses on a real `redis-server`. What
//! the nodes tell each other crosses Redis as in production; a message a
//! busy node would deliver late is published by that node's own bus at the
//! moment the race would deliver it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use relay_protocol::Role;
use tokio::time::Instant;

use super::requests::now_ms;
use crate::cluster::bus::Bus;
use crate::cluster::envelope::{Control, Envelope, HeldFrame};
use crate::cluster::store::testing::TestRedis;
use crate::conns::ConnId;
use crate::frame::Frame;
use crate::gate::Gate;
use crate::pipe::Pushed;
use crate::queue::{Drained, Item, Status};
use crate::registry::cluster::test_node::start_node_full;
use crate::registry::cluster::{ClusterRegistry, FromPeerNode};
use crate::registry::secret::TokenHash;
use crate::registry::testing::{TestClient, settings};
use crate::registry::{Deadline, Join, Link, Register, Resume};

/// Longest wait for something another node says to arrive.
const WAIT: Duration = Duration::from_secs(10);

/// Starts the registry of `node` and waits until its subscription delivers.
async fn start_node(r: &TestRedis, node: &str) -> (Addr<ClusterRegistry>, Arc<Bus>) {
    let (addr, bus, _lease) = start_node_full(r, node, settings(), Duration::from_secs(30)).await;
    (addr, bus)
}

/// What `conn` would write from `link` so far: each data frame's payload,
/// and each control message's `type`.
fn written(link: &Link, conn: ConnId) -> Vec<String> {
    let mut d = Drained::default();
    let status = link.inbound.drain(conn, link.written, &mut d);
    assert!(
        !matches!(status, Status::NotMine | Status::Cut),
        "{conn} no longer reads this link"
    );
    d.items
        .drain(..)
        .map(|(_, item, _)| match item {
            Item::Data { frame, .. } => match frame {
                Frame::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Frame::Text(t) => t.to_string(),
            },
            Item::Event { text, .. } => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("not JSON: {text}")),
        })
        .collect()
}

/// Waits until `conn` has `n` things to write from `link`, and returns them.
async fn heard(link: &Link, conn: ConnId, n: usize) -> Vec<String> {
    let until = Instant::now() + WAIT;
    loop {
        let seen = written(link, conn);
        if seen.len() >= n {
            return seen;
        }
        assert!(Instant::now() < until, "{conn} only heard {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The side of `link` sends `payload`, which its pipe must take.
fn sends(link: &Link, payload: &str) {
    let pipe = link.outbound.pipe().expect("a pairing");
    let frame = Frame::Binary(Bytes::copy_from_slice(payload.as_bytes()));
    let pushed = pipe.push(frame, &Gate::new());
    assert!(
        matches!(pushed, Pushed::Queued { .. }),
        "{payload}: {pushed:?}"
    );
}

/// A session paired across two nodes: its mac on `mac_node`, its browser
/// on `browser_node`, the mac told `peer_joined`.
struct Pairing {
    sid: String,
    mac: TestClient,
    mac_token: String,
    mac_link: Link,
    browser: TestClient,
    browser_token: String,
    browser_link: Link,
}

async fn pair(mac_node: &Addr<ClusterRegistry>, browser_node: &Addr<ClusterRegistry>) -> Pairing {
    let mac = TestClient::start();
    let registered = mac_node
        .send(Register {
            client: mac.client.clone(),
            deadline: Deadline::for_request(),
            client_id: None,
            room: None,
        })
        .await
        .unwrap()
        .unwrap();
    let browser = TestClient::start();
    let joined = browser_node
        .send(Join {
            client: browser.client.clone(),
            deadline: Deadline::for_request(),
            code: registered.code.clone(),
            name: None,
        })
        .await
        .unwrap()
        .unwrap();
    // The mac's node knows where the browser is once the mac hears of it.
    assert_eq!(
        heard(&registered.link, mac.conn(), 1).await,
        ["peer_joined"]
    );
    Pairing {
        sid: registered.link.session_id.to_string(),
        mac,
        mac_token: registered.resume_token,
        mac_link: registered.link,
        browser,
        browser_token: joined
            .resume_token
            .expect("a pairing's browser has a token"),
        browser_link: joined.link,
    }
}

/// Side `role` of `p` resumes on `node` as connection `client`, having
/// read `last_seq` frames.
async fn resume(
    node: &Addr<ClusterRegistry>,
    p: &Pairing,
    role: Role,
    client: &TestClient,
    last_seq: u64,
) -> crate::registry::Resumed {
    let token = match role {
        Role::Mac => &p.mac_token,
        Role::Browser => &p.browser_token,
    };
    node.send(Resume {
        client: client.client.clone(),
        deadline: Deadline::for_request(),
        role,
        session_id: p.sid.clone(),
        resume_token: token.clone(),
        last_seq,
        guest_seqs: Default::default(),
    })
    .await
    .unwrap()
    .unwrap()
}

/// The mac on n1, the browser on n2. n1 takes the mac's frames and n2 has
/// them, its browser not having acknowledged them; the mac drops (n1 runs
/// the away script), and resumes on n3. n1's `away` to n2, published after
/// its script, reaches n2 only after n3's `moved` (n1 was busy draining):
/// stale news, which must not stop the browser's frames toward the mac's
/// new node, nor tell the browser the mac is gone again. Each side then
/// gets every frame of the other once, in order.
#[actix::test]
async fn a_late_away_from_the_node_a_side_left_does_not_cut_it_off_its_peer() {
    let r = TestRedis::start().await;
    let (n1, n1_bus) = start_node(&r, "n1").await;
    let (n2, _) = start_node(&r, "n2").await;
    let (n3, _) = start_node(&r, "n3").await;
    let p = pair(&n1, &n2).await;
    // The barrier below: a second pairing with the same two nodes.
    let q = pair(&n1, &n2).await;

    for i in 1..=3 {
        sends(&p.mac_link, &format!("m{i}"));
    }
    assert_eq!(
        heard(&p.browser_link, p.browser.conn(), 3).await,
        ["m1", "m2", "m3"]
    );
    r.store("n1")
        .away(&p.sid, Role::Mac, p.mac.conn(), now_ms() + 60_000)
        .await
        .unwrap();

    let mac = TestClient::start();
    let resumed = resume(&n3, &p, Role::Mac, &mac, 0).await;
    assert_eq!(resumed.accepted, 3, "n2 counted the mac's three frames");
    assert_eq!(
        heard(&p.browser_link, p.browser.conn(), 4).await,
        ["m1", "m2", "m3", "peer_resumed"]
    );

    // n1's away, late; then one for the barrier pairing, which is news.
    // n2 reads both from one channel, in order: once the barrier's browser
    // hears it, n2 has dealt with the late one.
    let to_n2 = n1_bus.link(&Arc::from("n2"));
    for sid in [&p.sid, &q.sid] {
        to_n2.control(Control::Away {
            sid: sid.clone(),
            role: Role::Mac,
            node: Some("n1".to_owned()),
        });
    }
    assert_eq!(
        heard(&q.browser_link, q.browser.conn(), 1).await,
        ["peer_disconnected"]
    );

    for i in 1..=3 {
        sends(&p.browser_link, &format!("b{i}"));
    }
    assert_eq!(
        heard(&resumed.link, mac.conn(), 3).await,
        ["b1", "b2", "b3"],
        "the browser's frames reach the mac on n3"
    );
    sends(&resumed.link, "m4");
    assert_eq!(
        heard(&p.browser_link, p.browser.conn(), 5).await,
        ["m1", "m2", "m3", "peer_resumed", "m4"],
        "the browser heard no peer_disconnected, and each frame once"
    );
}

/// The mac on n1, the browser on n2. n1 takes the mac's frames m1 to m4;
/// n2 has m1 to m3 when the mac resumes on n3 (the browser acknowledged
/// none), and m4 reaches n2 from n1 only after the move. n1 forgets the
/// session and hands nothing over: n2's count (3) is what the mac is told,
/// so the mac sends m4 again, through n3, and n2's copy from n1 makes that
/// one a duplicate; n2's unacknowledged m1 to m3 are held by n3 from then
/// on. The browser then moves too, to n1, having read nothing: n3 replays
/// all of them, each once, in order, and the browser's frames reach the mac.
#[actix::test]
async fn frames_the_node_a_side_left_took_reach_the_peer_once_and_follow_its_next_move() {
    let r = TestRedis::start().await;
    let (n1, n1_bus) = start_node(&r, "n1").await;
    let (n2, _) = start_node(&r, "n2").await;
    let (n3, _) = start_node(&r, "n3").await;
    let p = pair(&n1, &n2).await;
    for i in 1..=3 {
        sends(&p.mac_link, &format!("m{i}"));
    }
    assert_eq!(
        heard(&p.browser_link, p.browser.conn(), 3).await,
        ["m1", "m2", "m3"]
    );
    r.store("n1")
        .away(&p.sid, Role::Mac, p.mac.conn(), now_ms() + 60_000)
        .await
        .unwrap();

    let mac = TestClient::start();
    let resumed = resume(&n3, &p, Role::Mac, &mac, 0).await;
    assert_eq!(resumed.accepted, 3, "n2 had three of the mac's frames");
    assert_eq!(
        heard(&p.browser_link, p.browser.conn(), 4).await,
        ["m1", "m2", "m3", "peer_resumed"]
    );
    // n1's m4, published before the move, arrives after it.
    let m4 = Frame::Binary(Bytes::from_static(b"m4"));
    n1_bus
        .link(&Arc::from("n2"))
        .frame(p.sid.clone(), Role::Browser, 4, m4, &Gate::new());
    assert_eq!(heard(&p.browser_link, p.browser.conn(), 5).await[4], "m4");
    // The mac, told 3, sends m4 again, then m5.
    sends(&resumed.link, "m4");
    sends(&resumed.link, "m5");
    assert_eq!(
        heard(&p.browser_link, p.browser.conn(), 6).await,
        ["m1", "m2", "m3", "peer_resumed", "m4", "m5"],
        "each frame once"
    );

    // The browser drops (n2 runs the away script) and resumes on n1.
    r.store("n2")
        .away(&p.sid, Role::Browser, p.browser.conn(), now_ms() + 60_000)
        .await
        .unwrap();
    let browser = TestClient::start();
    let back = resume(&n1, &p, Role::Browser, &browser, 0).await;
    let data = |seen: Vec<String>| -> Vec<String> {
        seen.into_iter().filter(|s| s.starts_with('m')).collect()
    };
    let until = Instant::now() + WAIT;
    loop {
        let got = data(written(&back.link, browser.conn()));
        if got.len() >= 5 {
            assert_eq!(got, ["m1", "m2", "m3", "m4", "m5"], "replayed by n3");
            break;
        }
        assert!(Instant::now() < until, "the browser only got {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sends(&back.link, "b1");
    assert_eq!(
        heard(&resumed.link, mac.conn(), 2).await,
        ["peer_resumed", "b1"]
    );
}

/// Plays node n1, which holds both sides of session `s1` and then goes
/// quiet: it answers the `moved` it is sent only when the test says.
struct SilentN1 {
    messages: std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>,
}

impl SilentN1 {
    /// Session `s1` paired on n1 (mac connection 1, browser 2), both away,
    /// as n1 leaves it once it drained them; n1's lease is live.
    async fn start(r: &TestRedis) -> SilentN1 {
        r.lease("n1").await;
        let n1 = r.store("n1");
        let ttl = Duration::from_secs(60);
        let expires = now_ms() + 60_000;
        n1.register(
            "s1",
            "ABCDEF",
            &TokenHash::of("mac"),
            ConnId(1),
            ttl,
            expires,
        )
        .await
        .unwrap();
        let code = relay_protocol::SessionCode::parse("ABCDEF").unwrap();
        n1.join(&code, &TokenHash::of("browser"), ConnId(2), 1, 0, ttl)
            .await
            .unwrap();
        for (role, conn) in [(Role::Mac, ConnId(1)), (Role::Browser, ConnId(2))] {
            n1.away("s1", role, conn, expires).await.unwrap();
        }
        let mut ps = r
            .redis()
            .client()
            .await
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        ps.subscribe(crate::cluster::bus::channel("n1"))
            .await
            .unwrap();
        SilentN1 {
            messages: Box::pin(ps.into_on_message()),
        }
    }

    /// The next `moved` sent to n1: the side that moved and the request to answer.
    async fn moved(&mut self) -> (Role, String, u64) {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::time::timeout(WAIT, self.messages.next())
                .await
                .expect("a moved for n1")
                .expect("n1's subscription");
            let (envs, _) = Envelope::decode_all(Bytes::from(msg.get_payload_bytes().to_vec()));
            for env in envs {
                if let Envelope::Control(Control::Moved {
                    role,
                    node,
                    request,
                    ..
                }) = env
                {
                    return (role, node, request);
                }
            }
        }
    }
}

fn resume_s1(client: &TestClient, role: Role, last_seq: u64) -> Resume {
    Resume {
        client: client.client.clone(),
        deadline: Deadline::for_request(),
        role,
        session_id: "s1".to_owned(),
        resume_token: role.as_str().to_owned(),
        last_seq,
        guest_seqs: Default::default(),
    }
}

/// Both sides on n1, which drains them at once: the browser resumes on n2
/// and the mac on n3 at the same time. n3's `moved` reaches n2 while the
/// browser's resume there still waits for n1's handover, so n2 has no pipe
/// toward the mac yet to replay from. n1's handover then brings the
/// browser's frames b3 to b5, which the mac (having read 2) never had: n2
/// must replay them to the mac's new node once it makes that pipe, or the
/// mac waits for them for good (the balancer drain test's stall, seen with
/// the third node drained).
#[actix::test]
async fn a_peer_that_moves_while_its_side_resumes_gets_what_the_handover_brought() {
    let r = TestRedis::start().await;
    let mut n1 = SilentN1::start(&r).await;
    let (n2, _) = start_node(&r, "n2").await;
    let (n3, _) = start_node(&r, "n3").await;

    let browser = TestClient::start();
    // In n2's mailbox once `send` returns; answered once n1 hands over.
    let browser_resume = n2.send(resume_s1(&browser, Role::Browser, 0));
    let (role, node, to_n2) = n1.moved().await;
    assert_eq!((role, &*node), (Role::Browser, "n2"));

    // The mac resumes on n3, which asks n1 and n2; n1 forgot the session
    // when the browser left (no peer there any more) and says nothing.
    let mac = TestClient::start();
    let mac_resume = n3.send(resume_s1(&mac, Role::Mac, 2));
    let (role, _, to_n3) = n1.moved().await;
    assert_eq!(role, Role::Mac);
    let empty = Control::Handover {
        sid: "s1".into(),
        role: Role::Mac,
        received: None,
        events: vec![],
        unacknowledged: vec![],
        error: None,
        request: to_n3,
    };
    n3.do_send(FromPeerNode(empty));
    // Done only once n2 answered too: n2 has heard of the mac's move.
    let mac_back = mac_resume.await.unwrap().unwrap();

    // n1's handover for the browser: it had b1 to b5, the mac read 2.
    let held = (3..=5)
        .map(|i| {
            let payload = format!("b{i}");
            HeldFrame::new(i, &Frame::Binary(Bytes::from(payload.into_bytes())))
        })
        .collect();
    n2.do_send(FromPeerNode(Control::Handover {
        sid: "s1".into(),
        role: Role::Browser,
        received: Some(5),
        events: vec![],
        unacknowledged: held,
        error: None,
        request: to_n2,
    }));
    let browser_back = browser_resume.await.unwrap().unwrap();
    assert_eq!(browser_back.accepted, 5);

    let data = |link: &Link, conn: ConnId| -> Vec<String> {
        written(link, conn)
            .into_iter()
            .filter(|s| s.starts_with(['b', 'm']))
            .collect()
    };
    let until = Instant::now() + WAIT;
    while data(&mac_back.link, mac.conn()).len() < 3 {
        assert!(
            Instant::now() < until,
            "the mac on n3 only got {:?}",
            written(&mac_back.link, mac.conn())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sends(&browser_back.link, "b6");
    sends(&mac_back.link, "m1");
    let until = Instant::now() + WAIT;
    while data(&mac_back.link, mac.conn()).len() < 4
        || data(&browser_back.link, browser.conn()).is_empty()
    {
        assert!(Instant::now() < until, "b6 or m1 did not cross");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        data(&mac_back.link, mac.conn()),
        ["b3", "b4", "b5", "b6"],
        "each once, in order"
    );
    assert_eq!(data(&browser_back.link, browser.conn()), ["m1"]);
}
