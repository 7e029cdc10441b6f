//! A room whose host's node died, rebuilt where the host resumed
//! (docs/design.md, "Rooms across nodes", Left to build 1). The host's new
//! node asks each node holding guests (`HostRebuild`); this is that node's
//! part: each guest's way to the host goes to the new node, starting after
//! the host's own count of its frames when the host sent one (`guestSeqs`),
//! and the answer (`HostRebuilt`) says where each of its directions stands:
//! what the node took of the host's frames, and the host's number of the
//! last of them.

use std::sync::Arc;

use relay_protocol::{GuestId, Role, ServerMessage};
use tracing::info;

use super::super::ClusterRegistry;
use crate::cluster::envelope::{Control, RebuiltGuest};
use crate::queue::EventEffect;
use crate::registry::SessionId;

impl ClusterRegistry {
    /// On a node holding guests of room `id`: its host's node died and the
    /// host resumed on `node`. Points each named guest held here there and
    /// answers where each stands.
    pub(in crate::registry::cluster) fn host_rebuilt_at(
        &mut self,
        id: &SessionId,
        node: &Arc<str>,
        guests: &[(GuestId, Option<u64>)],
        request: u64,
    ) -> Control {
        let peers: Vec<_> = guests
            .iter()
            .map(|&(g, from)| {
                let to_host = self.guest_peer(id, g, true, node);
                (g, from, to_host, self.guest_peer(id, g, false, node))
            })
            .collect();
        let mut answer = Vec::new();
        if let Some(local) = self.sessions.get_mut(id) {
            local.set_node(Role::Mac, Some(Arc::clone(node)));
            for (g, from, to_host, from_host) in peers {
                let Some(guest) = local.room().and_then(|r| r.guests.get(&g)) else {
                    continue;
                };
                let (Some(out), Some(fed)) = (&guest.out_pipe, &guest.to_guest) else {
                    continue;
                };
                let from = out.send_to_rebuilt_host(to_host, from);
                fed.set_ack_to(Some(from_host));
                let (host_at, took) = fed.host_at();
                answer.push(RebuiltGuest {
                    id: g,
                    took,
                    host_at,
                    from,
                });
                local.tell_guest(g, &ServerMessage::PeerResumed, EventEffect::None);
            }
        }
        info!(session = %id, node = %node, guests = answer.len(), "room host's node died; its guests here now go to its new node");
        Control::HostRebuilt {
            sid: id.to_string(),
            guests: answer,
            request,
        }
    }
}
