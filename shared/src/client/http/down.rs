//! The downlink of a virtual connection: receive requests one after the
//! other, each acknowledging what came before (`after`), as a stream of
//! server-sent events, or as long polls once a stream did not open in
//! time (a proxy that buffers responses). Items reach the connection task
//! once each, in order of `pos`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::wire::{self, Down, Event, Sse};
use super::{Conn, REQUEST_TIMEOUT, Refused, TRIES, describe, refused, retry_delay};
use crate::client::link::LinkError;

/// Longest line or event of a stream: an item holds one frame (at most
/// `RELAY_MAX_FRAME`, 1 MiB by default, as base64 or escaped JSON).
const EVENT_LIMIT: usize = 16 << 20;

/// Where the downlink stands; owned by its task.
struct Downlink {
    conn: Arc<Conn>,
    out: mpsc::Sender<Result<Message, LinkError>>,
    /// The highest `pos` handed to the connection task (what the next
    /// receive acknowledges).
    after: u64,
    buffered: Arc<AtomicBool>,
    open_within: Duration,
}

/// How one receive ended.
enum Received {
    /// Send the next receive.
    Again,
    /// The connection is over (its close, or the task dropped the link).
    Over,
}

/// Receives until the connection is over; the last thing `out` gets is the
/// relay's close, or an error when the path failed.
pub(super) async fn run(
    conn: Arc<Conn>,
    out: mpsc::Sender<Result<Message, LinkError>>,
    buffered: Arc<AtomicBool>,
    open_within: Duration,
) {
    let mut d = Downlink {
        conn,
        out,
        after: 0,
        buffered,
        open_within,
    };
    let mut failed = 0u32;
    loop {
        let r = if d.buffered.load(Ordering::Relaxed) {
            d.poll().await
        } else {
            d.stream().await
        };
        match r {
            Ok(Received::Again) => failed = 0,
            Ok(Received::Over) => return,
            Err(Refused::Over(why)) => {
                let _ = d.out.send(why).await;
                return;
            }
            Err(Refused::Retry(why)) => {
                failed += 1;
                if failed >= TRIES {
                    let _ = d.out.send(Err(LinkError(why))).await;
                    return;
                }
                tokio::time::sleep(retry_delay(failed)).await;
            }
        }
    }
}

impl Downlink {
    /// Sends one receive in `mode`; its answer's head, or why not.
    async fn receive(&self, stream: bool) -> Result<reqwest::Response, Refused> {
        let body = wire::receive_body(self.after, stream);
        let request = self.conn.post(&self.conn.receive_url, body);
        // A stream is timed chunk by chunk: a whole-request timeout would
        // cut one that is working.
        let request = if stream {
            request
        } else {
            request.timeout(REQUEST_TIMEOUT)
        };
        let resp = request
            .send()
            .await
            .map_err(|e| Refused::Retry(describe(&self.conn.receive_url, &e)))?;
        if resp.status().as_u16() == 200 {
            Ok(resp)
        } else {
            Err(refused(resp).await)
        }
    }

    /// One long poll.
    async fn poll(&mut self) -> Result<Received, Refused> {
        let resp = self.receive(false).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| Refused::Retry(describe(&self.conn.receive_url, &e)))?;
        let items =
            wire::parse_poll(&body).map_err(|e| Refused::Over(Err(LinkError(e.to_string()))))?;
        for item in items {
            if let Received::Over = self.deliver(item).await? {
                return Ok(Received::Over);
            }
        }
        Ok(Received::Again)
    }

    /// One stream, read as it comes; a stream whose `: open` does not come
    /// within `open_within` is buffered on the way, and polls take over.
    async fn stream(&mut self) -> Result<Received, Refused> {
        let opened_by = Instant::now() + self.open_within;
        let head = tokio::time::timeout_at(opened_by, self.receive(true)).await;
        let Ok(head) = head else {
            return Ok(self.buffered_path());
        };
        let mut resp = head?;
        let mut sse = Sse::new(EVENT_LIMIT);
        let mut open = false;
        loop {
            let by = if open {
                Instant::now() + REQUEST_TIMEOUT
            } else {
                opened_by
            };
            let chunk = match tokio::time::timeout_at(by, resp.chunk()).await {
                Err(_) if !open => return Ok(self.buffered_path()),
                Err(_) => {
                    return Err(Refused::Retry(format!(
                        "{}: the stream stalled",
                        self.conn.receive_url
                    )));
                }
                Ok(Err(e)) => return Err(Refused::Retry(describe(&self.conn.receive_url, &e))),
                // The relay ended the stream (its wait, or its size): go on.
                Ok(Ok(None)) => return Ok(Received::Again),
                Ok(Ok(Some(c))) => c,
            };
            let events = sse
                .feed(&chunk)
                .map_err(|e| Refused::Over(Err(LinkError(e.to_string()))))?;
            for ev in events {
                match ev {
                    Event::Open => open = true,
                    Event::Data(json) => {
                        let item = wire::parse_item(&json)
                            .map_err(|e| Refused::Over(Err(LinkError(e.to_string()))))?;
                        if let Received::Over = self.deliver(item).await? {
                            return Ok(Received::Over);
                        }
                    }
                }
            }
        }
    }

    /// The stream did not open in time: receive by long polls from now on
    /// (this connection and the client's next ones).
    fn buffered_path(&self) -> Received {
        tracing::debug!(url = %self.conn.receive_url, "receive stream buffered on the way; long polling");
        self.buffered.store(true, Ordering::Relaxed);
        Received::Again
    }

    /// Hands `item` to the connection task once, in order.
    async fn deliver(&mut self, item: Down) -> Result<Received, Refused> {
        if item.pos <= self.after {
            // Sent again after an answer was lost: already handed over.
            return Ok(Received::Again);
        }
        if item.pos != self.after + 1 {
            return Err(Refused::Over(Err(LinkError(format!(
                "the relay skipped from item {} to {}",
                self.after, item.pos
            )))));
        }
        self.after = item.pos;
        let last = matches!(item.frame, Message::Close(_));
        if self.out.send(Ok(item.frame)).await.is_err() || last {
            return Ok(Received::Over);
        }
        Ok(Received::Again)
    }
}
