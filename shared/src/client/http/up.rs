//! The uplink of a virtual connection: the frames the connection task
//! writes, sent in numbered batches, one at a time, each retried until the
//! relay took it. A retried batch is never applied twice (the relay knows
//! its number), so a lost answer costs a request, never a frame.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::wire::{self, BATCH_BYTES, BATCH_ITEMS};
use super::{Conn, REQUEST_TIMEOUT, Refused, TRIES, close, describe, refused, retry_delay};
use crate::client::link::LinkError;

/// Close code of a frame the relay's body limit cannot take, as a
/// WebSocket relay closes on a frame over its limit.
const TOO_LARGE: u16 = 1009;

/// Sends what `frames` brings until it closes or the connection is over;
/// then tells the downlink's reader through `down` why, when it is news.
pub(super) async fn run(
    conn: Arc<Conn>,
    mut frames: mpsc::Receiver<Message>,
    down: mpsc::Sender<Result<Message, LinkError>>,
) {
    // Owned by this task: items taken from `frames`, not yet taken by the
    // relay, oldest first (at most a batch and one more frame).
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut batch = 0u64;
    // Shrinks when the relay's body limit is smaller than the default's.
    let mut budget = BATCH_BYTES;
    let mut closing = false;
    loop {
        if pending.is_empty() {
            if closing {
                return;
            }
            match frames.recv().await {
                None => return,
                Some(m) => take(m, &mut pending, &mut closing),
            }
        }
        while pending.len() < BATCH_ITEMS && !closing {
            match frames.try_recv() {
                Ok(m) => take(m, &mut pending, &mut closing),
                Err(_) => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        batch += 1;
        loop {
            let n = fitting(&pending, budget);
            let items: Vec<String> = pending.iter().take(n).cloned().collect();
            match send(&conn, batch, &items).await {
                Sent::Taken => {
                    pending.drain(..n);
                    break;
                }
                Sent::TooLarge if n > 1 => budget = (budget / 2).max(1),
                Sent::TooLarge => {
                    let _ = down.send(Ok(close(TOO_LARGE, String::new()))).await;
                    return;
                }
                Sent::Over(why) => {
                    let _ = down.send(why).await;
                    return;
                }
            }
        }
    }
}

/// Queues frame `m` as an item; a close ends the uplink once what came
/// before it was sent (the relay closes a virtual connection itself).
fn take(m: Message, pending: &mut VecDeque<String>, closing: &mut bool) {
    match wire::item(&m) {
        Some(it) => pending.push_back(it),
        None => *closing |= matches!(m, Message::Close(_)),
    }
}

/// How many of the first items make one batch: up to [`BATCH_ITEMS`] and
/// `budget` bytes, and always at least one.
fn fitting(pending: &VecDeque<String>, budget: usize) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for it in pending.iter().take(BATCH_ITEMS) {
        if n > 0 && bytes + it.len() > budget {
            break;
        }
        bytes += it.len();
        n += 1;
    }
    n
}

enum Sent {
    Taken,
    /// 413: nothing of the batch was applied.
    TooLarge,
    Over(Result<Message, LinkError>),
}

/// Sends batch `batch` until the relay answers it: again after a lost
/// answer, a 503 (not taken within the wait) or a network error.
async fn send(conn: &Conn, batch: u64, items: &[String]) -> Sent {
    let body = wire::batch_body(batch, items);
    let mut failed = 0u32;
    loop {
        let resp = conn
            .post(&conn.send_url, body.clone())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let why = match resp {
            Ok(r) if r.status().as_u16() == 200 => return Sent::Taken,
            Ok(r) if r.status().as_u16() == 413 => return Sent::TooLarge,
            // The relay is holding the frames back (flow control): that is
            // the WebSocket's full socket buffer, not a failure.
            Ok(r) if r.status().as_u16() == 503 && retry_after(&r).is_some() => {
                let wait = retry_after(&r).unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
                continue;
            }
            Ok(r) => match refused(r).await {
                Refused::Over(why) => return Sent::Over(why),
                Refused::Retry(why) => why,
            },
            Err(e) => describe(&conn.send_url, &e),
        };
        failed += 1;
        if failed >= TRIES {
            return Sent::Over(Err(LinkError(why)));
        }
        tokio::time::sleep(retry_delay(failed)).await;
    }
}

/// The relay's `Retry-After` (seconds), capped so a path that says
/// something odd cannot stall the uplink.
fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_what_fits_and_at_least_one() {
        let items: VecDeque<String> = ["aaaa", "bb", "cccccc", "d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(fitting(&items, 100), 4);
        assert_eq!(fitting(&items, 6), 2);
        assert_eq!(fitting(&items, 1), 1);
        let many: VecDeque<String> = (0..200).map(|_| "x".to_string()).collect();
        assert_eq!(fitting(&many, usize::MAX), BATCH_ITEMS);
        assert_eq!(fitting(&VecDeque::new(), 10), 0);
    }

    #[test]
    fn a_close_stops_the_uplink_after_what_came_before() {
        let mut pending = VecDeque::new();
        let mut closing = false;
        take(Message::text("a"), &mut pending, &mut closing);
        take(Message::Close(None), &mut pending, &mut closing);
        assert_eq!(pending.len(), 1);
        assert!(closing);
        take(
            Message::Ping(Default::default()),
            &mut pending,
            &mut closing,
        );
        assert_eq!(pending.len(), 1);
    }
}
