//! The socket's own I/O, run inside its actor: the frames it writes
//! ([`Out`]), and the pump that writes them, reads the client's bytes while
//! the gate is open and hands each decoded item to the actor.
//!
//! Memory is the point: a connection holds a read buffer only while a frame
//! is half read, and a write buffer only while bytes wait for the socket.
//! Every socket of a worker reads into the worker's one scratch buffer
//! (`io.rs`).

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Socket;
use super::io::Io;
use super::virtual_conn::VirtualConn;

/// Unwritten bytes past which the socket leaves its pipe undrained until
/// the client reads: the pipe then holds the frames, and its flow control
/// pauses the sender (see docs/design.md, "Bounded everywhere").
pub(super) const WRITE_HIGH: usize = 64 << 10;

/// Items handed to the actor in one poll before it lets other work run.
const READ_BUDGET: u32 = 64;

/// How long a closed connection may take to read its last frames and close
/// its end before it is dropped.
const LINGER: Duration = Duration::from_secs(2);

/// The frames a socket has yet to write to its client: the seam between
/// the actor and its edge, a WebSocket or a virtual connection (HTTP).
#[derive(Default)]
pub struct Out {
    buf: RefCell<BytesMut>,
    /// A close frame is queued: nothing more is written.
    closed: Cell<bool>,
    /// Set for a virtual connection: frames go to it, not to `buf`.
    pub(super) conn: Option<Arc<VirtualConn>>,
}

impl Out {
    /// The frames of a virtual connection.
    pub(super) fn virtual_conn(conn: Arc<VirtualConn>) -> Self {
        Out {
            conn: Some(conn),
            ..Out::default()
        }
    }

    /// Queues bytes for the pump to write. Everything that writes runs in
    /// a message handler (heartbeats included, `beat.rs`), a finished
    /// `ctx.wait` or the pump itself, and actix polls the pump after each of
    /// those in the same turn, so no wake-up is needed; the actor's own
    /// timers only close, and a stopping actor writes on its way out.
    fn queue(&self, write: impl FnOnce(&mut BytesMut)) {
        if !self.closed.get() {
            write(&mut self.buf.borrow_mut());
        }
    }

    /// Makes room for `more` bytes at once, so a batch is not copied as
    /// the buffer grows.
    pub fn reserve(&self, more: usize) {
        self.buf.borrow_mut().reserve(more);
    }

    fn message(&self, payload: &[u8], op: OpCode) {
        if let Some(conn) = &self.conn {
            return conn.write(payload, op);
        }
        self.queue(|b| Parser::write_message(b, payload, op, true, false));
    }

    /// A text frame.
    pub fn text(&self, text: impl AsRef<[u8]>) {
        self.message(text.as_ref(), OpCode::Text);
    }

    /// A binary frame.
    pub fn binary(&self, data: impl AsRef<[u8]>) {
        self.message(data.as_ref(), OpCode::Binary);
    }

    /// A ping.
    pub fn ping(&self, payload: &[u8]) {
        self.message(payload, OpCode::Ping);
    }

    /// A pong.
    pub fn pong(&self, payload: &[u8]) {
        self.message(payload, OpCode::Pong);
    }

    /// The close frame, the last one written.
    pub fn close(&self, reason: Option<CloseReason>) {
        if let Some(conn) = &self.conn {
            let (code, text) = reason.map_or((1005, None), |r| (r.code.into(), r.description));
            conn.close(code, text.as_deref().unwrap_or(""));
            self.closed.set(true);
            return;
        }
        self.queue(|b| Parser::write_close(b, reason, false));
        self.closed.set(true);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        if let Some(conn) = &self.conn {
            return conn.unsent();
        }
        self.buf.borrow().len()
    }

    /// Writes what it can; `Err` when the connection is lost.
    fn write_to(&self, io: &mut Io, cx: &mut TaskContext<'_>) -> Result<(), ()> {
        let mut buf = self.buf.borrow_mut();
        while !buf.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, &buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(n)) => buf.advance(n),
                Poll::Pending => return Ok(()),
            }
        }
        // TLS holds records until flushed; plain TCP has nothing to flush.
        if let Poll::Ready(Err(_)) = Pin::new(&mut *io).poll_flush(cx) {
            return Err(());
        }
        if buf.capacity() > 0 {
            *buf = BytesMut::new();
        }
        Ok(())
    }

    fn take(&self) -> BytesMut {
        std::mem::take(&mut *self.buf.borrow_mut())
    }
}

