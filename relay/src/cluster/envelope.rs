//! What nodes say to each other over Redis pub/sub. Frames and acks, the hot
//! path, have a compact binary form; control messages (rare) are JSON. One
//! PUBLISH carries many envelopes, each prefixed by its length.
//!
//! A room's directions (host to one guest, one guest to the host) have
//! kinds of their own, so a pairing's envelopes are the bytes they always
//! were: a host's frame names every guest of the receiving node it is for,
//! with that guest's number, and is published once per node, whatever the
//! number of guests there (docs/design.md, "Rooms across nodes").

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use relay_protocol::{GuestId, Role};
use serde::{Deserialize, Serialize};

use crate::frame::Frame;

mod control;
pub use control::{Control, EndReason, HandedGuest, HeldFrame, RebuiltGuest, Verdict};

const FRAME: u8 = 1;
const ACK: u8 = 2;
const CONTROL: u8 = 3;
const PROBE: u8 = 4;
const WRITTEN: u8 = 5;
const ROOM_FRAME: u8 = 6;
const GUEST_FRAME: u8 = 7;
const GUEST_ACK: u8 = 8;
const GUEST_WRITTEN: u8 = 9;

/// The guest id of a room frame's first lane when that lane carries the
/// host's number of the frame instead (guests are numbered from 1).
const HOST_LANE: GuestId = 0;

/// A room host's frame number as an envelope carries it (0: none).
pub fn host_number(n: u64) -> Option<u64> {
    (n > 0).then_some(n)
}

/// Guests one room frame may name: a room's ceiling (`RELAY_MAX_GUESTS`
/// is at most 1,000), so a malformed count cannot make a decoder allocate.
pub const MAX_ROOM_LANES: usize = 1000;

/// One direction of a room between its host and one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestLane {
    /// The guest.
    pub guest: GuestId,
    /// Toward the host (the guest's frames) or toward the guest.
    pub to_host: bool,
}

/// A direction of a session, as a pipe toward another node names it: a
/// pairing's (toward a role) or a room's (between the host and one guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A pairing's direction toward this side.
    Pair(Role),
    /// A room's direction between its host and one guest.
    Guest(GuestLane),
}

impl From<Role> for Lane {
    fn from(role: Role) -> Self {
        Lane::Pair(role)
    }
}

/// One message between nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// A data frame toward the side `to` of session `sid` (hosted by the
    /// destination node); `p` counts frames of this direction since the pairing.
    Frame {
        /// Session id.
        sid: String,
        /// The receiving side.
        to: Role,
        /// Pairing sequence number of the frame.
        p: u64,
        /// The frame, verbatim.
        frame: Frame,
    },
    /// The side `to` read every frame up to `p` (sent to the sender's node,
    /// which may then forget them).
    Ack {
        /// Session id.
        sid: String,
        /// The receiving side that acknowledged.
        to: Role,
        /// Highest pairing sequence number read.
        p: u64,
    },
    /// The side `to`'s node wrote every frame up to `p` to its socket (sent
    /// to the sender's node for flow control, which must not wait for [`Envelope::Ack`]:
    /// a receiver's acks may queue behind its own paused sending). A node
    /// that does not know this envelope skips it, falling back to acks.
    Written {
        /// Session id.
        sid: String,
        /// The receiving side.
        to: Role,
        /// Highest pairing sequence number written.
        p: u64,
    },
    /// A room host's data frame toward the guests of session `sid` homed
    /// on the destination node: each named with the frame's number in its
    /// own direction. Published once per node, however many guests.
    ///
    /// `host`, the frame's number among the host's frames, is written as a
    /// first lane naming guest 0 (no guest has that id), which a node that
    /// does not know it skips as a guest it does not hold: mixed clusters
    /// keep working, and what a rebuild of the room goes by (the guest's
    /// node keeps the host's number of the last frame it took) comes for
    /// free with the frame.
    RoomFrame {
        /// Session id.
        sid: String,
        /// The frame's number among the host's frames, if the sender said.
        host: Option<u64>,
        /// Each guest it is for, with its number in that guest's direction.
        lanes: Vec<(GuestId, u64)>,
        /// The frame, verbatim.
        frame: Frame,
    },
    /// A room guest's data frame toward its host (homed on the
    /// destination node); `p` counts that guest's frames.
    GuestFrame {
        /// Session id.
        sid: String,
        /// The guest that sent it.
        guest: GuestId,
        /// Its number in the guest's direction.
        p: u64,
        /// The frame, verbatim.
        frame: Frame,
    },
    /// As [`Envelope::Ack`], for one direction of a room.
    GuestAck {
        /// Session id.
        sid: String,
        /// The direction whose receiver read up to `p`.
        lane: GuestLane,
        /// Highest number read.
        p: u64,
    },
    /// As [`Envelope::Written`], for one direction of a room.
    GuestWritten {
        /// Session id.
        sid: String,
        /// The direction whose receiver's node wrote up to `p`.
        lane: GuestLane,
        /// Highest number written.
        p: u64,
    },
    /// Session bookkeeping between registries.
    Control(Control),
    /// A node's probe of its own subscription.
    Probe {
        /// Increasing number of the probe.
        nonce: u64,
    },
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Mac => 0,
        Role::Browser => 1,
    }
}

