//! `send` and `receive`: a request's frames into its virtual connection and
//! the connection's items out, as a long poll or an event stream. When the
//! connection lives on another node of the cluster (no sticky sessions),
//! the same steps run there and only their results travel (`forward.rs`).

use std::convert::Infallible;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::time::Instant;

use super::forward::Forwarder;
use super::table::Entry;
use super::wire::{self, Mode, Refused};
use super::{Edge, cors, origin};
use crate::socket::{self, Collected, Heard, ReceiveRefused, SendStep, VirtualConn};

/// Bytes of items after which a stream ends, so the client acknowledges
/// them with its next receive.
const STREAM_BYTES: usize = 1 << 20;

/// Items' bytes in one poll answer at most (at least one item).
pub(super) const POLL_BYTES: usize = 1 << 20;

/// Waits until `check` has an answer (it is asked after every change of
/// `conn`) or `deadline` passes.
async fn wait_until<T>(
    conn: &VirtualConn,
    deadline: Instant,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let changed = conn.changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(t) = check() {
            return Some(t);
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(deadline) => return check(),
        }
    }
}

/// The cid a request names.
///
/// # Errors
/// 400 without the header.
fn cid_of(req: &HttpRequest) -> Result<String, Refused> {
    req.headers()
        .get(super::CONNECTION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| wire::bad("Name the connection in the Relay-Connection header."))
}

/// 404: no node holds the connection.
pub(super) fn unknown() -> Refused {
    Refused::new(
        StatusCode::NOT_FOUND,
        "No such connection (it ended long ago, or never was): open a new one and resume.",
        serde_json::json!({}),
    )
}

fn gone(closed: &socket::Closed) -> Refused {
    Refused::new(
        StatusCode::GONE,
        "This connection is closed; act on its close code.",
        serde_json::json!({ "close": closed.code, "reason": closed.reason }),
    )
}

pub(super) async fn send(
    req: HttpRequest,
    body: web::Payload,
    edge: web::Data<Edge>,
) -> HttpResponse {
    let origin = match origin(&req, &edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let res = async {
        let cid = cid_of(&req)?;
        let limit = wire::send_body_limit(edge.config.max_frame);
        // Held while the body is read and parsed: what all sends of the
        // node may hold at once is bounded, however many arrive.
        let budget = edge.body_budget(&req, limit)?;
        let body = wire::read_body(body, limit).await?;
        let local = edge.table.get(&cid);
        edge.count_request("send", local.is_some());
        let n = match local {
            Some(entry) => {
                let batch = wire::batch(&body, edge.config.max_frame)?;
                // Parsed: the frames are the connection's to bound now.
                drop((body, budget));
                apply_batch(&edge, &entry, batch).await?
            }
            None => {
                let sent = Forwarder::of(&edge)?.send(&cid, body).await;
                drop(budget);
                edge.forwarded(sent)?
            }
        };
        Ok(wire::ok(&serde_json::json!({ "batch": n })))
    };
    cors(
        res.await.unwrap_or_else(Refused::response),
        origin.as_deref(),
    )
}

/// Applies a `send` body to a connection of this node: the batch's number
/// once every frame of it was taken.
///
/// # Errors
/// What the protocol refuses (400, 409, 410), or 503 while the batch is
/// still being taken.
pub(super) async fn apply_send(edge: &Edge, entry: &Entry, body: &[u8]) -> Result<u64, Refused> {
    let batch = wire::batch(body, edge.config.max_frame)?;
    apply_batch(edge, entry, batch).await
}

/// Applies a parsed batch to a connection of this node (see [`apply_send`]).
///
/// # Errors
/// As [`apply_send`].
async fn apply_batch(edge: &Edge, entry: &Entry, batch: wire::Batch) -> Result<u64, Refused> {
    let n = batch.number;
    let frames = batch.frames.len() as u64;
    let conn = &entry.conn;
    let step = match conn.send(n, batch.frames) {
        step @ (SendStep::Applying | SendStep::Accepted) => {
            if step == SendStep::Accepted {
                edge.metrics
                    .frames
                    .with_label_values(&["in"])
                    .inc_by(frames);
            }
            let deadline = Instant::now() + edge.wait();
            wait_until(conn, deadline, || conn.taken(n)).await
        }
        step => Some(step),
    };
    match step {
        Some(SendStep::Taken) => Ok(n),
        Some(SendStep::Closed(c)) => Err(gone(&c)),
        Some(SendStep::Refused { expected }) => Err(Refused::new(
            StatusCode::CONFLICT,
            "Not the batch expected next: send that one (one batch at a time).",
            serde_json::json!({ "expected": expected }),
        )),
        Some(SendStep::Applying | SendStep::Accepted) | None => Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The batch is still being taken (the peer is behind); send it again.",
            serde_json::json!({}),
        )
        .retry_after(1)),
    }
}

