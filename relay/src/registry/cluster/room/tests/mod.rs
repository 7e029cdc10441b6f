//! Rooms across nodes, in process: three cluster registry actors (nodes
//! n1, n2, n3) with their buses and leases on one real `redis-server`,
//! and test clients standing where sockets would. The host is on n1, its
//! guests on all three; frames go through the same outbounds and pipes a
//! socket pushes into and drains.

use crate::registry::cluster::test_node::start_node_full;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use relay_protocol::{AdmitMode, ErrorCode, GuestId};
use tokio::time::Instant;

use crate::cluster::store::testing::TestRedis;
use crate::conns::ConnId;
use crate::frame::Frame;
use crate::gate::Gate;
use crate::outbound::{Sent, Target};
use crate::pipe::Pushed;
use crate::queue::{Drained, Item, Status};
use crate::registry::cluster::ClusterRegistry;
use crate::registry::member::Member;
use crate::registry::testing::{TestClient, settings};
use crate::registry::{
    Deadline, Departure, Gone, Host, Join, Joined, Link, Register, Registered, RoomOp, RoomRequest,
};

/// Longest wait for what crosses the bus.
const WAIT: Duration = Duration::from_secs(10);

/// Starts the registry of `node` and waits until it takes requests.
async fn start_node(r: &TestRedis, node: &str) -> Addr<ClusterRegistry> {
    start_node_with(r, node, settings()).await
}

/// As [`start_node`], with `settings`.
async fn start_node_with(
    r: &TestRedis,
    node: &str,
    settings: crate::registry::RegistrySettings,
) -> Addr<ClusterRegistry> {
    let (addr, lease) = start_node_leased(r, node, settings).await;
    // The lease renews itself for the test's life.
    std::mem::forget(lease);
    addr
}

/// As [`start_node_with`], keeping the node's lease (to give it up: the
/// node is then dead to the others).
async fn start_node_leased(
    r: &TestRedis,
    node: &str,
    settings: crate::registry::RegistrySettings,
) -> (Addr<ClusterRegistry>, crate::cluster::lease::Lease) {
    let (addr, _bus, lease) = start_node_full(r, node, settings, Duration::from_secs(30)).await;
    (addr, lease)
}

/// What a connection would write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A control message.
    Event(serde_json::Value),
    /// A data frame, and the guest it came from (toward a host).
    Data(Frame, Option<u64>),
}

impl Seen {
    fn kind(&self) -> String {
        match self {
            Seen::Event(v) => v["type"].as_str().unwrap_or("?").to_owned(),
            Seen::Data(..) => "data".to_owned(),
        }
    }
}

/// Everything `conn` would have written from `link` so far; `None` when
/// the pipe no longer delivers to it.
fn seen(link: &Link, conn: ConnId) -> Option<Vec<Seen>> {
    let mut d = Drained::default();
    if let Status::NotMine | Status::Cut = link.inbound.drain(conn, link.written, &mut d) {
        return None;
    }
    Some(
        d.items
            .drain(..)
            .map(|(_, item, _)| match item {
                Item::Data { frame, from, .. } => Seen::Data(frame, from.map(|g| g.get())),
                Item::Event { text, .. } => Seen::Event(serde_json::from_str(&text).unwrap()),
            })
            .collect(),
    )
}

