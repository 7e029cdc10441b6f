//! The other node of a cross-node direction, as a pipe talks to it: what
//! the pipe hands to the link toward that node.

use std::sync::Arc;

use relay_protocol::Role;

use crate::cluster::bus::Link;
use crate::cluster::envelope::Control;
use crate::frame::Frame;
use crate::gate::Gate;

/// The other node of a cross-node direction, and how to reach it.
#[derive(Clone)]
pub struct Peer {
    /// The link to the node on the other end.
    pub link: Arc<Link>,
    /// The session.
    pub sid: Arc<str>,
    /// The side this pipe delivers to.
    pub to: Role,
}

impl Peer {
    /// The node on the other end.
    pub fn node(&self) -> &Arc<str> {
        self.link.node()
    }

    pub(super) fn frame(&self, p: u64, frame: Frame, gate: &Arc<Gate>) {
        self.link
            .frame(self.sid.to_string(), self.to, p, frame, gate);
    }

    pub(super) fn replay(&self, frames: Vec<(u64, Frame)>) {
        if !frames.is_empty() {
            self.link.replay(&self.sid, self.to, frames);
        }
    }

    #[inline]
    pub(super) fn ack(&self, p: u64, pairing: u64) {
        self.link.ack(self.sid.to_string(), self.to, p, pairing);
    }

    pub(super) fn written(&self, p: u64, pairing: u64) {
        self.link.written(self.sid.to_string(), self.to, p, pairing);
    }

    pub(super) fn resend(&self, from: u64) {
        self.link.control(Control::Resend {
            sid: self.sid.to_string(),
            to: self.to,
            from,
        });
    }
}