fn byte_role(b: u8) -> Option<Role> {
    match b {
        0 => Some(Role::Mac),
        1 => Some(Role::Browser),
        _ => None,
    }
}

impl Envelope {
    /// Appends this envelope, length-prefixed, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0); // length, patched below
        match self {
            Envelope::Frame { sid, to, p, frame } => {
                out.put_u8(FRAME);
                put_sid(out, sid);
                out.put_u8(role_byte(*to));
                out.put_u64(*p);
                put_frame(out, frame);
            }
            Envelope::RoomFrame {
                sid,
                host,
                lanes,
                frame,
            } => {
                out.put_u8(ROOM_FRAME);
                put_sid(out, sid);
                // At most MAX_ROOM_LANES lanes, the host's number's included
                // (the publisher merges within that); more, if a caller ever
                // passed them, would be refused by the decoder.
                let marker = usize::from(host.is_some());
                let lanes = &lanes[..lanes.len().min(MAX_ROOM_LANES - marker)];
                out.put_u16((lanes.len() + marker) as u16);
                if let Some(n) = host {
                    out.put_u64(HOST_LANE);
                    out.put_u64(*n);
                }
                for (guest, p) in lanes {
                    out.put_u64(*guest);
                    out.put_u64(*p);
                }
                put_frame(out, frame);
            }
            Envelope::GuestFrame {
                sid,
                guest,
                p,
                frame,
            } => {
                out.put_u8(GUEST_FRAME);
                put_sid(out, sid);
                out.put_u64(*guest);
                out.put_u64(*p);
                put_frame(out, frame);
            }
            Envelope::GuestAck { sid, lane, p } | Envelope::GuestWritten { sid, lane, p } => {
                out.put_u8(if matches!(self, Envelope::GuestAck { .. }) {
                    GUEST_ACK
                } else {
                    GUEST_WRITTEN
                });
                put_sid(out, sid);
                out.put_u64(lane.guest);
                out.put_u8(u8::from(lane.to_host));
                out.put_u64(*p);
            }
            Envelope::Ack { sid, to, p } => {
                out.put_u8(ACK);
                put_sid(out, sid);
                out.put_u8(role_byte(*to));
                out.put_u64(*p);
            }
            Envelope::Written { sid, to, p } => {
                out.put_u8(WRITTEN);
                put_sid(out, sid);
                out.put_u8(role_byte(*to));
                out.put_u64(*p);
            }
            Envelope::Control(c) => {
                out.put_u8(CONTROL);
                // unwrap-free: these types always serialise.
                out.put_slice(&serde_json::to_vec(c).unwrap_or_default());
            }
            Envelope::Probe { nonce } => {
                out.put_u8(PROBE);
                out.put_u64(*nonce);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Reads every envelope of one published message. Malformed ones are
    /// skipped (counted by the caller through the returned error count).
    pub fn decode_all(mut msg: Bytes) -> (Vec<Envelope>, usize) {
        let mut out = Vec::new();
        let mut bad = 0;
        while msg.remaining() >= 4 {
            let len = msg.get_u32() as usize;
            if len > msg.remaining() {
                bad += 1;
                break;
            }
            match Self::decode_one(msg.split_to(len)) {
                Some(e) => out.push(e),
                None => bad += 1,
            }
        }
        if msg.has_remaining() {
            bad += 1;
        }
        (out, bad)
    }

    fn decode_one(mut b: Bytes) -> Option<Envelope> {
        if !b.has_remaining() {
            return None;
        }
        match b.get_u8() {
            FRAME => {
                let sid = get_sid(&mut b)?;
                let to = byte_role(get_u8(&mut b)?)?;
                let p = get_u64(&mut b)?;
                let frame = get_frame(b)?;
                Some(Envelope::Frame { sid, to, p, frame })
            }
            ROOM_FRAME => {
                let sid = get_sid(&mut b)?;
                let n = usize::from(get_u16(&mut b)?);
                if n == 0 || n > MAX_ROOM_LANES || b.remaining() < n * 16 {
                    return None;
                }
                let mut lanes: Vec<(GuestId, u64)> =
                    (0..n).map(|_| (b.get_u64(), b.get_u64())).collect();
                let host = match lanes.first() {
                    Some(&(HOST_LANE, n)) => Some(n),
                    _ => None,
                };
                if host.is_some() {
                    lanes.remove(0);
                    if lanes.is_empty() {
                        return None;
                    }
                }
                let frame = get_frame(b)?;
                Some(Envelope::RoomFrame {
                    sid,
                    host,
                    lanes,
                    frame,
                })
            }
            GUEST_FRAME => {
                let sid = get_sid(&mut b)?;
                let guest = get_u64(&mut b)?;
                let p = get_u64(&mut b)?;
                let frame = get_frame(b)?;
                Some(Envelope::GuestFrame {
                    sid,
                    guest,
                    p,
                    frame,
                })
            }
            kind @ (GUEST_ACK | GUEST_WRITTEN) => {
                let sid = get_sid(&mut b)?;
                let guest = get_u64(&mut b)?;
                let to_host = match get_u8(&mut b)? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                let p = get_u64(&mut b)?;
                let lane = GuestLane { guest, to_host };
                Some(if kind == GUEST_ACK {
                    Envelope::GuestAck { sid, lane, p }
                } else {
                    Envelope::GuestWritten { sid, lane, p }
                })
            }
            kind @ (ACK | WRITTEN) => {
                let sid = get_sid(&mut b)?;
                let to = byte_role(get_u8(&mut b)?)?;
                let p = get_u64(&mut b)?;
                Some(if kind == ACK {
                    Envelope::Ack { sid, to, p }
                } else {
                    Envelope::Written { sid, to, p }
                })
            }
            CONTROL => serde_json::from_slice(&b).ok().map(Envelope::Control),
            PROBE => Some(Envelope::Probe {
                nonce: get_u64(&mut b)?,
            }),
            _ => None,
        }
    }
}

fn put_sid(out: &mut BytesMut, sid: &str) {
    let sid = &sid.as_bytes()[..sid.len().min(255)];
    out.put_u8(sid.len() as u8);
    out.put_slice(sid);
}

fn get_sid(b: &mut Bytes) -> Option<String> {
    let len = get_u8(b)? as usize;
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

fn put_frame(out: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Binary(b) => {
            out.put_u8(0);
            out.put_slice(b);
        }
        Frame::Text(t) => {
            out.put_u8(1);
            out.put_slice(t.as_bytes());
        }
    }
}

/// The rest of an envelope as a frame (its kind byte, then its bytes).
fn get_frame(mut b: Bytes) -> Option<Frame> {
    Some(match get_u8(&mut b)? {
        0 => Frame::Binary(b),
        1 => Frame::Text(ByteString::try_from(b).ok()?),
        _ => return None,
    })
}

fn get_u16(b: &mut Bytes) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}

fn get_u8(b: &mut Bytes) -> Option<u8> {
    b.has_remaining().then(|| b.get_u8())
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

#[cfg(test)]
mod tests;
