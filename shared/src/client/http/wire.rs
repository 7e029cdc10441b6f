//! The HTTP transport's bodies (PROTOCOL.md, "HTTP transport"): frames as
//! items, send batches, and the server-sent events of a receive stream.
//! Pure: no I/O, so every reading is tested here.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Items in one send batch at most (the relay's bound).
pub(super) const BATCH_ITEMS: usize = 64;

/// Bytes of encoded items in one batch at most. The relay takes a body of
/// 4 × `RELAY_MAX_FRAME` + 64 KiB; a quarter of its default keeps a batch
/// well inside it whatever the relay's frame limit, and a frame larger than
/// this goes in a batch of its own.
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// One frame as an item of a send batch: `{"text":...}` or `{"binary":...}`.
/// `None` for what is not a frame of the protocol (pings of the WebSocket
/// itself, a close: a virtual connection is closed by the relay only).
pub(super) fn item(m: &Message) -> Option<String> {
    let v = match m {
        Message::Text(t) => serde_json::json!({ "text": t.as_str() }),
        Message::Binary(b) => serde_json::json!({ "binary": STANDARD.encode(b) }),
        _ => return None,
    };
    Some(v.to_string())
}

/// The body of send batch `batch` holding `items` (each from [`item`]).
pub(super) fn batch_body(batch: u64, items: &[String]) -> String {
    let mut body = format!("{{\"batch\":{batch},\"frames\":[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(it);
    }
    body.push_str("]}");
    body
}

/// The body of a receive.
pub(super) fn receive_body(after: u64, stream: bool) -> String {
    let mode = if stream { "stream" } else { "poll" };
    format!("{{\"after\":{after},\"mode\":\"{mode}\"}}")
}

/// A downlink item as the relay sends it.
#[derive(Debug, Deserialize)]
struct RawItem {
    pos: u64,
    text: Option<String>,
    binary: Option<String>,
    close: Option<u16>,
    #[serde(default)]
    reason: String,
}

/// One item from the relay: its position and the frame it carries.
#[derive(Debug, PartialEq)]
pub(super) struct Down {
    /// Its position on the virtual connection (1, 2, ...).
    pub(super) pos: u64,
    /// The frame; a close is the last item of the connection.
    pub(super) frame: Message,
}

/// Why a body from the relay could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable answer from the relay: {0}")]
pub(super) struct Unreadable(String);

fn down(raw: RawItem) -> Result<Down, Unreadable> {
    let frame = match (raw.text, raw.binary, raw.close) {
        (Some(t), None, None) => Message::text(t),
        (None, Some(b), None) => {
            let bytes = STANDARD
                .decode(&b)
                .or_else(|_| STANDARD_NO_PAD.decode(&b))
                .map_err(|e| Unreadable(format!("item {}: {e}", raw.pos)))?;
            Message::Binary(Bytes::from(bytes))
        }
        (None, None, Some(code)) => Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: raw.reason.into(),
        })),
        _ => {
            return Err(Unreadable(format!(
                "item {} is not one of text, binary or close",
                raw.pos
            )));
        }
    };
    Ok(Down {
        pos: raw.pos,
        frame,
    })
}

/// One item, as a stream's event carries it.
pub(super) fn parse_item(json: &str) -> Result<Down, Unreadable> {
    let raw: RawItem = serde_json::from_str(json).map_err(|e| Unreadable(e.to_string()))?;
    down(raw)
}

/// The items of a long poll's answer.
pub(super) fn parse_poll(body: &[u8]) -> Result<Vec<Down>, Unreadable> {
    let raw: Vec<RawItem> = serde_json::from_slice(body).map_err(|e| Unreadable(e.to_string()))?;
    raw.into_iter().map(down).collect()
}

/// The close code and reason of a 410 answer (`{"close":4001,...}`).
pub(super) fn gone(body: &[u8]) -> Option<(u16, String)> {
    #[derive(Deserialize)]
    struct Gone {
        close: u16,
        #[serde(default)]
        reason: String,
    }
    serde_json::from_slice::<Gone>(body)
        .ok()
        .map(|g| (g.close, g.reason))
}

/// The relay's sentence in an answer other than 200, or the status alone.
pub(super) fn error_sentence(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Error {
        error: String,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(e) => format!("HTTP {status}: {}", e.error),
        Err(_) => format!("HTTP {status}"),
    }
}

/// What a stream's bytes said so far.
#[derive(Debug, PartialEq)]
pub(super) enum Event {
    /// The `: open` comment: the path delivers a stream as it goes.
    Open,
    /// The `data` of one event.
    Data(String),
}

/// Reads server-sent events from a stream's chunks, as they come: lines end
/// with `\n`, `\r\n` or `\r`; an event is its `data:` lines joined with
/// `\n`, ended by a blank line; comments (`:`) are skipped but `: open`.
/// The relay writes each item as one line of JSON, so a `\r` inside an item
/// is always escaped and line ends only split events.
#[derive(Debug, Default)]
pub(super) struct Sse {
    /// Bytes of the line not ended yet.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting this one belongs to it.
    after_cr: bool,
    /// `data` of the event being read.
    data: Option<String>,
    /// Longest line or event taken, so a stream that never ends a line
    /// cannot use memory without bound.
    limit: usize,
}

impl Sse {
    /// A reader that takes lines and events up to `limit` bytes.
    pub(super) fn new(limit: usize) -> Sse {
        Sse {
            limit,
            ..Sse::default()
        }
    }

