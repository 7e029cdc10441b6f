//! The cluster registry's periodic work. Code expiry and grace periods live
//! in Redis sorted sets that every node polls; a script claims each due entry
//! so it fires once cluster-wide, whichever nodes are alive.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use relay_protocol::{GuestId, GuestLeftReason, Role};
use tracing::debug;

use super::ClusterRegistry;
use super::requests::now_ms;
use crate::cluster::envelope::{Control, EndReason};
use crate::cluster::store::{ExpireOutcome, Expiry, GraceOutcome};
use crate::registry::guessing::note_attack;
use crate::registry::{Departure, Gone, SessionId};

/// How often due code expiries and grace periods are looked for.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Due entries handled per poll.
const POLL_BATCH: usize = 64;

/// How often local chores run (dead sockets, stalled receivers, lost publishes).
const LOCAL_EVERY: Duration = Duration::from_secs(1);

pub(super) fn schedule(_: &mut ClusterRegistry, ctx: &mut Context<ClusterRegistry>) {
    ctx.run_interval(POLL_EVERY, |act, ctx| act.poll_due(ctx));
    ctx.run_interval(LOCAL_EVERY, |act, ctx| act.local_chores(ctx));
}

impl ClusterRegistry {
    fn poll_due(&mut self, ctx: &mut Context<Self>) {
        if !self.redis.is_up() {
            return;
        }
        let store = Arc::clone(&self.store);
        let now = now_ms();
        let due = async move { store.due(now, POLL_BATCH).await };
        ctx.spawn(due.into_actor(self).map(|res, act, ctx| {
            let Ok(due) = res else { return };
            for sid in due.codes {
                act.run_expire(&sid, Expiry::Due, ctx);
            }
            for (sid, role) in due.graces {
                act.run_grace_end(sid, role, ctx);
            }
            for (sid, guest) in due.guest_graces {
                act.run_guest_grace_end(sid, guest, ctx);
            }
        }));
    }

    /// Expires a session's code (see [`Expiry`]), ending the session if no
    /// browser is in it.
    pub(super) fn run_expire(&self, id: &SessionId, why: Expiry, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let id = Arc::clone(id);
        let sid = Arc::clone(&id);
        let run = async move { store.expire_code(&sid, why).await };
        ctx.spawn(run.into_actor(self).map(move |res, act, ctx| {
            let Ok(ExpireOutcome::Ended { mac_node, code }) = res else {
                return;
            };
            // Counted only unjoined (ended), so issued → joined → expired is a funnel.
            if why == Expiry::Due {
                act.metrics.codes_expired.inc();
            }
            debug!(session = %id, "code expired with no browser");
            if let Some(mac_node) = mac_node {
                let c = Control::CodeExpired {
                    sid: id.to_string(),
                    code,
                };
                act.send(&mac_node, c, ctx);
            }
        }));
    }

    /// Ends a side whose grace period passed, if it is still away.
    fn run_grace_end(&self, id: SessionId, role: Role, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(&id);
        let run = async move { store.grace_end(&sid, role).await };
        ctx.spawn(run.into_actor(self).map(move |res, act, ctx| {
            let Ok(GraceOutcome::Ended(facts)) = res else {
                return;
            };
            debug!(session = %id, role = role.as_str(), "grace period over");
            let c = Control::Ended {
                sid: id.to_string(),
                role,
                reason: EndReason::Timeout,
            };
            let mut told = Vec::new();
            // A room host's guests' nodes hear it as a browser's node does.
            let nodes = [facts.node, facts.peer_node].into_iter().flatten();
            for n in nodes.chain(facts.guest_nodes) {
                if !told.contains(&n) {
                    act.send(&n, c.clone(), ctx);
                    told.push(n);
                }
            }
            if role == Role::Browser && !facts.live {
                act.expire_unjoinable(&id, ctx);
            }
        }));
    }

    /// Ends a room guest whose grace period passed, if it is still away:
    /// its host's node tells the host (`guest_left`, `timeout`), its own
    /// node forgets it.
    fn run_guest_grace_end(&self, id: SessionId, guest: GuestId, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let sid = Arc::clone(&id);
        let run = async move { store.grace_end_guest(&sid, guest).await };
        ctx.spawn(run.into_actor(self).map(move |res, act, ctx| {
            let Ok(GraceOutcome::Ended(facts)) = res else {
                return;
            };
            debug!(session = %id, guest, "a guest's grace period is over");
            let c = Control::GuestEnded {
                sid: id.to_string(),
                guest,
                reason: GuestLeftReason::Timeout,
            };
            let mut told = Vec::new();
            for n in [facts.node, facts.peer_node].into_iter().flatten() {
                if !told.contains(&n) {
                    act.send(&n, c.clone(), ctx);
                    told.push(n);
                }
            }
        }));
    }

    /// Reads the cluster's attack flag into the gauge, which register reads
    /// for the length of new codes: one `EXISTS` a second, none per register.
    fn poll_attack(&self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        ctx.spawn(
            async move {
                // Redis down: keep the last known state.
                if let Ok(on) = store.under_attack().await {
                    note_attack(&metrics.under_attack, on);
                }
            }
            .into_actor(self),
        );
    }

    fn local_chores(&mut self, ctx: &mut Context<Self>) {
        // Sockets that died without saying so (see the in-memory registry).
        let mut dead = Vec::new();
        for (id, local) in &self.sessions {
            for role in [Role::Mac, Role::Browser] {
                if let Some(super::Here {
                    conn: Some((c, cmd)),
                }) = local.side(role)
                {
                    if !cmd.connected() {
                        dead.push(Gone {
                            session_id: Arc::clone(id),
                            member: role.into(),
                            conn: *c,
                            how: Departure::Dropped,
                        });
                    }
                }
            }
        }
        // Through the mailbox, behind the socket's own `Gone` (sent as it
        // stopped, before it counted as disconnected): a socket that closed
        // with 1000 must end its side, not leave it away for the grace period.
        let me = ctx.address();
        for g in dead {
            me.do_send(g);
        }
        // Receivers fed from other nodes have no local sender to notice a stall.
        for p in self.dir.all() {
            if let Some(conn) = p.cut_if_stalled_receiver() {
                debug!(conn = %conn, "cut a stalled receiver");
            }
        }
        // Envelopes to some nodes were lost (a failed publish, or replays a
        // full link dropped): send again what we hold for those nodes; not
        // while Redis is down, when every resend would fail again (they are
        // kept for when it is back).
        if !self.redis.is_up() {
            return;
        }
        self.poll_attack(ctx);
        let lost = self.bus.take_lost();
        if !lost.is_empty() {
            for p in self.dir.all() {
                if p.remote_node().is_some_and(|n| lost.contains(&n)) {
                    p.resend_to_peer(0);
                }
            }
        }
    }
}