/// Waits until `conn` would have written `n` things from `link`.
async fn wait_seen(link: &Link, conn: ConnId, n: usize) -> Vec<Seen> {
    let until = Instant::now() + WAIT;
    loop {
        let s = seen(link, conn).unwrap_or_default();
        if s.len() >= n {
            return s;
        }
        assert!(
            Instant::now() < until,
            "waited for {n}, saw {:?}",
            s.iter().map(Seen::kind).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `f` holds.
async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Hosting {
    client: TestClient,
    reg: Registered,
    node: Addr<ClusterRegistry>,
    gate: Arc<Gate>,
}

impl Hosting {
    /// The host sends `frame` to `to`; returns how many guests it reached.
    fn send(&self, frame: Frame, to: Target) -> usize {
        match self
            .reg
            .link
            .outbound
            .push(frame, to, self.client.conn(), &self.gate, |_| {})
        {
            Sent::Room(n) => n,
            Sent::Pipe(p) => panic!("a room host's push said {p:?}"),
        }
    }

    async fn act(&self, op: RoomOp, guest_id: GuestId) -> Result<(), ErrorCode> {
        self.node
            .send(Host {
                session_id: Arc::clone(&self.reg.link.session_id),
                conn: self.client.conn(),
                op,
                guest_id,
            })
            .await
            .unwrap()
            .map_err(|r| r.code)
    }

    fn seen(&self) -> Vec<Seen> {
        seen(&self.reg.link, self.client.conn()).unwrap()
    }

    async fn wait(&self, n: usize) -> Vec<Seen> {
        wait_seen(&self.reg.link, self.client.conn(), n).await
    }
}

async fn host_on(node: &Addr<ClusterRegistry>, max_guests: u32, admit: AdmitMode) -> Hosting {
    let client = TestClient::start();
    let reg = node
        .send(Register {
            client: client.client.clone(),
            deadline: Deadline::for_request(),
            client_id: None,
            room: Some(RoomRequest { max_guests, admit }),
        })
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("register: {r:?}"));
    Hosting {
        client,
        reg,
        node: node.clone(),
        gate: Gate::new(),
    }
}

struct Guesting {
    client: TestClient,
    joined: Joined,
    node: Addr<ClusterRegistry>,
    gate: Arc<Gate>,
}

impl Guesting {
    fn id(&self) -> GuestId {
        self.joined.guest_id.expect("a room guest")
    }

    fn send(&self, frame: Frame) -> Pushed {
        match self.joined.link.outbound.push(
            frame,
            Target::All,
            self.client.conn(),
            &self.gate,
            |_| {},
        ) {
            Sent::Pipe(p) => p,
            Sent::Room(_) => panic!("a guest pushed as a host"),
        }
    }

    fn seen(&self) -> Option<Vec<Seen>> {
        seen(&self.joined.link, self.client.conn())
    }

    async fn wait(&self, n: usize) -> Vec<Seen> {
        wait_seen(&self.joined.link, self.client.conn(), n).await
    }

    fn gone(&self, how: Departure) {
        self.node.do_send(Gone {
            session_id: Arc::clone(&self.joined.link.session_id),
            member: self.joined.link.member,
            conn: self.client.conn(),
            how,
        });
    }
}

async fn join(node: &Addr<ClusterRegistry>, code: &str, name: &str) -> Result<Guesting, ErrorCode> {
    let client = TestClient::start();
    let joined = node
        .send(Join {
            client: client.client.clone(),
            deadline: Deadline::for_request(),
            code: code.to_owned(),
            name: Some(name.to_owned()),
        })
        .await
        .unwrap()
        .map_err(|r| r.code)?;
    Ok(Guesting {
        client,
        joined,
        node: node.clone(),
        gate: Gate::new(),
    })
}

fn bin(tag: &str, i: u32) -> Frame {
    Frame::Binary(Bytes::from(format!("{tag}-{i}\0\u{ff}").into_bytes()))
}

fn text(tag: &str, i: u32) -> Frame {
    Frame::Text(ByteString::from(format!("{{\"t\":\"{tag}\",\"i\":{i}}}")))
}

/// The data frames in `seen`, with their senders.
fn data(seen: &[Seen]) -> Vec<(Frame, Option<u64>)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Data(f, from) => Some((f.clone(), *from)),
            Seen::Event(_) => None,
        })
        .collect()
}

fn events(seen: &[Seen]) -> Vec<serde_json::Value> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Event(v) => Some(v.clone()),
            Seen::Data(..) => None,
        })
        .collect()
}

async fn three_nodes(r: &TestRedis) -> [Addr<ClusterRegistry>; 3] {
    [
        start_node(r, "n1").await,
        start_node(r, "n2").await,
        start_node(r, "n3").await,
    ]
}

