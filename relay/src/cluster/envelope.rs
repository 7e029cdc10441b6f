//! What nodes say to each other over Redis pub/sub. Frames and acks, the hot
//! path, have a compact binary form; control messages (rare) are JSON. One
//! PUBLISH carries many envelopes, each prefixed by its length.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use relay_protocol::Role;
use serde::{Deserialize, Serialize};

use crate::frame::Frame;

const FRAME: u8 = 1;
const ACK: u8 = 2;
const CONTROL: u8 = 3;
const PROBE: u8 = 4;
const WRITTEN: u8 = 5;

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
    /// Session bookkeeping between registries.
    Control(Control),
    /// A node's probe of its own subscription.
    Probe {
        /// Increasing number of the probe.
        nonce: u64,
    },
}

/// A frame in a [`Control::Handover`], by its pairing number. Control
/// messages are JSON, so a binary payload travels as base64: handovers are
/// rare, and bounded by what one reader may leave unacknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldFrame {
    /// Pairing number.
    pub p: u64,
    /// The frame.
    #[serde(flatten)]
    pub body: HeldBody,
}

/// A [`HeldFrame`]'s payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldBody {
    /// A text frame, verbatim.
    Text(String),
    /// A binary frame, base64 (standard alphabet, padded).
    Binary(String),
}

impl HeldFrame {
    /// The frame numbered `p`, for a handover.
    pub fn new(p: u64, frame: &Frame) -> Self {
        let body = match frame {
            Frame::Text(t) => HeldBody::Text(t.to_string()),
            Frame::Binary(b) => HeldBody::Binary(BASE64.encode(b)),
        };
        HeldFrame { p, body }
    }

    /// The pairing number and frame, or `None` for base64 that does not decode.
    pub fn into_frame(self) -> Option<(u64, Frame)> {
        let frame = match self.body {
            HeldBody::Text(t) => Frame::Text(ByteString::from(t)),
            HeldBody::Binary(b) => Frame::Binary(Bytes::from(BASE64.decode(b).ok()?)),
        };
        Some((self.p, frame))
    }

    /// Bytes it takes in a link's queue.
    pub fn size(&self) -> usize {
        match &self.body {
            HeldBody::Text(s) | HeldBody::Binary(s) => s.len(),
        }
    }
}

/// Why a side ended for good, as told to the peer's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// It sent `leave`.
    Left,
    /// It closed with 1000.
    Closed,
    /// It did not come back in time (grace passed or its buffer overflowed).
    Timeout,
}

