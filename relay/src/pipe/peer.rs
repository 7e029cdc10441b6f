//! The other node of a cross-node direction, as a pipe talks to it: what
//! the pipe hands to the link toward that node.

use std::sync::Arc;

use crate::cluster::bus::Link;
use crate::cluster::envelope::{Control, GuestLane, Lane, host_number};
use crate::frame::Frame;
use crate::gate::Gate;

/// The other node of a cross-node direction, and how to reach it.
#[derive(Clone)]
pub struct Peer {
    /// The link to the node on the other end.
    pub link: Arc<Link>,
    /// The session.
    pub sid: Arc<str>,
    /// The direction this pipe is (for a pairing, the side it delivers to).
    pub to: Lane,
}

impl Peer {
    /// The node on the other end.
    pub fn node(&self) -> &Arc<str> {
        self.link.node()
    }

    /// Hands the link frame `p`; `host` is its number among a room host's
    /// frames (0: none), on the way to a guest.
    pub(super) fn frame(&self, p: u64, frame: Frame, gate: &Arc<Gate>, host: u64) {
        let sid = self.sid.to_string();
        match self.to {
            Lane::Pair(to) => self.link.frame(sid, to, p, frame, gate),
            Lane::Guest(GuestLane {
                guest,
                to_host: true,
            }) => self.link.guest_frame(sid, guest, p, frame, gate),
            // One guest named; the publisher merges a host frame queued
            // for several guests of one node into one envelope.
            Lane::Guest(GuestLane {
                guest,
                to_host: false,
            }) => self
                .link
                .room_frame(sid, host_number(host), vec![(guest, p)], frame, gate),
        }
    }

    /// Hands the link frames sent again, each with its number among a room
    /// host's frames (0: none).
    pub(super) fn replay(&self, frames: Vec<(u64, Frame, u64)>) {
        if !frames.is_empty() {
            self.link.replay_numbered(&self.sid, self.to, frames);
        }
    }

    #[inline]
    pub(super) fn ack(&self, p: u64, pairing: u64) {
        let sid = self.sid.to_string();
        match self.to {
            Lane::Pair(to) => self.link.ack(sid, to, p, pairing),
            Lane::Guest(lane) => self.link.guest_ack(sid, lane, p, pairing),
        }
    }

    pub(super) fn written(&self, p: u64, pairing: u64) {
        let sid = self.sid.to_string();
        match self.to {
            Lane::Pair(to) => self.link.written(sid, to, p, pairing),
            Lane::Guest(lane) => self.link.guest_written(sid, lane, p, pairing),
        }
    }

    pub(super) fn resend(&self, from: u64) {
        let sid = self.sid.to_string();
        self.link.control(match self.to {
            Lane::Pair(to) => Control::Resend { sid, to, from },
            Lane::Guest(lane) => Control::GuestResend { sid, lane, from },
        });
    }
}

#[cfg(test)]
mod tests {
    //! A room's directions across nodes take the same pipes as a pairing's;
    //! only what the peer hands to the link differs: frames, replays, acks,
    //! written reports and resends name the guest.

    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::cluster::bus::Bus;
    use crate::cluster::envelope::Envelope;
    use crate::conns::ConnId;
    use crate::pipe::{Drained, Pipe, Receiver};
    use crate::queue::{FromPeer, Limits};

    fn limits() -> Limits {
        Limits {
            max_buffered: 1_000_000,
            stall: Duration::from_secs(3600),
            away_frames: 100,
            away_bytes: 1_000_000,
            paced: false,
        }
    }

    fn peer(bus: &crate::cluster::bus::Bus, node: &str, guest: u64, to_host: bool) -> Peer {
        Peer {
            link: bus.link(&Arc::from(node)),
            sid: Arc::from("s"),
            to: Lane::Guest(GuestLane { guest, to_host }),
        }
    }

    fn data(n: u8) -> Frame {
        Frame::Binary(Bytes::from(vec![n]))
    }

    #[test]
    fn toward_remote_guests_frames_go_as_room_frames_merged_per_node() {
        let (bus, mut out) = Bus::detached("host-node");
        let to_3 = Pipe::sending_to_peer(limits(), peer(&bus, "g", 3, false), 0, 0);
        let to_5 = Pipe::sending_to_peer(limits(), peer(&bus, "g", 5, false), 0, 0);
        let gate = Gate::new();
        // Guest 3 joined earlier: it is at its frame 2 when guest 5 is at 1.
        to_3.push(data(0), &gate);
        out.publish();
        let all = data(1);
        to_3.push(all.clone(), &gate);
        to_5.push(all.clone(), &gate);
        assert_eq!(
            out.envelopes(),
            [Envelope::RoomFrame {
                sid: "s".into(),
                host: None,
                lanes: vec![(3, 2), (5, 1)],
                frame: all,
            }]
        );
        // Sent again (a gap at guest 3's node), one guest at a time.
        to_3.resend_to_peer(1);
        assert_eq!(
            out.envelopes(),
            [
                Envelope::RoomFrame {
                    sid: "s".into(),
                    host: None,
                    lanes: vec![(3, 1)],
                    frame: data(0),
                },
                Envelope::RoomFrame {
                    sid: "s".into(),
                    host: None,
                    lanes: vec![(3, 2)],
                    frame: data(1),
                },
            ]
        );
    }

