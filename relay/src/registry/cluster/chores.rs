//! The cluster registry's periodic work. Code expiry and grace periods live
//! in Redis sorted sets that every node polls; a script claims each due entry
//! so it fires once cluster-wide, whichever nodes are alive.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::Value;
use relay_protocol::Role;
use tracing::debug;

use super::requests::{field, now_ms};
use super::{ClusterRegistry, REMEMBER_MS};
use crate::cluster::PREFIX;
use crate::cluster::envelope::{Control, EndReason};
use crate::cluster::store::GraceOutcome;
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
        let redis = Arc::clone(&self.redis);
        let now = now_ms();
        let due = async move {
            let mut pipe = ::redis::pipe();
            for set in ["expiries", "grace"] {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(format!("{PREFIX}{set}"))
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(POLL_BATCH);
            }
            redis
                .query::<(Vec<String>, Vec<String>)>("expire", &pipe)
                .await
        };
        ctx.spawn(due.into_actor(self).map(|res, act, ctx| {
            let Ok((codes, graces)) = res else { return };
            for sid in codes {
                act.run_expire(&Arc::from(sid.as_str()), true, ctx);
            }
            for member in graces {
                let Some((sid, role)) = member.split_once('|') else {
                    continue;
                };
                let role = if role == "mac" {
                    Role::Mac
                } else {
                    Role::Browser
                };
                act.run_grace_end(Arc::from(sid), role, ctx);
            }
        }));
    }

    /// Expires a session's code (`claim`: because its timer fired, once
    /// cluster-wide), ending the session if no browser is in it.
    pub(super) fn run_expire(&self, id: &SessionId, claim: bool, ctx: &mut Context<Self>) {
        let redis = Arc::clone(&self.redis);
        let scripts = Arc::clone(&self.scripts);
        let sid = id.to_string();
        let id = Arc::clone(id);
        let run = async move {
            redis
                .query::<Vec<Value>>(
                    "expire",
                    scripts
                        .expire_code
                        .arg(PREFIX)
                        .arg(&sid)
                        .arg(if claim { "1" } else { "0" })
                        .arg(REMEMBER_MS)
                        .arg(REMEMBER_MS),
                )
                .await
        };
        ctx.spawn(run.into_actor(self).map(move |res, act, ctx| {
            let Ok(reply) = res else { return };
            let status = field(&reply, 0);
            // Counted only unjoined ("ended"), so issued → joined → expired is a funnel.
            if claim && status == "ended" {
                act.metrics.codes_expired.inc();
            }
            if status == "ended" {
                let mac_node = field(&reply, 1);
                let code = field(&reply, 3);
                debug!(session = %id, "code expired with no browser");
                if mac_node.is_empty() {
                    return;
                }
                let c = Control::CodeExpired {
                    sid: id.to_string(),
                    code,
                };
                act.send(&Arc::from(mac_node.as_str()), c, ctx);
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
            for n in [facts.node, facts.peer_node].into_iter().flatten() {
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
                            role,
                            conn: *c,
                            how: Departure::Dropped,
                        });
                    }
                }
            }
        }
        for g in dead {
            ctx.notify(g);
        }
        // Receivers fed from other nodes have no local sender to notice a stall.
        for p in self.dir.all() {
            if let Some(conn) = p.cut_if_stalled_receiver() {
                debug!(conn = %conn, "cut a stalled receiver");
            }
        }
        // A failed publish lost envelopes: send again what we hold.
        if self.bus.take_lost() {
            for p in self.dir.all() {
                p.resend_to_peer(0);
            }
        }
    }
}
