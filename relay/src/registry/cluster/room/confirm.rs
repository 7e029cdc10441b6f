//! When a guest's node does not confirm a host's decision (docs/design.md,
//! "Rooms across nodes", `Host`): the decision stands in Redis, so the
//! host's node goes on, holds an admitted guest's frames as for a guest
//! away, and asks again a bounded number of times; a guest's node that
//! hears no answer for a waiting guest denies it itself. Never a guest
//! hears or reaches a room its own node has not admitted it to.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use relay_protocol::{ErrorCode, GuestId, GuestLeftReason};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::super::{ClusterRegistry, HANDOVER_WAIT};
use crate::cluster::envelope::{Control, Verdict};
use crate::cluster::store::Holder;
use crate::conns::{ConnCommand, ConnId};
use crate::registry::SessionId;

/// How long the host's node waits, past the first [`HANDOVER_WAIT`], before
/// it asks a guest's node again about a decision it has not confirmed: a
/// message lost on pub/sub is lost for good, and a node whose subscription
/// broke takes about two probes (2 s) to listen again.
const DECIDE_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// How many times the host's node asks again before it gives up on a
/// guest's node: 8 s past the first wait, four times what a live node
/// needs to resubscribe.
pub(super) const DECIDE_TRIES: u32 = 8;

/// How long past `RELAY_ADMIT_TIMEOUT` a guest's node waits for the host's
/// answer before it denies a waiting guest itself: the host's node's first
/// wait and every time it asks again, and a second to spare.
const WAITING_SLACK: Duration = Duration::from_secs(
    HANDOVER_WAIT.as_secs() + DECIDE_AGAIN_EVERY.as_secs() * (DECIDE_TRIES as u64 + 1),
);

impl ClusterRegistry {
    /// On a guest's node with the host elsewhere: guest `guest` (connection
    /// `conn`) waits for the host. The host's node denies it after
    /// `RELAY_ADMIT_TIMEOUT` and asks this node until it confirms; should
    /// none of that reach this node (its subscription broke for longer, or
    /// the host's node died), the guest is cut here once that time and the
    /// asking are over ([`WAITING_SLACK`] later): ended in Redis (whatever
    /// the host decided meanwhile: this guest never got its token), `DENIED`
    /// as on one node, and the host's node told.
    pub(in crate::registry::cluster) fn arm_wait_bound(
        &self,
        sid: &SessionId,
        guest: GuestId,
        conn: ConnId,
        ctx: &mut Context<Self>,
    ) {
        let sid = Arc::clone(sid);
        ctx.run_later(
            self.settings.admit_timeout + WAITING_SLACK,
            move |act, ctx| {
                act.waited_too_long(sid, guest, conn, ctx);
            },
        );
    }

