//! What a room's guests hear of their host, wherever they are: it went
//! away, came back, or ended (as a pairing's browser hears of its mac).
//!
//! While the host is away with its node alive, the guests' frames keep
//! going to that node, whose pipe toward the host holds them within the
//! away limits, as on one node: nothing needs pointing anywhere when it
//! comes back there.

use std::sync::Arc;

use actix::prelude::*;
use relay_protocol::{CloseCode, ErrorCode, Role, ServerMessage};

use super::super::{ClusterRegistry, Local};
use crate::cluster::envelope::{Control, EndReason};
use crate::outbound::Outbound;
use crate::queue::EventEffect;
use crate::registry::member::Member;
use crate::registry::{Link, Refusal, Resume, Resumed, SessionId};

impl ClusterRegistry {
    /// On the host's node: the host is away; its guests hear
    /// `peer_disconnected`, here and on their nodes.
    pub(in crate::registry::cluster) fn host_away_news(
        &self,
        id: &SessionId,
        ctx: &mut Context<Self>,
    ) {
        let Some(local) = self.sessions.get(id) else {
            return;
        };
        local.tell_guests(&ServerMessage::PeerDisconnected, EventEffect::None);
        for n in local.guest_nodes(&self.node) {
            let c = Control::Away {
                sid: id.to_string(),
                role: Role::Mac,
                node: Some(self.node.to_string()),
            };
            self.send(&n, c, ctx);
        }
    }

    /// On the host's node: the host ended for good; its guests hear
    /// `MAC_DISCONNECTED` and are closed, here and on their nodes.
    pub(in crate::registry::cluster) fn host_ended_news(
        &self,
        local: &Local,
        reason: EndReason,
        ctx: &mut Context<Self>,
    ) {
        for n in local.guest_nodes(&self.node) {
            let c = Control::Ended {
                sid: local.id.to_string(),
                role: Role::Mac,
                reason,
            };
            self.send(&n, c, ctx);
        }
    }

    /// On a guest's node: what the host's node said of the host.
    pub(in crate::registry::cluster) fn guests_hear_of_host(
        &self,
        local: &Local,
        msg: &ServerMessage,
    ) {
        let effect = match msg {
            ServerMessage::Error { .. } => EventEffect::Close(CloseCode::SessionOver),
            _ => EventEffect::None,
        };
        local.tell_guests(msg, effect);
    }

    /// A room host resumed on its own node (the room's state is here):
    /// takes the host's one pipe and its way to the guests over; guests
    /// hear `peer_resumed` if it was away.
    pub(in crate::registry::cluster) fn host_resumed_here(
        &mut self,
        msg: &Resume,
        was_away: bool,
        events: Vec<String>,
        ctx: &mut Context<Self>,
    ) -> Result<Resumed, Refusal> {
        let id: SessionId = Arc::from(msg.session_id.as_str());
        let local = self.sessions.get(&id).ok_or(ErrorCode::ResumeExpired)?;
        let fanout = local
            .room()
            .and_then(|r| r.fanout.clone())
            .ok_or(ErrorCode::ResumeExpired)?;
        let to_host = local.host.to.clone().ok_or(ErrorCode::ResumeExpired)?;
        let outbound = Outbound::Host(fanout);
        // A takeover's old socket may still push: fenced out first.
        let accepted = outbound.fence(msg.client.conn);
        let written = to_host
            .attach(msg.client.receiver(), msg.last_seq)
            .map_err(|g| super::super::requests::gap_refusal(g, msg.last_seq))?;
        if was_away {
            local.tell_guests(&ServerMessage::PeerResumed, EventEffect::None);
            for n in local.guest_nodes(&self.node) {
                let c = Control::Moved {
                    sid: id.to_string(),
                    role: Role::Mac,
                    node: self.node.to_string(),
                    p_last: 0,
                    was_away: true,
                    // No resume waits for what the guests' nodes answer.
                    request: 0,
                };
                self.send(&n, c, ctx);
            }
        }
        tracing::info!(session = %id, last_seq = msg.last_seq, accepted, "room host resumed");
        Ok(Resumed {
            accepted,
            events,
            link: Link {
                session_id: id,
                inbound: to_host,
                outbound,
                member: Member::Host,
                written,
            },
        })
    }

    /// On a guest's node: the room's host is back on `node` (its own:
    /// moving a host elsewhere is not built yet).
    pub(in crate::registry::cluster) fn host_moved_news(
        &mut self,
        id: &SessionId,
        node: &Arc<str>,
        was_away: bool,
    ) {
        let Some(local) = self.sessions.get(id) else {
            return;
        };
        if local.node_of(Role::Mac).is_some_and(|n| n != node) {
            tracing::warn!(session = %id, node = %node, "a room host moved to another node; not handled yet");
        }
        if was_away {
            local.tell_guests(&ServerMessage::PeerResumed, EventEffect::None);
        }
    }
}
