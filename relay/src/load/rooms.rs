//! Rooms for the load tool (the Rooms section of shared/PROTOCOL.md): a host
//! that registers with `maxGuests` and `admit: "auto"`, guests that join with
//! its code, and what a receiver makes of numbered frames and `from` tags.
//! The scenarios that drive them are in `fanout`.

use std::net::IpAddr;

use anyhow::{Context, bail};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{Ws, connect, next_json};

/// One room: its host and its admitted guests.
pub struct Room {
    /// The host's connection.
    pub host: Ws,
    /// Each guest's id (from its `joined`) and connection, in join order.
    pub guests: Vec<(u64, Ws)>,
}

/// Registers a room host on `host_url` for `guests` guests, admitted at
/// once, and joins that many guests, guest `i` on `guest_urls[i % len]`.
///
/// # Errors
/// When the relay refuses the room or a guest, or a connection fails.
pub async fn open(
    host_url: &str,
    guest_urls: &[String],
    guests: usize,
    sources: &[IpAddr],
) -> anyhow::Result<Room> {
    let mut host = connect(host_url, "/mac", sources).await?;
    let register = json!({"type": "register", "maxGuests": guests, "admit": "auto"});
    host.send(Message::text(register.to_string())).await?;
    let reg = next_json(&mut host).await?;
    if reg["type"] != "registered" {
        bail!("{host_url}: a room host's register answered {reg}");
    }
    // A relay that does not know rooms pairs the host with one browser and
    // would quietly measure a pairing: refuse rather than mislabel.
    if reg["maxGuests"].as_u64() != Some(guests as u64) || reg["admit"] != "auto" {
        bail!(
            "{host_url}: no room in the answer to a room register (no rooms on this relay?): {reg}"
        );
    }
    let code = reg["code"]
        .as_str()
        .with_context(|| format!("register answered {reg}"))?
        .to_owned();
    let mut joined = Vec::with_capacity(guests);
    for i in 0..guests {
        let url = &guest_urls[i % guest_urls.len().max(1)];
        let mut ws = connect(url, "/browser", sources).await?;
        let join = json!({"type": "join", "code": code, "name": format!("load-{i}")});
        ws.send(Message::text(join.to_string())).await?;
        let answer = next_json(&mut ws).await?;
        let id = match (answer["type"].as_str(), answer["guestId"].as_u64()) {
            (Some("joined"), Some(id)) => id,
            _ => bail!("{url}: guest {i}'s join answered {answer}"),
        };
        joined.push((id, ws));
    }
    Ok(Room {
        host,
        guests: joined,
    })
}

/// What a receiver saw of one sender's frames, numbered from 1.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// The highest number received in order: every frame up to it arrived
    /// (or was counted lost).
    pub in_order: u64,
    /// Frames that never arrived, or arrived after a later one.
    pub lost: u64,
    /// Frames that arrived again, or late after a later one.
    pub duplicated: u64,
}

impl Order {
    /// Takes frame `seq` in.
    #[inline]
    pub fn see(&mut self, seq: u64) {
        if seq == self.in_order + 1 {
            self.in_order = seq;
        } else if seq > self.in_order {
            self.lost += seq - self.in_order - 1;
            self.in_order = seq;
        } else {
            self.duplicated += 1;
        }
    }

    /// Frames of the `sent` the sender sent that never arrived in order.
    pub fn missing(&self, sent: u64) -> u64 {
        self.lost + sent.saturating_sub(self.in_order)
    }

    /// Whether all `sent` frames arrived once each, in order.
    pub fn complete(&self, sent: u64) -> bool {
        self.missing(sent) == 0 && self.duplicated == 0 && self.in_order == sent
    }
}

/// The guest a host's `{"type":"from","guestId":N}` names, or `None` for any
/// other text. The relay writes it in exactly that form; anything else is
/// read as JSON, so a differently spelled `from` is still understood.
pub fn from_tag(text: &str) -> Option<u64> {
    let exact = text
        .strip_prefix(r#"{"type":"from","guestId":"#)
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|n| n.parse().ok());
    exact.or_else(|| {
        let v: Value = serde_json::from_str(text).ok()?;
        if v["type"] == "from" {
            v["guestId"].as_u64()
        } else {
            None
        }
    })
}

/// Bytes of frames a fan-out host keeps in flight toward its slowest guest
/// by default: enough to keep loopback busy, and with the relay's 64 B of
/// bookkeeping a frame well under its default `RELAY_MAX_BUFFERED` (8 MiB),
/// past which a room guest is cut as a slow consumer.
const WINDOW_BYTES: usize = 2 * 1024 * 1024;

/// The default window of a fan-out host, in frames of `size` bytes.
pub fn default_window(size: usize) -> u64 {
    (WINDOW_BYTES / (size + 64)).clamp(16, 4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_in_order_are_complete() {
        let mut o = Order::default();
        for s in 1..=5 {
            o.see(s);
        }
        assert!(o.complete(5));
        assert_eq!(o.missing(5), 0);
        // Fewer arrived than were sent: the tail counts as missing.
        assert!(!o.complete(7));
        assert_eq!(o.missing(7), 2);
    }

    #[test]
    fn a_gap_counts_lost_and_a_repeat_or_late_frame_duplicated() {
        let mut o = Order::default();
        for s in [1, 2, 5, 3, 5, 6] {
            o.see(s);
        }
        assert_eq!(
            o,
            Order {
                in_order: 6,
                lost: 2,
                duplicated: 2
            }
        );
        assert_eq!(o.missing(6), 2);
        assert!(!o.complete(6));
    }

    #[test]
    fn a_frame_numbered_zero_or_nothing_at_all() {
        let mut o = Order::default();
        assert!(o.complete(0));
        o.see(0);
        assert_eq!(o.duplicated, 1);
        assert!(!o.complete(0));
    }

    #[test]
    fn from_tags_are_read_in_the_relays_form_and_any_other() {
        assert_eq!(from_tag(r#"{"type":"from","guestId":12}"#), Some(12));
        assert_eq!(from_tag(r#"{ "guestId": 3, "type": "from" }"#), Some(3));
        assert_eq!(from_tag(r#"{"type":"guest_joined","guestId":3}"#), None);
        assert_eq!(from_tag(r#"{"type":"from","guestId":-1}"#), None);
        assert_eq!(from_tag("not json"), None);
    }

    #[test]
    fn the_default_window_stays_far_below_the_relays_buffer() {
        assert_eq!(default_window(64), 4096);
        assert_eq!(default_window(1024), 1927);
        assert_eq!(default_window(64 * 1024), 31);
        assert_eq!(default_window(1024 * 1024), 16);
        for size in [16, 64, 1024, 16 * 1024, 64 * 1024] {
            assert!(default_window(size) as usize * (size + 64) <= 4 * 1024 * 1024);
        }
    }
}