    /// Takes `chunk` and returns the events it completed.
    ///
    /// # Errors
    /// [`Unreadable`] for a line or event over the limit, or not UTF-8.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, Unreadable> {
        let mut out = Vec::new();
        for &b in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, &mut out)?;
                }
                _ => {
                    if self.line.len() >= self.limit {
                        return Err(Unreadable(format!(
                            "a stream line over {} bytes",
                            self.limit
                        )));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), Unreadable> {
        let line = std::str::from_utf8(line)
            .map_err(|_| Unreadable("a stream line is not UTF-8".into()))?;
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(Event::Data(d));
            }
        } else if let Some(comment) = line.strip_prefix(':') {
            if comment.trim() == "open" {
                out.push(Event::Open);
            }
        } else {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            if field == "data" {
                let d = self.data.get_or_insert_with(String::new);
                if !d.is_empty() {
                    d.push('\n');
                }
                if d.len() + value.len() > self.limit {
                    return Err(Unreadable(format!(
                        "a stream event over {} bytes",
                        self.limit
                    )));
                }
                d.push_str(value);
            }
            // Other fields (event, id, retry) mean nothing here.
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_up_as_items_that_keep_every_byte() {
        let text = "{\"type\":\"data\",\"payload\":\"a\\r\\nb \u{e9} \\\"q\\\"\"}";
        let t = item(&Message::text(text)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["text"], text);
        let bytes: Vec<u8> = (0..=255).collect();
        let b = item(&Message::binary(bytes.clone())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            STANDARD.decode(v["binary"].as_str().unwrap()).unwrap(),
            bytes
        );
        assert_eq!(item(&Message::Ping(Bytes::new())), None);
        assert_eq!(
            batch_body(3, &[t.clone(), b.clone()]),
            format!("{{\"batch\":3,\"frames\":[{t},{b}]}}")
        );
        assert_eq!(batch_body(1, &[]), "{\"batch\":1,\"frames\":[]}");
        assert_eq!(receive_body(7, false), "{\"after\":7,\"mode\":\"poll\"}");
    }

    #[test]
    fn items_come_down_as_the_frames_they_carry() {
        let d = parse_item(r#"{"text":"{\"type\":\"pong\",\"ts\":1}","pos":4}"#).unwrap();
        assert_eq!(d.pos, 4);
        assert_eq!(d.frame, Message::text(r#"{"type":"pong","ts":1}"#));
        // With and without padding.
        for b64 in ["AAH/", "AQ==", "AQ"] {
            let d = parse_item(&format!(r#"{{"binary":"{b64}","pos":1}}"#)).unwrap();
            assert!(matches!(d.frame, Message::Binary(_)), "{b64}");
        }
        let d = parse_item(r#"{"close":4001,"reason":"replaced","pos":9}"#).unwrap();
        match d.frame {
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4001);
                assert_eq!(f.reason.as_str(), "replaced");
            }
            other => panic!("{other:?}"),
        }
        let polled = parse_poll(br#"[{"text":"a","pos":1},{"binary":"Yg==","pos":2}]"#).unwrap();
        assert_eq!(polled.len(), 2);
        assert_eq!(parse_poll(b"[]").unwrap(), vec![]);
    }

    #[test]
    fn odd_items_are_refused_not_guessed() {
        for bad in [
            r#"{"pos":1}"#,
            r#"{"text":"a","binary":"AA==","pos":1}"#,
            r#"{"binary":"***","pos":1}"#,
            r#"{"text":"a"}"#,
            r#"{"text":1,"pos":1}"#,
            "not json",
        ] {
            assert!(parse_item(bad).is_err(), "{bad}");
        }
        assert!(parse_poll(b"{}").is_err());
    }

    #[test]
    fn answers_other_than_200_are_read_for_a_person() {
        assert_eq!(
            gone(br#"{"error":"closed","close":4001,"reason":"replaced"}"#),
            Some((4001, "replaced".into()))
        );
        assert_eq!(gone(b"<html>"), None);
        assert_eq!(
            error_sentence(503, br#"{"error":"retry the batch"}"#),
            "HTTP 503: retry the batch"
        );
        assert_eq!(error_sentence(502, b"Bad Gateway"), "HTTP 502");
    }

    #[test]
    fn a_stream_is_read_across_chunks_and_line_ends() {
        let mut sse = Sse::new(1024);
        let mut got = Vec::new();
        // Split everywhere, including between \r and \n.
        let stream = ": open\r\n\r\ndata: {\"text\":\"a\",\"pos\":1}\r\n\r\n: keep\n\ndata: x\ndata: y\r\rdata:z\n\n";
        for b in stream.as_bytes() {
            got.extend(sse.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(
            got,
            vec![
                Event::Open,
                Event::Data("{\"text\":\"a\",\"pos\":1}".into()),
                Event::Data("x\ny".into()),
                Event::Data("z".into()),
            ]
        );
        // All at once, the same.
        let mut whole = Sse::new(1024);
        assert_eq!(whole.feed(stream.as_bytes()).unwrap(), got);
    }

    #[test]
    fn a_stream_that_never_ends_a_line_is_cut() {
        let mut sse = Sse::new(16);
        assert!(sse.feed(&[b'a'; 17]).is_err());
        let mut sse = Sse::new(16);
        assert!(sse.feed(b"data: 0123456789\ndata: 0123456789\n").is_err());
        let mut sse = Sse::new(16);
        assert!(sse.feed(b"data: \xff\n").is_err());
    }
}
