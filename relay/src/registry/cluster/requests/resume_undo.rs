//! A resume that cannot finish after the script moved the side here: the
//! side stays homed here but away, its grace period running.

use actix::prelude::*;
use relay_protocol::{Role, ServerMessage};
use tracing::warn;

use super::super::{ClusterRegistry, Here};
use crate::cluster::envelope::Control;
use crate::cluster::store::ResumeFacts;
use crate::conns::ConnId;
use crate::queue::EventEffect;
use crate::registry::{Resume, SessionId};

impl ClusterRegistry {
    /// A resume that moved the side here, and told the other nodes so, did
    /// not commit in time. The side stays homed here but away, as if its new
    /// connection had dropped as it attached: its grace period runs, its
    /// peer hears `peer_disconnected` (a peer on another node first heard
    /// `peer_resumed` from the move, unless the side had been connected),
    /// and it can resume again, here or anywhere. Nothing is undone if the
    /// side is no longer this resume's (a resume elsewhere took it).
    pub(in crate::registry::cluster) fn abandon_resume(
        &mut self,
        id: &SessionId,
        role: Role,
        conn: ConnId,
        facts: &ResumeFacts,
        ctx: &mut Context<Self>,
    ) {
        let Some(local) = self.sessions.get_mut(id) else {
            return;
        };
        if local
            .side(role)
            .and_then(|h| h.conn.as_ref())
            .map(|(c, _)| *c)
            != Some(conn)
        {
            return;
        }
        local.set_side(role, Some(Here { conn: None }));
        if let Some(p) = local.pipe(role) {
            if p.remote_node().is_some() {
                // Toward the side's old node, which gave it up: hold frames
                // within the away limits instead.
                p.peer_away();
            } else if let Some(old) = facts.old_conn {
                // A takeover here replaced the old connection, which never
                // says it is gone.
                p.detach(old);
            }
        }
        match local.node_of(role.peer()).cloned() {
            Some(peer_node) => {
                let c = Control::Away {
                    sid: id.to_string(),
                    role,
                    node: Some(self.node.to_string()),
                };
                self.send(&peer_node, c, ctx);
            }
            // A peer here heard nothing of a takeover; of a side that was
            // away it heard `peer_disconnected` already.
            None if !facts.was_away() => local.tell(
                role.peer(),
                &ServerMessage::PeerDisconnected,
                EventEffect::None,
            ),
            None => {}
        }
        warn!(session = %id, role = role.as_str(), conn = %conn, "resume not committed by its deadline; the side is away");
        self.mark_away(id, role, conn, ctx);
    }

    /// A resume failed after the script moved the side here (its peer's
    /// node cannot replay what it lacks): mark it away again so its grace
    /// period runs. A side that was connected (a takeover, its old
    /// connection now closed) is away news to its peer, told by the peer's
    /// node as for any side that drops; one that was away stays so, and its
    /// peer, who heard `peer_disconnected` already, hears nothing more.
    pub(super) fn side_lost(
        &mut self,
        id: &SessionId,
        role: Role,
        msg: &Resume,
        facts: &ResumeFacts,
        ctx: &mut Context<Self>,
    ) {
        let peer_node = self
            .sessions
            .get(id)
            .and_then(|l| l.node_of(role.peer()).cloned());
        if let Some(n) = peer_node.filter(|_| !facts.was_away()) {
            let c = Control::Away {
                sid: id.to_string(),
                role,
                node: Some(self.node.to_string()),
            };
            self.send(&n, c, ctx);
        }
        if let Some(local) = self.sessions.get_mut(id) {
            local.set_side(role, None);
        }
        self.forget_if_empty(id);
        self.mark_away(id, role, msg.client.conn, ctx);
    }
}