/// A room of 8 guests over three nodes, the host on n1: the host sees
/// each join with its name, admits seven and denies one (on another
/// node), a ninth join finds the room full; broadcast and directed frames
/// (binary and text, verbatim) reach each admitted guest in order after
/// its `joined`, and every guest's frames reach the host in order, tagged.
#[actix::test]
async fn a_room_of_eight_over_three_nodes_admits_denies_and_relays_both_ways() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 8, AdmitMode::Ask).await;
    let code = host.reg.code.clone();
    let mut guests = Vec::new();
    for i in 0..8 {
        let g = join(&nodes[[0, 1, 2, 1, 2, 0, 1, 2][i]], &code, &format!("g{i}"))
            .await
            .unwrap();
        assert!(
            g.joined.resume_token.is_none(),
            "a waiting guest has no token yet"
        );
        guests.push(g);
    }
    assert_eq!(
        join(&nodes[1], &code, "late").await.err(),
        Some(ErrorCode::RoomFull)
    );
    let seen = host.wait(8).await;
    let mut joined: Vec<(u64, String)> = events(&seen)
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "guest_joined", "{e}");
            (
                e["guestId"].as_u64().unwrap(),
                e["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    joined.sort();
    let mut want: Vec<(u64, String)> = guests
        .iter()
        .enumerate()
        .map(|(i, g)| (g.id(), format!("g{i}")))
        .collect();
    want.sort();
    assert_eq!(joined, want);

    // A waiting guest's data is refused on its own node.
    assert!(matches!(guests[1].send(bin("early", 0)), Pushed::NotPaired));

    // Deny the guest on n2 (index 3), admit the rest.
    let denied = guests.remove(3);
    host.act(RoomOp::Deny, denied.id()).await.unwrap();
    assert_eq!(denied.client.ended(), [ErrorCode::Denied]);
    assert_eq!(
        host.act(RoomOp::Admit, denied.id()).await,
        Err(ErrorCode::UnknownGuest),
        "a denied guest cannot be admitted after"
    );
    for g in &guests {
        host.act(RoomOp::Admit, g.id()).await.unwrap();
    }
    assert_eq!(
        host.act(RoomOp::Admit, guests[0].id()).await,
        Err(ErrorCode::UnknownGuest),
        "admitted twice"
    );
    // Each admitted guest got `joined` with its token.
    for g in &guests {
        let s = g.wait(1).await;
        assert_eq!(s[0].kind(), "joined");
        if let Seen::Event(e) = &s[0] {
            assert_eq!(e["guestId"], g.id());
            assert!(e["resumeToken"].as_str().is_some_and(|t| !t.is_empty()));
        }
    }

    // Counted once, on the host's node, with every guest wherever it is.
    let st = nodes[0].send(crate::registry::Stats).await.unwrap();
    assert_eq!(
        (
            st.rooms,
            st.guests_in,
            st.guests_waiting,
            st.room_guests_max,
            st.paired
        ),
        (1, 7, 0, 7, 1)
    );
    let st = nodes[1].send(crate::registry::Stats).await.unwrap();
    assert_eq!((st.rooms, st.guests_in, st.paired), (0, 0, 0));

    // Broadcast, then one frame to one guest, then broadcast again.
    const N: u32 = 50;
    for i in 0..N {
        assert_eq!(host.send(bin("all", i), Target::All), 7);
    }
    let one = guests[4].id();
    assert_eq!(host.send(text("one", 0), Target::Guest(one)), 1);
    for i in 0..N {
        assert_eq!(host.send(text("all", i), Target::All), 7);
    }
    // Every guest sends its own numbered frames.
    for (k, g) in guests.iter().enumerate() {
        for i in 0..N {
            let f = if i % 2 == 0 {
                bin("g", i)
            } else {
                text(&format!("g{k}"), i)
            };
            assert!(matches!(g.send(f), Pushed::Queued { .. }), "guest {k}");
        }
    }
    for g in &guests {
        let extra = usize::from(g.id() == one);
        let s = g.wait(1 + 2 * N as usize + extra).await;
        let mut want: Vec<Frame> = (0..N).map(|i| bin("all", i)).collect();
        if extra == 1 {
            want.push(text("one", 0));
        }
        want.extend((0..N).map(|i| text("all", i)));
        let got: Vec<Frame> = data(&s).into_iter().map(|(f, _)| f).collect();
        assert_eq!(got, want, "guest {}", g.id());
    }
    // The host: admitted events, then every guest's frames, in each
    // guest's order, tagged with it.
    let s = host.wait(8 + 1 + 7 + 7 * N as usize).await;
    let admitted: Vec<u64> = events(&s)
        .iter()
        .filter(|e| e["type"] == "guest_admitted")
        .map(|e| e["guestId"].as_u64().unwrap())
        .collect();
    assert_eq!(admitted.len(), 7);
    let left: Vec<_> = events(&s)
        .into_iter()
        .filter(|e| e["type"] == "guest_left")
        .collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["guestId"], denied.id());
    assert_eq!(left[0]["reason"], "denied");
    let d = data(&s);
    for (k, g) in guests.iter().enumerate() {
        let got: Vec<Frame> = d
            .iter()
            .filter(|(_, from)| *from == Some(g.id()))
            .map(|(f, _)| f.clone())
            .collect();
        let want: Vec<Frame> = (0..N)
            .map(|i| {
                if i % 2 == 0 {
                    bin("g", i)
                } else {
                    text(&format!("g{k}"), i)
                }
            })
            .collect();
        assert_eq!(got, want, "from guest {}", g.id());
    }
    assert_eq!(d.len(), 7 * N as usize, "nothing untagged, nothing extra");
}

