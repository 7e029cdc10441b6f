//! What the dispatcher does with a room's envelopes: a host frame for
//! several guests of this node reaches each guest's direction at its own
//! number, once; a guest direction's acks reach the pipe that holds its
//! frames; a remote guest's frames reach the host's pipe tagged, and are
//! acknowledged only once the host read them. In process, with a real registry on a real `redis-server` (the
//! dispatcher tells it of cut sockets).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Directory, dispatcher};
use crate::cluster::bus::Bus;
use crate::cluster::envelope::{Envelope, GuestLane, Lane};
use crate::cluster::store::testing::TestRedis;
use crate::frame::Frame;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::pipe::{Peer, Pipe};
use crate::queue::Limits;
use crate::registry::cluster::ClusterRegistry;
use crate::registry::testing::settings;

fn limits() -> Limits {
    Limits {
        max_buffered: 1_000_000,
        stall: Duration::from_secs(3600),
        away_frames: 100,
        away_bytes: 1_000_000,
        paced: false,
    }
}

fn lane(guest: u64, to_host: bool) -> Lane {
    Lane::Guest(GuestLane { guest, to_host })
}

#[actix::test]
async fn room_envelopes_reach_each_guest_direction_once() {
    let r = TestRedis::start().await;
    let metrics = Arc::new(Metrics::new("g").unwrap());
    let (registry, _, _) = ClusterRegistry::start(
        settings(),
        Arc::clone(&metrics),
        Arc::from("g"),
        r.redis(),
        Duration::from_secs(30),
    );
    let (bus, _out) = Bus::detached("g");
    let peer = |to: Lane| Peer {
        link: bus.link(&Arc::from("h")),
        sid: Arc::from("s"),
        to,
    };
    let dir = Directory::default();
    let sid = Arc::from("s");
    // Guests 3 and 5 are on this node; guest 4's frames toward the host
    // are held here until the host's node acknowledges them.
    let to_3 = Pipe::fed_from_peer(limits(), 0, 0, peer(lane(3, false)));
    let to_5 = Pipe::fed_from_peer(limits(), 0, 0, peer(lane(5, false)));
    let from_4 = Pipe::sending_to_peer(limits(), peer(lane(4, true)), 0, 0);
    dir.set(&sid, lane(3, false), Some(&to_3));
    dir.set(&sid, lane(5, false), Some(&to_5));
    dir.set(&sid, lane(4, true), Some(&from_4));
    let dispatch = dispatcher(dir.clone(), registry, metrics);

    let frame = Frame::Binary(Bytes::from_static(b"to all"));
    let room = |lanes: Vec<(u64, u64)>| Envelope::RoomFrame {
        sid: "s".into(),
        host: None,
        lanes,
        frame: frame.clone(),
    };
    dispatch(room(vec![(3, 1), (5, 1), (9, 1)]));
    dispatch(room(vec![(3, 1)]));
    assert_eq!((to_3.held_entries(), to_5.held_entries()), (1, 1));
    // Guest 3's next frame is its second, guest 5's a gap (asked for).
    dispatch(room(vec![(3, 2), (5, 3)]));
    assert_eq!((to_3.held_entries(), to_5.held_entries()), (2, 1));
    assert_eq!(
        dir.get("s", lane(9, false)).map(|p| p.held_entries()),
        None,
        "a guest not held here is skipped"
    );
    // With the host's number: each guest's node keeps it for the frame
    // taken (none for guest 5's gap, nor for a duplicate of guest 3's).
    assert_eq!((to_3.host_at(), to_5.host_at()), ((0, 2), (0, 1)));
    let at = |host, lanes: Vec<(u64, u64)>| Envelope::RoomFrame {
        sid: "s".into(),
        host: Some(host),
        lanes,
        frame: frame.clone(),
    };
    dispatch(at(40, vec![(3, 3), (5, 3)]));
    dispatch(at(39, vec![(3, 2)]));
    assert_eq!((to_3.host_at(), to_5.host_at()), ((40, 3), (0, 1)));
    dispatch(at(41, vec![(5, 2)]));
    assert_eq!(to_5.host_at(), (41, 2));

    from_4.push(Frame::Text("hi".into()), &Gate::new());
    assert_eq!(from_4.held_entries(), 1);
    let ack = |guest, to_host| Envelope::GuestAck {
        sid: "s".into(),
        lane: GuestLane { guest, to_host },
        p: 1,
    };
    dispatch(ack(4, false));
    assert_eq!(from_4.held_entries(), 1, "another direction's ack");
    dispatch(ack(4, true));
    assert_eq!(from_4.held_entries(), 0);
}