/// Ends a receive when its answer is done or dropped (the client went).
pub(super) struct ReceiveGuard {
    conn: Arc<VirtualConn>,
    generation: u64,
}

impl Drop for ReceiveGuard {
    fn drop(&mut self) {
        self.conn.receive_ended(self.generation);
    }
}

/// Starts a receive on a connection of this node (acknowledging `after`).
///
/// # Errors
/// 409, 400 or 410 as the protocol says.
pub(super) fn begin_receive(entry: &Entry, after: u64) -> Result<ReceiveGuard, Refused> {
    let receiving = match entry.conn.receive(after) {
        Ok(r) => r,
        Err(ReceiveRefused::Backwards { acked }) => {
            return Err(Refused::new(
                StatusCode::CONFLICT,
                "`after` went back below an earlier acknowledgement.",
                serde_json::json!({ "acked": acked }),
            ));
        }
        Err(ReceiveRefused::Beyond) => {
            return Err(wire::bad("`after` is past the last item sent."));
        }
        Err(ReceiveRefused::Closed(c)) => return Err(gone(&c)),
    };
    entry.actor.do_send(Heard(receiving.marker));
    Ok(ReceiveGuard {
        conn: Arc::clone(&entry.conn),
        generation: receiving.generation,
    })
}

/// Continues the receive of `generation` on a connection of this node (a
/// stream served by another node): the client is still there.
pub(super) fn continue_receive(entry: &Entry, generation: u64) -> ReceiveGuard {
    entry.actor.do_send(Heard(None));
    ReceiveGuard {
        conn: Arc::clone(&entry.conn),
        generation,
    }
}

/// What one collection got: items (maybe none, at the deadline), and
/// whether the receive is over (the close item went, or a newer receive).
pub(super) struct Got {
    pub items: Vec<Bytes>,
    pub over: bool,
}

impl ReceiveGuard {
    /// The generation of this receive.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Waits for items (at most `room` bytes' worth, at least one) until `deadline`.
    pub(super) async fn collect(&self, room: usize, deadline: Instant) -> Got {
        let conn = &self.conn;
        match wait_until(conn, deadline, || conn.collect(self.generation, room)).await {
            Some(Collected::Items(items)) => Got {
                items,
                over: conn.finished(),
            },
            Some(Collected::Over) => Got {
                items: Vec::new(),
                over: true,
            },
            None => Got {
                items: Vec::new(),
                over: false,
            },
        }
    }
}

/// Where a receive's items come from.
enum Source {
    Local(ReceiveGuard),
    /// A connection on another node; its first items already came.
    Remote {
        forwarder: Arc<Forwarder>,
        cid: String,
        generation: u64,
        first: Option<Got>,
    },
}

impl Source {
    async fn next(&mut self, room: usize, deadline: Instant) -> Got {
        match self {
            Source::Local(guard) => guard.collect(room, deadline).await,
            Source::Remote {
                forwarder,
                cid,
                generation,
                first,
            } => match first.take() {
                Some(got) => got,
                None => forwarder
                    .more(cid, *generation, room, deadline)
                    .await
                    .unwrap_or(Got {
                        items: Vec::new(),
                        over: true,
                    }),
            },
        }
    }
}