/// An automatic room: guests on the host's node and on others are in at
/// once, and what a guest on another node sends at once reaches the host
/// even though its node tells the host's node of it only beside the
/// frames.
#[actix::test]
async fn an_auto_room_takes_guests_at_once_and_loses_no_early_frame() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 3, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let mut guests = Vec::new();
    for n in &nodes {
        let g = join(n, &code, "auto").await.unwrap();
        assert!(g.joined.resume_token.is_some());
        for i in 0..5 {
            assert!(matches!(g.send(bin("early", i)), Pushed::Queued { .. }));
        }
        guests.push(g);
    }
    let s = host.wait(6 + 15).await;
    for g in &guests {
        let got: Vec<Frame> = data(&s)
            .into_iter()
            .filter(|(_, from)| *from == Some(g.id()))
            .map(|(f, _)| f)
            .collect();
        assert_eq!(got, (0..5).map(|i| bin("early", i)).collect::<Vec<_>>());
    }
    wait_for("every guest admitted", || {
        events(&host.seen())
            .iter()
            .filter(|e| e["type"] == "guest_admitted")
            .count()
            == 3
    })
    .await;
    assert_eq!(host.send(bin("hi", 0), Target::All), 3);
    for g in &guests {
        let s = g.wait(1).await;
        assert_eq!(data(&s), [(bin("hi", 0), None)]);
    }
}

/// The host removes a guest on another node while frames flow: the guest
/// is cut (`REMOVED`), gets nothing the host sends after the removal was
/// answered, its frames stop reaching the host, and the other guests get
/// every frame. A guest that leaves is `guest_left` with its reason, and a
/// guest that drops is `guest_away`.
#[actix::test]
async fn removal_during_traffic_and_guests_leaving() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 4, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let mut guests = Vec::new();
    for n in [1, 2, 0, 1] {
        guests.push(join(&nodes[n], &code, "x").await.unwrap());
    }
    wait_for("every guest admitted", || {
        events(&host.seen())
            .iter()
            .filter(|e| e["type"] == "guest_admitted")
            .count()
            == 4
    })
    .await;
    const N: u32 = 40;
    let removed = &guests[1];
    for i in 0..N {
        host.send(bin("a", i), Target::All);
        removed.send(bin("r", i));
    }
    host.act(RoomOp::Remove, removed.id()).await.unwrap();
    assert_eq!(removed.client.ended(), [ErrorCode::Removed]);
    for i in N..2 * N {
        assert_eq!(host.send(bin("a", i), Target::All), 3);
    }
    assert_eq!(
        host.act(RoomOp::Remove, removed.id()).await,
        Err(ErrorCode::UnknownGuest)
    );
    for (k, g) in guests.iter().enumerate().filter(|(k, _)| *k != 1) {
        let s = g.wait(2 * N as usize).await;
        let got: Vec<Frame> = data(&s).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            got,
            (0..2 * N).map(|i| bin("a", i)).collect::<Vec<_>>(),
            "{k}"
        );
    }
    // The removed guest got at most the frames before the removal.
    if let Some(s) = removed.seen() {
        assert!(data(&s).len() <= N as usize);
    }
    // No frame of the removed guest arrives after the host heard it left.
    let s = host.wait(4 + 4 + 1).await;
    let at = s
        .iter()
        .position(|e| matches!(e, Seen::Event(v) if v["type"] == "guest_left"))
        .unwrap();
    assert!(
        s[at + 1..]
            .iter()
            .all(|e| !matches!(e, Seen::Data(_, Some(g)) if *g == removed.id()))
    );
    if let Seen::Event(v) = &s[at] {
        assert_eq!(v["reason"], "removed");
    }

    // One leaves (on n3), one drops (on n2).
    guests[1].gone(Departure::Left); // the removed one: nothing more happens
    guests[0].gone(Departure::Dropped);
    guests[2].gone(Departure::Left);
    wait_for("guest_away and guest_left", || {
        let e = events(&host.seen());
        e.iter()
            .any(|e| e["type"] == "guest_away" && e["guestId"] == guests[0].id())
            && e.iter().any(|e| {
                e["type"] == "guest_left" && e["guestId"] == guests[2].id() && e["reason"] == "left"
            })
    })
    .await;
    let lefts = events(&host.seen())
        .iter()
        .filter(|e| e["type"] == "guest_left")
        .count();
    assert_eq!(lefts, 2, "the removed guest's leave is not news");
    // The one that left is no longer sent to.
    wait_for("two guests left to send to", || {
        host.send(bin("z", 0), Target::All) == 2
    })
    .await;
}

mod host;
mod rebuild;
mod resume;
mod stall;

mod grace;
mod lost;