/// Takes wake-ups and does nothing: the test drains the pipe itself.
struct Sink;
impl actix::Actor for Sink {
    type Context = actix::Context<Self>;
}
impl actix::Handler<crate::pipe::Wake> for Sink {
    type Result = ();
    fn handle(&mut self, _: crate::pipe::Wake, _: &mut actix::Context<Self>) {}
}

#[actix::test]
async fn a_remote_guest_s_frames_reach_the_host_s_pipe_and_are_acknowledged_once_read() {
    use actix::Actor as _;
    use std::num::NonZeroU64;

    use crate::cluster::envelope::Control;
    use crate::conns::ConnId;
    use crate::pipe::Receiver;
    use crate::queue::Drained;
    use relay_protocol::Role;

    let r = TestRedis::start().await;
    let metrics = Arc::new(Metrics::new("h").unwrap());
    let (registry, _, _) = ClusterRegistry::start(
        settings(),
        Arc::clone(&metrics),
        Arc::from("h"),
        r.redis(),
        Duration::from_secs(30),
    );
    let (bus, mut out) = Bus::detached("h");
    let dir = Directory::default();
    let sid = Arc::from("s");
    // The host reads its pipe on this node; guest 4 sends from node "g".
    let host = Pipe::new(limits());
    host.reset_receiver();
    let rx = Receiver {
        conn: ConnId(1),
        wake: Sink.start().recipient(),
        killer: None,
    };
    host.attach(rx, 0).unwrap();
    let four = NonZeroU64::new(4).unwrap();
    let to_host = GuestLane {
        guest: 4,
        to_host: true,
    };
    host.feed_guest(
        four,
        0,
        Peer {
            link: bus.link(&Arc::from("g")),
            sid: Arc::clone(&sid),
            to: Lane::Guest(to_host),
        },
    );
    dir.set(&sid, Role::Mac, Some(&host));
    let dispatch = dispatcher(dir.clone(), registry, metrics);

    let guest_frame = |guest, p, text: &'static str| Envelope::GuestFrame {
        sid: "s".into(),
        guest,
        p,
        frame: Frame::Text(text.into()),
    };
    dispatch(guest_frame(4, 1, "one"));
    dispatch(guest_frame(4, 1, "one"));
    dispatch(guest_frame(6, 1, "not fed here"));
    let mut d = Drained::default();
    host.drain(ConnId(1), 0, &mut d);
    let got: Vec<_> = d
        .items
        .iter()
        .map(|(_, item, _)| match item {
            crate::queue::Item::Data { frame, from, .. } => (frame.clone(), from.to_owned()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, [(Frame::Text("one".into()), Some(four))]);
    assert_eq!(out.envelopes(), [], "acknowledged before the host read it");
    host.ack(d.items[0].0);
    assert_eq!(
        out.envelopes(),
        [Envelope::GuestAck {
            sid: "s".into(),
            lane: to_host,
            p: 1,
        }]
    );
    // Frame 2 was lost: guest 4's node is asked for it.
    dispatch(guest_frame(4, 3, "three"));
    assert_eq!(
        out.envelopes(),
        [Envelope::Control(Control::GuestResend {
            sid: "s".into(),
            lane: to_host,
            from: 2,
        })]
    );
    assert_eq!(host.held_entries(), 0);
    // Guest 4 resumes on node "c" before the host read its frame 2: "c"
    // holds that frame from now on, and hears of the host's reads.
    dispatch(guest_frame(4, 2, "two"));
    let moved = host.guest_fed_from(
        four,
        Peer {
            link: bus.link(&Arc::from("c")),
            sid: Arc::clone(&sid),
            to: Lane::Guest(to_host),
        },
    );
    assert_eq!(moved, Some((2, vec![(2, Frame::Text("two".into()))])));
    let mut d = Drained::default();
    host.drain(ConnId(1), 1, &mut d);
    host.ack(d.items[0].0);
    let ack = Envelope::GuestAck {
        sid: "s".into(),
        lane: to_host,
        p: 2,
    };
    assert_eq!(out.publish(), [(Arc::from("c"), ack)]);
    // Guest 4 left (or came to this node): its frames from there are dropped.
    assert_eq!(host.unfeed_guest(four), Some(2));
    dispatch(guest_frame(4, 3, "three"));
    assert_eq!(host.held_entries(), 0);
    assert_eq!(out.envelopes(), []);
}
