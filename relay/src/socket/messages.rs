//! The client's control messages: `register`, `join` and `resume` asked of
//! the registry (reading nothing else meanwhile), `ping` and `leave`, and
//! the refusals of anything out of place.

use actix::prelude::*;
use actix_web_actors::ws::WebsocketContext;
use bytestring::ByteString;
use relay_protocol::{ClientMessage, CloseCode, ErrorCode, Role, ServerMessage};

use super::Socket;
use crate::frame::Frame;
use crate::metrics::DisconnectReason;
use crate::registry::{Client, Deadline, Join, Link, Refusal, Register, Resume};

impl Socket {
    fn client(&self, ctx: &mut WebsocketContext<Self>) -> Client {
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
        ctx: &mut WebsocketContext<Self>,
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
                            ctx.text(e);
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

    pub(super) fn on_text(&mut self, text: ByteString, ctx: &mut WebsocketContext<Self>) {
        // Most text frames are data: recognised without building a message.
        if ClientMessage::is_plain_data(&text) {
            self.malformed = 0;
            self.on_data(Frame::Text(text), ctx);
            return;
        }
        let msg = match ClientMessage::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                let why = format!(
                    "The relay did not understand this message ({e}). Send a JSON object with a known \"type\"; see PROTOCOL.md."
                );
                self.malformed(ctx, &why);
                return;
            }
        };
        if !matches!(msg, ClientMessage::Data { .. }) && !self.within_message_rate() {
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
            (ClientMessage::Register { client_id }, Role::Mac) => {
                self.malformed = 0;
                if client_id.as_ref().is_some_and(|id| id.len() > 128) {
                    self.malformed(ctx, "clientId is too long; send at most 128 characters.");
                    return;
                }
                let msg = Register {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    client_id,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.register(msg).await }, |r| {
                    let reply = ServerMessage::Registered {
                        code: r.code,
                        expires_at: r.expires_at,
                        session_id: r.link.session_id.to_string(),
                        resume_token: r.resume_token,
                    };
                    (r.link, reply, Vec::new())
                });
            }
            (ClientMessage::Join { code }, Role::Browser) => {
                self.malformed = 0;
                let msg = Join {
                    client: self.client(ctx),
                    deadline: Deadline::for_request(),
                    code,
                };
                let registry = self.shared.registry.clone();
                self.ask(ctx, async move { registry.join(msg).await }, |j| {
                    let reply = ServerMessage::Joined {
                        session_id: j.link.session_id.to_string(),
                        resume_token: j.resume_token,
                    };
                    (j.link, reply, Vec::new())
                });
            }
            (
                ClientMessage::Resume {
                    session_id,
                    resume_token,
                    last_seq,
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