/// Registry-to-registry messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// To the mac's node: a browser joined on `node`.
    Joined {
        /// Session id.
        sid: String,
        /// The browser's node.
        node: String,
    },
    /// To the peer's node: side `role` is away (it may resume).
    Away {
        /// Session id.
        sid: String,
        /// The side that went away.
        role: Role,
    },
    /// To the nodes that hold the session: side `role` is now on `node`,
    /// having `p_last` frames of this pairing. Close its old connection,
    /// send it what follows, and answer with [`Control::Handover`].
    Moved {
        /// Session id.
        sid: String,
        /// The side that moved.
        role: Role,
        /// Where it is now.
        node: String,
        /// Frames of the current pairing it has received.
        p_last: u64,
        /// It was away (its peer is told `peer_resumed`), not taken over.
        was_away: bool,
        /// Matches the answer to the request.
        request: u64,
    },
    /// Answer to [`Control::Moved`], to the side's new node.
    Handover {
        /// Session id.
        sid: String,
        /// The side that moved.
        role: Role,
        /// Frames of the moved side its peer received this pairing, if the
        /// peer is on the answering node.
        received: Option<u64>,
        /// Control messages queued for the side while it was away.
        events: Vec<String>,
        /// Frames of the moved side that its peer (on the answering node)
        /// has not acknowledged: the side's new node holds them from now
        /// on, as it holds every frame it sends to the peer, so they
        /// survive the answering node going (a drain, a crash) before the
        /// peer reads them or moves too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unacknowledged: Vec<HeldFrame>,
        /// Why its frames cannot be replayed, if so.
        error: Option<String>,
        /// Matches the request.
        request: u64,
    },
    /// To a sender's node: frames from pairing number `from` on were lost; send them again.
    Resend {
        /// Session id.
        sid: String,
        /// The receiving side.
        to: Role,
        /// First missing pairing number.
        from: u64,
    },
    /// To the peer's node: side `role` ended for good.
    Ended {
        /// Session id.
        sid: String,
        /// The side that ended.
        role: Role,
        /// Why.
        reason: EndReason,
    },
    /// To the mac's node: the code expired with no browser; the session is over.
    CodeExpired {
        /// Session id.
        sid: String,
        /// The code.
        code: String,
    },
    /// To every node: resend what you hold for me (my subscription was down).
    Resync {
        /// The node that missed messages.
        node: String,
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
                let frame = match get_u8(&mut b)? {
                    0 => Frame::Binary(b),
                    1 => Frame::Text(ByteString::try_from(b).ok()?),
                    _ => return None,
                };
                Some(Envelope::Frame { sid, to, p, frame })
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

fn get_u8(b: &mut Bytes) -> Option<u8> {
    b.has_remaining().then(|| b.get_u8())
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_in_one_message() {
        let all = vec![
            Envelope::Frame {
                sid: "s1".into(),
                to: Role::Browser,
                p: 7,
                frame: Frame::Binary(Bytes::from_static(&[0, 1, 255])),
            },
            Envelope::Frame {
                sid: "s1".into(),
                to: Role::Mac,
                p: u64::MAX,
                frame: Frame::Text(r#"{"type":"data","payload":"é"}"#.into()),
            },
            Envelope::Ack {
                sid: "s2".into(),
                to: Role::Mac,
                p: 3,
            },
            Envelope::Written {
                sid: "s2".into(),
                to: Role::Browser,
                p: 9,
            },
            Envelope::Control(Control::Ended {
                sid: "s3".into(),
                role: Role::Browser,
                reason: EndReason::Left,
            }),
            Envelope::Probe { nonce: 42 },
        ];
        let mut buf = BytesMut::new();
        for e in &all {
            e.encode(&mut buf);
        }
        let (back, bad) = Envelope::decode_all(buf.freeze());
        assert_eq!(bad, 0);
        assert_eq!(back, all);
    }

    #[test]
    fn a_handover_carries_unacknowledged_frames_verbatim_binary_as_base64() {
        let frames = [
            (3, Frame::Binary(Bytes::from_static(&[0, 1, 255, b'"']))),
            (4, Frame::Text(r#"{"type":"data","payload":"é\n"}"#.into())),
            (5, Frame::Binary(Bytes::new())),
        ];
        let c = Control::Handover {
            sid: "s".into(),
            role: Role::Browser,
            received: Some(5),
            events: vec![],
            unacknowledged: frames.iter().map(|(p, f)| HeldFrame::new(*p, f)).collect(),
            error: None,
            request: 1,
        };
        let mut buf = BytesMut::new();
        Envelope::Control(c.clone()).encode(&mut buf);
        let (back, bad) = Envelope::decode_all(buf.freeze());
        assert_eq!((bad, back), (0, vec![Envelope::Control(c.clone())]));
        let Control::Handover { unacknowledged, .. } = c else {
            unreachable!()
        };
        let back: Vec<_> = unacknowledged
            .into_iter()
            .map(|h| h.into_frame().expect("decodes"))
            .collect();
        assert_eq!(back, frames);
        // A node that does not know the field reads the rest; one without it is read as none.
        let old = r#"{"type":"handover","sid":"s","role":"mac","received":null,"events":[],"error":null,"request":2}"#;
        let Ok(Control::Handover { unacknowledged, .. }) = serde_json::from_str(old) else {
            panic!("an older node's handover must parse")
        };
        assert!(unacknowledged.is_empty());
        let bad = HeldFrame {
            p: 1,
            body: HeldBody::Binary("not base64!".into()),
        };
        assert_eq!(bad.into_frame(), None);
    }

    #[test]
    fn garbage_is_skipped_not_panicked_on() {
        for junk in [
            &b""[..],
            b"\x00\x00\x00\x05abc",
            b"\x00\x00\x00\x01\x09",
            b"\xff\xff\xff\xff",
        ] {
            let (_, _) = Envelope::decode_all(Bytes::copy_from_slice(junk));
        }
        let (ok, bad) = Envelope::decode_all(Bytes::from_static(b"\x00\x00\x00\x02\x01\x05"));
        assert!(ok.is_empty());
        assert_eq!(bad, 1);
    }
}