pub(super) async fn receive(
    req: HttpRequest,
    body: web::Payload,
    edge: web::Data<Edge>,
) -> HttpResponse {
    let origin = match origin(&req, &edge) {
        Ok(o) => o,
        Err(res) => return res.response(),
    };
    let res = async {
        let cid = cid_of(&req)?;
        let body = wire::read_body(body, wire::RECEIVE_BODY).await?;
        let asked = wire::receive(&body)?;
        let deadline = Instant::now() + edge.wait();
        let room = match asked.mode {
            Mode::Poll => POLL_BYTES,
            Mode::Stream => STREAM_BYTES,
        };
        let local = edge.table.get(&cid);
        edge.count_request("receive", local.is_some());
        let source = match local {
            Some(entry) => Source::Local(begin_receive(&entry, asked.after)?),
            None => {
                let forwarder = Forwarder::of(&edge)?;
                // The home collects the first items at once: a poll needs
                // nothing more, a stream carries on with `more`.
                let started = forwarder.receive(&cid, asked.after, room, deadline).await;
                let (generation, got) = edge.forwarded(started)?;
                Source::Remote {
                    forwarder,
                    cid,
                    generation,
                    first: Some(got),
                }
            }
        };
        let out = edge.metrics.frames.with_label_values(&["out"]);
        Ok(match asked.mode {
            Mode::Poll => poll(source, deadline, out),
            Mode::Stream => stream(source, deadline, out),
        })
    };
    cors(
        res.await.unwrap_or_else(Refused::response),
        origin.as_deref(),
    )
}

/// A long poll: the items there are, as soon as there is one, or `[]`.
///
/// The head goes at once and the wait is the body's: once the handler has
/// answered, actix-web lets go of the request (its header map alone is
/// about 6.5 KiB) and of the handler's future, so a waiting poll holds
/// only this body and the HTTP/1 connection (docs/design.md, "The HTTP
/// edge"). The answer is chunked for that; a client reads it whole, and a
/// buffering proxy passes it on whole, as before.
fn poll(source: Source, deadline: Instant, out: IntCounter) -> HttpResponse {
    let answer = futures_util::stream::once(async move {
        let mut source = source;
        let got = source.next(POLL_BYTES, deadline).await;
        out.inc_by(got.items.len() as u64);
        let mut body = BytesMut::from(&b"["[..]);
        for (i, item) in got.items.iter().enumerate() {
            if i > 0 {
                body.put_u8(b',');
            }
            body.extend_from_slice(item);
        }
        body.put_u8(b']');
        Ok::<_, Infallible>(body.freeze())
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .streaming(answer)
}

/// Server-sent events: `: open` at once, then one event per item until the
/// wait, [`STREAM_BYTES`], the close item or a newer receive ends it.
fn stream(source: Source, deadline: Instant, out: IntCounter) -> HttpResponse {
    struct Streaming {
        out: IntCounter,
        source: Source,
        deadline: Instant,
        bytes: usize,
        opened: bool,
        done: bool,
    }
    let start = Streaming {
        out,
        source,
        deadline,
        bytes: 0,
        opened: false,
        done: false,
    };
    let events = futures_util::stream::unfold(start, |mut st| async move {
        if !st.opened {
            st.opened = true;
            return Some((Ok::<_, Infallible>(Bytes::from_static(b": open\n\n")), st));
        }
        if st.done || st.bytes >= STREAM_BYTES || Instant::now() >= st.deadline {
            return None;
        }
        let got = st.source.next(STREAM_BYTES - st.bytes, st.deadline).await;
        st.done = got.over;
        if got.items.is_empty() {
            return None;
        }
        st.out.inc_by(got.items.len() as u64);
        let mut chunk = BytesMut::new();
        for item in &got.items {
            chunk.extend_from_slice(b"data: ");
            chunk.extend_from_slice(item);
            chunk.extend_from_slice(b"\n\n");
        }
        st.bytes += chunk.len();
        Some((Ok(chunk.freeze()), st))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
}
