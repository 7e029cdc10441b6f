//! The HTTP transport's bodies: parsing what clients send (parse once, at
//! the edge) and the JSON answers, errors included.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::web;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::socket::decode::Inbound;

/// Items in one `send` at most.
pub const MAX_BATCH: usize = 64;

/// A `receive` body at most (it holds two small fields).
pub const RECEIVE_BODY: usize = 4 << 10;

/// A `send` body at most: four frames at the size limit (base64 takes
/// 4/3), plus room for the envelope.
pub fn send_body_limit(max_frame: usize) -> usize {
    max_frame.saturating_mul(4).saturating_add(64 << 10)
}

#[derive(Deserialize)]
struct SendBody {
    batch: u64,
    frames: Vec<ItemIn>,
}

#[derive(Deserialize)]
struct ItemIn {
    text: Option<String>,
    binary: Option<String>,
}

/// A parsed `send`.
pub struct Batch {
    /// Its number, from 1.
    pub number: u64,
    /// Its frames as the socket reads them (an oversized one ends it).
    pub frames: Vec<Inbound>,
}

/// The two ways of receiving.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Server-sent events, many items per answer.
    Stream,
    /// Long poll, one JSON array per answer.
    Poll,
}

/// A parsed `receive`.
#[derive(Deserialize)]
pub struct Receive {
    /// What the client has received, and acknowledges.
    pub after: u64,
    /// How it wants them.
    pub mode: Mode,
}

/// Parses a `send` body; frames over `max_frame` become [`Inbound::TooLarge`],
/// as the WebSocket decoder reports them.
///
/// # Errors
/// A 400 answer saying what is wrong.
pub fn batch(body: &[u8], max_frame: usize) -> Result<Batch, Refused> {
    let parsed: SendBody = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "The body must be {{\"batch\":<n>,\"frames\":[...]}} ({e})."
        ))
    })?;
    if parsed.batch == 0 {
        return Err(bad("Batches are numbered from 1."));
    }
    if parsed.frames.len() > MAX_BATCH {
        return Err(bad(format!(
            "A batch holds at most {MAX_BATCH} frames; send the rest in the next one."
        )));
    }
    let mut frames = Vec::with_capacity(parsed.frames.len());
    for item in parsed.frames {
        let frame = match (item.text, item.binary) {
            (Some(t), None) if t.len() > max_frame => Inbound::TooLarge,
            (Some(t), None) => Inbound::Text(t.into()),
            (None, Some(b)) => {
                let bytes = STANDARD
                    .decode(&b)
                    .or_else(|_| STANDARD_NO_PAD.decode(&b))
                    .map_err(|_| bad("A binary item must be standard base64."))?;
                if bytes.len() > max_frame {
                    Inbound::TooLarge
                } else {
                    Inbound::Binary(Bytes::from(bytes))
                }
            }
            _ => {
                return Err(bad(
                    "Each frame is {\"text\":\"...\"} or {\"binary\":\"<base64>\"}, exactly one of the two.",
                ));
            }
        };
        let too_large = matches!(frame, Inbound::TooLarge);
        frames.push(frame);
        if too_large {
            // Nothing after it is read, as on a WebSocket.
            break;
        }
    }
    Ok(Batch {
        number: parsed.batch,
        frames,
    })
}

/// Parses a `receive` body.
///
/// # Errors
/// A 400 answer saying what is wrong.
pub fn receive(body: &[u8]) -> Result<Receive, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "The body must be {{\"after\":<pos>,\"mode\":\"stream\"|\"poll\"}} ({e})."
        ))
    })
}

/// Reads a request body of at most `limit` bytes.
///
/// # Errors
/// 413 past the limit, 400 when the body breaks off.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, Refused> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| bad("The request body broke off."))?;
        if buf.len() + chunk.len() > limit {
            return Err(Refused::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The body is over {limit} bytes; send fewer or smaller frames per batch."),
                serde_json::json!({}),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A JSON answer.
pub fn ok(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(body.to_string())
}

/// A request refused: its status, a sentence saying what to do, and the
/// extra fields its JSON body carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refused {
    status: u16,
    sentence: String,
    extra: serde_json::Value,
    /// Seconds for `Retry-After`.
    retry_after: Option<u32>,
}

impl Refused {
    /// Refused with `status`; `extra` is a JSON object of more fields.
    pub fn new(status: StatusCode, sentence: impl Into<String>, extra: serde_json::Value) -> Self {
        Refused {
            status: status.as_u16(),
            sentence: sentence.into(),
            extra,
            retry_after: None,
        }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    /// Asks the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The answer: `{"error": sentence}` and the extra fields.
    pub fn response(self) -> HttpResponse {
        let status = self.status();
        let mut body = self.extra;
        if let Some(map) = body.as_object_mut() {
            map.insert("error".to_owned(), self.sentence.into());
        }
        let mut res = HttpResponse::build(status);
        res.content_type("application/json")
            .insert_header(("Cache-Control", "no-store"));
        if let Some(s) = self.retry_after {
            res.insert_header((actix_web::http::header::RETRY_AFTER, s.to_string()));
        }
        res.body(body.to_string())
    }
}

/// A 400 with its sentence.
pub fn bad(sentence: impl Into<String>) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, sentence, serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_kinds_of_item() {
        let b = batch(
            br#"{"batch":3,"frames":[{"text":"a\r\nb"},{"binary":"AAEC/w=="},{"binary":"AAEC/w"}]}"#,
            100,
        )
        .ok()
        .unwrap_or_else(|| panic!("a valid batch"));
        assert_eq!(b.number, 3);
        assert!(matches!(&b.frames[0], Inbound::Text(t) if &**t == "a\r\nb"));
        assert!(matches!(&b.frames[1], Inbound::Binary(x) if x[..] == [0, 1, 2, 255]));
        assert!(matches!(&b.frames[2], Inbound::Binary(x) if x[..] == [0, 1, 2, 255]));
    }

    #[test]
    fn refuses_what_is_not_an_item() {
        for body in [
            &br#"{"batch":1,"frames":[{}]}"#[..],
            br#"{"batch":1,"frames":[{"text":"a","binary":"AA=="}]}"#,
            br#"{"batch":1,"frames":[{"binary":"@@@"}]}"#,
            br#"{"batch":0,"frames":[]}"#,
            br#"{"frames":[]}"#,
            b"not json",
        ] {
            assert!(
                batch(body, 100).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_oversized_frame_ends_the_batch() {
        let b = batch(
            br#"{"batch":1,"frames":[{"text":"abcdef"},{"text":"a"}]}"#,
            4,
        )
        .ok()
        .unwrap_or_else(|| panic!("a valid batch"));
        assert_eq!(b.frames.len(), 1);
        assert!(matches!(b.frames[0], Inbound::TooLarge));
    }
}