/// Runs a socket's I/O inside its actor's context (`ctx.spawn(Pump)`).
pub(super) struct Pump;

impl ActorFuture<Socket> for Pump {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Socket,
        ctx: &mut Context<Socket>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        act.pump(ctx, cx)
    }
}

impl Socket {
    fn pump(&mut self, ctx: &mut Context<Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.killer.as_ref().is_some_and(|k| k.poll_cut(cx)) {
            // Cut: the connection goes now, without a close frame.
            self.io = None;
            ctx.stop();
            return Poll::Ready(());
        }
        if let Some(conn) = self.out.conn.clone() {
            return self.pump_virtual(&conn, ctx, cx);
        }
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(());
        };
        if self.out.write_to(io, cx).is_err() {
            return self.lost(ctx);
        }
        if self.held && self.out.len() < WRITE_HIGH {
            // The client read: what waits in the pipe can follow.
            self.held = false;
            self.flush(ctx);
        }
        let mut budget = READ_BUDGET;
        loop {
            if ctx.waiting() || ctx.state().stopping() || self.frames.is_done() {
                break;
            }
            if self.gate.poll_open(cx).is_pending() {
                break;
            }
            if let Some(item) = self.frames.next() {
                self.on_inbound(item, ctx);
                budget -= 1;
                if budget == 0 {
                    cx.waker().wake_by_ref();
                    break;
                }
                continue;
            }
            let Some(io) = self.io.as_mut() else { break };
            let frames = &mut self.frames;
            let read = match frames.spare() {
                Some(buf) => io.poll_read_into(cx, buf),
                None => io.poll_read_with(cx, |bytes| frames.extend(bytes)),
            };
            if let Poll::Ready(Ok(n)) = read {
                frames.filled(n);
            }
            match read {
                // The client closed its side: stop, still writing what is
                // queued (a reply, a close frame) on the way out.
                Poll::Ready(Ok(0)) => {
                    ctx.stop();
                    return Poll::Ready(());
                }
                // Reset or broken: nothing more can be written either.
                Poll::Ready(Err(_)) => return self.lost(ctx),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    self.frames.release();
                    break;
                }
            }
        }
        if ctx.state().stopping() {
            return Poll::Ready(());
        }
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(());
        };
        if self.out.write_to(io, cx).is_err() {
            return self.lost(ctx);
        }
        if self.held && self.out.len() < WRITE_HIGH {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// The connection is gone: nothing more can be written.
    fn lost(&mut self, ctx: &mut Context<Self>) -> Poll<()> {
        self.io = None;
        ctx.stop();
        Poll::Ready(())
    }

    /// Hands the connection, with whatever is still unwritten (the close
    /// frame, usually), to a short task that writes it, closes this end and
    /// waits for the client to close its own, for at most [`LINGER`].
    pub(super) fn retire(&mut self) {
        if let Some(conn) = &self.out.conn {
            // Stopped without a close (cut, say): an abnormal drop.
            conn.lost();
        }
        let Some(mut io) = self.io.take() else { return };
        let mut out = self.out.take();
        // Write what the socket takes now: a draining node exits as soon as
        // its last socket stopped, before a new task would run, and the
        // client must still get its SHUTTING_DOWN and close frame.
        let mut now = TaskContext::from_waker(Waker::noop());
        while !out.is_empty() {
            match Pin::new(&mut io).poll_write(&mut now, &out) {
                Poll::Ready(Ok(n)) if n > 0 => out.advance(n),
                _ => break,
            }
        }
        let _ = Pin::new(&mut io).poll_flush(&mut now);
        // A draining node waits for this (at most LINGER): a client that
        // was not reading when told to go still gets its close frame once it
        // reads again, instead of a reset when the process exits.
        let closing = self.shared.conns.closing();
        actix::spawn(async move {
            let _closing = closing;
            let _ = tokio::time::timeout(LINGER, async move {
                io.write_all(&out).await?;
                io.shutdown().await?;
                // Read to the end, so unread bytes do not turn the close
                // into a reset that could cost the client our close frame.
                let mut rest = [0u8; 512];
                while io.read(&mut rest).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
        });
    }
}