    #[test]
    fn from_a_remote_guest_frames_go_as_guest_frames() {
        let (bus, mut out) = Bus::detached("guest-node");
        let to_host = Pipe::sending_to_peer(limits(), peer(&bus, "h", 4, true), 0, 0);
        to_host.push(data(7), &Gate::new());
        assert_eq!(
            out.envelopes(),
            [Envelope::GuestFrame {
                sid: "s".into(),
                guest: 4,
                p: 1,
                frame: data(7),
            }]
        );
    }

    #[test]
    fn a_waiting_guest_s_frames_are_refused_on_its_own_node_until_admitted() {
        use crate::conns::ConnId;
        use crate::outbound::{GuestOut, Outbound, Sent, Target};
        use crate::pipe::Pushed;

        let (bus, mut out) = Bus::detached("guest-node");
        let to_host = Pipe::sending_to_peer(limits(), peer(&bus, "h", 4, true), 0, 0);
        let id = std::num::NonZeroU64::new(4).unwrap();
        let guest = GuestOut::new(Arc::clone(&to_host), id, false);
        let way = Outbound::Guest(Arc::clone(&guest));
        let gate = Gate::new();
        let send = |n| way.push(data(n), Target::All, ConnId(1), &gate, |_| {});
        assert!(matches!(send(1), Sent::Pipe(Pushed::NotPaired)));
        assert_eq!(out.envelopes(), [], "a waiting guest's frame left its node");
        guest.admit();
        assert!(matches!(
            send(2),
            Sent::Pipe(Pushed::Queued { remote: true })
        ));
        assert_eq!(
            out.envelopes(),
            [Envelope::GuestFrame {
                sid: "s".into(),
                guest: 4,
                p: 1,
                frame: data(2),
            }]
        );
        assert_eq!(way.fence(ConnId(2)), 1, "the guest's resume count");
    }

    #[test]
    fn a_guest_s_node_acknowledges_reports_and_asks_for_its_direction() {
        let (bus, mut out) = Bus::detached("guest-node");
        let lane = GuestLane {
            guest: 3,
            to_host: false,
        };
        let p = Pipe::fed_from_peer(limits(), 0, 0, peer(&bus, "h", 3, false));
        actix::System::new().block_on(async {
            struct Sink;
            impl actix::Actor for Sink {
                type Context = actix::Context<Self>;
            }
            impl actix::Handler<crate::pipe::Wake> for Sink {
                type Result = ();
                fn handle(&mut self, _: crate::pipe::Wake, _: &mut actix::Context<Self>) {}
            }
            use actix::Actor as _;
            let rx = Receiver {
                conn: ConnId(1),
                wake: Sink.start().recipient(),
                killer: None,
            };
            p.attach(rx, 0).unwrap();
            assert_eq!(p.push_from_peer(1, data(1)), FromPeer::Queued);
            let mut d = Drained::default();
            p.drain(ConnId(1), 0, &mut d);
            p.ack(d.items.last().unwrap().0);
        });
        let sent = out.envelopes();
        assert!(
            sent.contains(&Envelope::GuestAck {
                sid: "s".into(),
                lane,
                p: 1
            }),
            "{sent:?}"
        );
        assert!(
            sent.iter()
                .all(|e| matches!(e, Envelope::GuestAck { .. } | Envelope::GuestWritten { .. })),
            "{sent:?}"
        );
        // Frame 2 was lost: the gap asks guest 3's direction, once.
        assert!(matches!(p.push_from_peer(3, data(3)), FromPeer::Gap { .. }));
        assert!(matches!(p.push_from_peer(4, data(4)), FromPeer::Gap { .. }));
        assert_eq!(
            out.envelopes(),
            [Envelope::Control(Control::GuestResend {
                sid: "s".into(),
                lane,
                from: 2,
            })]
        );
    }

    /// The host's node died: a guest's way to its host starts, at the node
    /// that rebuilds the room, after the host's own count of the guest's
    /// frames when the pipe can replay from there, else after what the
    /// host acknowledged (frames it read and had not acknowledged come
    /// again); the replay there then holds every frame after it.
    #[test]
    fn a_guest_s_way_to_a_rebuilt_room_starts_after_the_host_s_count() {
        let (bus, mut out) = Bus::detached("guest-node");
        let gate = Gate::new();
        // Five frames sent to the dead node, two of them acknowledged.
        let to_host = Pipe::sending_to_peer(limits(), peer(&bus, "dead", 4, true), 0, 0);
        for n in 1..=5 {
            to_host.push(data(n), &gate);
        }
        to_host.ack_from_peer(2);
        out.envelopes();
        assert_eq!(to_host.rebuilt_host_start(Some(3)), 3);
        for wrong in [None, Some(1), Some(9)] {
            assert_eq!(to_host.rebuilt_host_start(wrong), 2, "{wrong:?}");
        }
        to_host.send_to_peer(peer(&bus, "new", 4, true), 3).unwrap();
        to_host.push(data(6), &gate);
        let sent: Vec<Envelope> = (4..=6)
            .map(|p| Envelope::GuestFrame {
                sid: "s".into(),
                guest: 4,
                p,
                frame: data(p as u8),
            })
            .collect();
        assert_eq!(out.envelopes(), sent);
    }
}
