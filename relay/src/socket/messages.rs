//! The client's control messages: `register`, `join` and `resume` asked of
//! the registry (reading nothing else meanwhile), `ping` and `leave`, and
//! the refusals of anything out of place.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use relay_protocol::{ClientMessage, CloseCode, ErrorCode, Role, ServerMessage};

use super::Socket;
use crate::frame::Frame;
use crate::metrics::DisconnectReason;
use crate::outbound::{Outbound, Target};
use crate::registry::{
    Client, Deadline, Host, Join, Link, Refusal, Register, Registered, Resume, RoomOp, RoomRequest,
};

impl Socket {
    fn client(&self, ctx: &mut Context<Self>) -> Client {
        let addr = ctx.address();
        Client {
            conn: self.id,
            addr: self.addr,
            wake: addr.clone().recipient(),
            commands: addr.recipient(),
            killer: self.killer.clone(),
        }
    }

    /// Asks the registry for a place in a session, reading nothing else from
    /// the client until it answers (so frames sent right after the request
    /// are handled once the socket is in the session). On success, replies
    /// and writes whatever is already queued; on refusal, says why. The
    /// request carries its deadline, set where it is built; the wait for the
    /// answer follows from it (`RegistryHandle`).
    fn ask<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        request: impl Future<Output = Result<T, Refusal>> + 'static,
        accept: fn(T) -> (Link, ServerMessage, Vec<String>),
    ) {
        ctx.wait(
            request
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(v) => {
                        let (link, reply, events) = accept(v);
                        act.linked(link, ctx);
                        act.send(ctx, &reply);
                        for e in events {
                            act.out.text(e);
                        }
                        act.flush(ctx);
                    }
                    Err(r) => {
                        // A person may retype a code: a socket still in its handshake
                        // gets the full handshake time again.
                        if act.handshake_timer.is_some() {
                            act.arm_handshake_timer(ctx);
                        }
                        act.refuse(ctx, r);
                    }
                }),
        );
    }

    /// A room host's `admit`, `deny`, `remove` or `to`. The socket reads
    /// nothing else until the registry answers, so frames after a `remove`
    /// can never reach the removed guest.
    fn on_room_op(&mut self, op: ClientMessage, ctx: &mut Context<Self>) {
        let Some(Outbound::Host(room)) = self.link.as_ref().map(|l| &l.outbound) else {
            self.malformed(
                ctx,
                "admit, deny, remove and to are for a room host (register with maxGuests).",
            );
            return;
        };
        let (op, guest_id) = match op {
            ClientMessage::To { guest_id } => {
                self.target = guest_id.map_or(Target::All, Target::Guest);
                if let Some(id) = guest_id.filter(|&id| !room.has(id)) {
                    // The target is set anyway: frames meant for one guest
                    // must never reach another.
                    let why = format!(
                        "No guest {id} is in the room; data sent to it reaches no one until the next \"to\"."
                    );
                    self.send_error(ctx, ErrorCode::UnknownGuest, Some(&why));
                }
                return;
            }
            ClientMessage::Admit { guest_id } => (RoomOp::Admit, guest_id),
            ClientMessage::Deny { guest_id } => (RoomOp::Deny, guest_id),
            ClientMessage::Remove { guest_id } => (RoomOp::Remove, guest_id),
            _ => return,
        };
        let Some(link) = &self.link else { return };
        let msg = Host {
            session_id: Arc::clone(&link.session_id),
            conn: self.id,
            op,
            guest_id,
        };
        let registry = self.shared.registry.clone();
        ctx.wait(
            async move { registry.host(msg).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    if let Err(r) = res {
                        act.refuse(ctx, r);
                    }
                }),
        );
    }

    pub(super) fn on_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        // Most text frames are data: recognised without building a message.
        if ClientMessage::is_plain_data(&text) {
            self.malformed = 0;
            self.on_data(Frame::Text(text), ctx);
            return;
        }
        let msg = match ClientMessage::parse(&text) {
            Ok(m) => m,
            Err(e) if ClientMessage::has_type(&text, "to") => {
                // A room host's target it meant to change and the relay could
                // not read: frames meant for one guest must reach no other.
                self.target = Target::Nobody;
                let why = format!(
                    "The relay did not understand this \"to\" ({e}); data you send reaches no one until a valid \"to\"."
                );
                self.malformed(ctx, &why);
                return;
            }
            Err(e) => {
                let why = format!(
                    "The relay did not understand this message ({e}). Send a JSON object with a known \"type\"; see PROTOCOL.md."
                );
                self.malformed(ctx, &why);
                return;
            }
        };
        // `to` is part of sending data, never refused for rate: a refused
        // one would leave the frames after it going to the previous target.
        if !matches!(msg, ClientMessage::Data { .. } | ClientMessage::To { .. })
            && !self.within_message_rate()
        {
            self.shared
                .metrics
                .rate_limited
                .with_label_values(&["messages"])
                .inc();
            let why = format!(
                "Too many control messages on this connection; send at most {} a second.",
                self.shared.config.message_rate
            );
            self.misbehaved(ctx, ErrorCode::RateLimited, &why);
            return;
        }
        let in_session = self.link.is_some();
        match (msg, self.role) {
            (ClientMessage::Data { .. }, _) => {
                self.malformed = 0;
                self.on_data(Frame::Text(text), ctx);
            }
            (ClientMessage::Ping { ts }, _) => {
                self.malformed = 0;
                self.send(ctx, &ServerMessage::Pong { ts });
            }
            (ClientMessage::Leave, _) => {
                self.malformed = 0;
                self.left = true;
                self.close(
                    ctx,
                    CloseCode::SessionOver,
                    DisconnectReason::SessionOver,
                    "left",
                );
            }
            (
                ClientMessage::Register { .. }
                | ClientMessage::Join { .. }
                | ClientMessage::Resume { .. },
                _,
            ) if in_session => {
                self.malformed(
                    ctx,
                    "This connection is already in a session; send data, ping or leave.",
                );
            }
            (_, _) if self.shared.is_draining() => self.drain(ctx),
            (
                ClientMessage::Register {
                    client_id,
                    max_guests,
                    admit,
                },
                Role::Mac,
            ) => {
                self.malformed = 0;
                if client_id.as_ref().is_some_and(|id| id.len() > 128) {
                    self.malformed(ctx, "clientId is too long; send at most 128 characters.");
                    return;
                }
                let ceiling = self.shared.config.max_guests;
                let room = match (max_guests, admit) {
                    (None, None) => None,
                    (Some(n), _) if n == 0 || n > ceiling => {
                        let why = format!(
                            "maxGuests must be between 1 and {ceiling} on this relay; ask for a smaller room."
                        );
                        self.malformed(ctx, &why);
                        return;
                    }
                    (n, admit) => Some(RoomRequest {
                        max_guests: n.unwrap_or(1),
                        admit: admit.unwrap_or_default(),
                    }),
                };
                let msg = Register {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    client_id,
                    room,
                };
                let registry = self.shared.registry.clone();
                let accept = move |r: Registered| {
                    let reply = ServerMessage::Registered {
                        code: r.code,
                        expires_at: r.expires_at,
                        session_id: r.link.session_id.to_string(),
                        resume_token: r.resume_token,
                        max_guests: room.map(|r| r.max_guests),
                        admit: room.map(|r| r.admit),
                    };
                    (r.link, reply, Vec::new())
                };
                self.ask(
                    ctx,
                    async move { registry.register(msg).await.map(accept) },
                    |v| v,
                );
            }
            (ClientMessage::Join { code, name }, Role::Browser) => {
                self.malformed = 0;
                if name.as_ref().is_some_and(|n| n.chars().count() > 64) {
                    self.malformed(ctx, "name is too long; send at most 64 characters.");
                    return;
                }
                let msg = Join {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    code,
                    name,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.join(msg).await }, |j| {
                    let reply = match (j.resume_token, j.guest_id) {
                        (Some(resume_token), guest_id) => ServerMessage::Joined {
                            session_id: j.link.session_id.to_string(),
                            resume_token,
                            guest_id,
                        },
                        // `joined` comes through the pipe once the host admits it.
                        (None, guest_id) => ServerMessage::Waiting {
                            guest_id: guest_id.unwrap_or_default(),
                        },
                    };
                    (j.link, reply, Vec::new())
                });
            }
            (
                op @ (ClientMessage::Admit { .. }
                | ClientMessage::Deny { .. }
                | ClientMessage::Remove { .. }
                | ClientMessage::To { .. }),
                _,
            ) => {
                self.malformed = 0;
                self.on_room_op(op, ctx);
            }
            (
                ClientMessage::Resume {
                    session_id,
                    resume_token,
                    last_seq,
                    guest_seqs,
                },
                role,
            ) => {
                self.malformed = 0;
                let msg = Resume {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    role,
                    session_id,
                    resume_token,
                    last_seq,
                    guest_seqs,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.resume(msg).await }, |r| {
                    let reply = ServerMessage::Resumed {
                        session_id: r.link.session_id.to_string(),
                        last_seq: r.accepted,
                    };
                    (r.link, reply, r.events)
                });
            }
            (ClientMessage::Register { .. }, Role::Browser) => {
                self.malformed(
                    ctx,
                    "register is for the Mac (/mac); a browser sends join with the code.",
                );
            }
            (ClientMessage::Join { .. }, Role::Mac) => {
                self.malformed(
                    ctx,
                    "join is for the browser (/browser); the Mac sends register.",
                );
            }
        }
    }
}