    fn waited_too_long(
        &mut self,
        sid: SessionId,
        guest: GuestId,
        conn: ConnId,
        ctx: &mut Context<Self>,
    ) {
        let Some(local) = self.sessions.get_mut(&sid) else {
            return;
        };
        if local.hosts_room() {
            return; // the host came here: its own timer answers
        }
        let Some(g) = local.room_mut().and_then(|r| r.guests.get_mut(&guest)) else {
            return;
        };
        let same_conn = g
            .here
            .as_ref()
            .and_then(|h| h.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        if g.admitted || !same_conn {
            return;
        }
        warn!(session = %sid, guest, "no answer to a guest's join reached its node; denying it here");
        if let Some((_, c)) = g.here.take().and_then(|h| h.conn) {
            c.do_send(ConnCommand::Ended(ErrorCode::Denied));
        }
        let store = Arc::clone(&self.store);
        let id = Arc::clone(&sid);
        let end = async move { store.end_guest(&id, guest, Holder::Conn(conn)).await };
        ctx.spawn(end.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = &res {
                warn!(session = %sid, guest, error = %e, "could not end the guest in Redis; ending it here");
            }
            act.guest_ended_here(&sid, guest, GuestLeftReason::Timeout, ctx);
        }));
    }

    /// Tells guest `guest`'s node `node` of the host's decision (`Decide`);
    /// returns the request and what fires when the node confirms.
    pub(super) fn tell_decision(
        &mut self,
        sid: &SessionId,
        guest: GuestId,
        verdict: Verdict,
        node: &Arc<str>,
        ctx: &mut Context<Self>,
    ) -> (u64, oneshot::Receiver<()>) {
        let request = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        self.deciding.insert(request, tx);
        let c = Control::Decide {
            sid: sid.to_string(),
            guest,
            verdict,
            request,
        };
        self.send(node, c, ctx);
        (request, rx)
    }

    /// The guest's node has not confirmed decision `request` (its `Decide`
    /// or our `Decided` lost, or the node slow): in [`DECIDE_AGAIN_EVERY`]
    /// ask again if it still has not (its entry in `deciding` is still
    /// there), `tries` times at most. A node that never confirms an
    /// admission leaves a guest that never got its token: it ends
    /// (`guest_left`, `timeout`), as a guest away too long does. (A node
    /// that dies is reaped by its lease, and its guests with it.)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ask_again(
        &mut self,
        sid: SessionId,
        guest: GuestId,
        verdict: Verdict,
        node: Arc<str>,
        request: u64,
        tries: u32,
        ctx: &mut Context<Self>,
    ) {
        ctx.run_later(DECIDE_AGAIN_EVERY, move |act, ctx| {
            if !act.deciding.contains_key(&request) {
                return; // confirmed
            }
            let still_there = act
                .sessions
                .get(&sid)
                .filter(|l| l.hosts_room())
                .and_then(|l| l.room())
                .and_then(|r| r.guests.get(&guest))
                .is_some_and(|g| *g.node == *node && !g.away);
            if verdict == Verdict::Admit && !still_there {
                // It left, moved or ended meanwhile: its node answered
                // that. Or it is away (its node died, say): whether it got
                // its token died with that node, so its grace period
                // decides, as for any guest away.
                act.deciding.remove(&request);
                return;
            }
            if tries == 0 {
                act.deciding.remove(&request);
                warn!(session = %sid, guest, node = %node, ?verdict, "the guest's node never confirmed the host's decision");
                if verdict == Verdict::Admit {
                    act.end_guest_at_host(sid, guest, "its node never confirmed its admission", ctx);
                }
                return;
            }
            let c = Control::Decide {
                sid: sid.to_string(),
                guest,
                verdict,
                request,
            };
            act.send(&node, c, ctx);
            act.ask_again(sid, guest, verdict, node, request, tries - 1, ctx);
        });
    }

    /// On the host's node: guest `guest` is admitted but its node has not
    /// confirmed, and drops whatever is published to it until it does: its
    /// direction holds the host's frames as for a guest away, within the
    /// away limits (past them it ends, as one away too long does).
    pub(super) fn hold_unconfirmed(&self, sid: &SessionId, guest: GuestId) {
        let pipe = self
            .sessions
            .get(sid)
            .and_then(|l| l.room())
            .and_then(|r| r.guests.get(&guest))
            .and_then(|g| g.to_guest.clone());
        if let Some(p) = pipe {
            p.peer_away();
        }
    }

    /// On the host's node: guest `guest`'s node confirmed the host's
    /// decision after the host's node went on without it. An admitted
    /// guest's direction, held meanwhile, goes to its node from the first
    /// frame (the node took none before the admission).
    pub(in crate::registry::cluster) fn confirmed_late(&mut self, sid: &SessionId, guest: GuestId) {
        let Some(g) = self
            .sessions
            .get(sid)
            .filter(|l| l.hosts_room())
            .and_then(|l| l.room())
            .and_then(|r| r.guests.get(&guest))
        else {
            return; // denied, removed or gone meanwhile
        };
        if !g.admitted || g.away || g.here.is_some() {
            return;
        }
        let (node, pipe) = (Arc::clone(&g.node), g.to_guest.clone());
        let peer = self.guest_peer(sid, guest, false, &node);
        if let Some(Err(gap)) = pipe.map(|p| p.send_to_peer(peer, 0)) {
            // Its held frames overflowed meanwhile: it ends on its own.
            warn!(session = %sid, guest, ?gap, "a late-confirmed guest's frames cannot be replayed");
        }
        info!(session = %sid, guest, node = %node, "guest's node confirmed late");
    }
}
