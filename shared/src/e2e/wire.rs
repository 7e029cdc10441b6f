//! The bytes of `relay-e2e/1` on the wire: handshake messages (JSON in a
//! `data` payload) and sealed frames (binary). Decoding is strict: these
//! parsers read what a hostile peer or relay may have written.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The protocol's version string, in every handshake message.
pub const VERSION: &str = "relay-e2e/1";
/// First byte of every sealed frame (and its associated data).
pub const SEALED_VERSION: u8 = 0x01;

/// What a host's `hello` says to a person whose client does not speak
/// `relay-e2e/1` and shows the payload as it is.
pub const HELLO_NOTE: &str = "This session is end-to-end encrypted: join with a client that \
     supports it, using the whole code (with the part after the dash).";

/// Why a side gives up the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The peer's confirmation tag did not verify: wrong secret, or a guesser.
    Mismatch,
    /// The joiner was given only the relay code of an encrypted session.
    NoSecret,
    /// The peer's message was not a valid `relay-e2e/1` message.
    Invalid,
    /// The peer did not answer in time.
    Timeout,
}

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The host's first message.
    HostHello {
        /// CPace's `sid`.
        sid: [u8; 16],
        /// `Ya`.
        share: [u8; 32],
    },
    /// The joiner's answer.
    JoinerHello {
        /// `Yb`.
        share: [u8; 32],
    },
    /// Key confirmation.
    Confirm {
        /// `HMAC-SHA-512(confirm key, transcript)`.
        tag: [u8; 64],
    },
    /// The sender gave up.
    Abort(AbortReason),
}

/// What a `data` payload is, read as `relay-e2e/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Not a `relay-e2e/1` message at all (application text).
    Other,
    /// A `relay-e2e/1` message that does not decode: abort `invalid`.
    Invalid(String),
    /// A well-formed message.
    Handshake(Handshake),
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    e2e: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    share: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn bytes<const N: usize>(field: &str, v: Option<&str>) -> Result<[u8; N], String> {
    let v = v.ok_or_else(|| format!("{field} is missing"))?;
    let b = URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("{field} is not unpadded base64url"))?;
    b.try_into()
        .map_err(|b: Vec<u8>| format!("{field} has {} bytes, not {N}", b.len()))
}

impl Payload {
    /// Reads a `data` payload. A payload that is not a JSON object with an
    /// `e2e` field is [`Payload::Other`].
    pub fn parse(payload: &str) -> Self {
        // Cheap refusal of ordinary text before any JSON work.
        if !payload.trim_start().starts_with('{') {
            return Payload::Other;
        }
        let Ok(raw) = serde_json::from_str::<Raw>(payload) else {
            // Not an object with `e2e`: application text, unless it tried.
            return match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(payload)
            {
                Ok(m) if m.contains_key("e2e") => {
                    Payload::Invalid("a field has the wrong type".into())
                }
                _ => Payload::Other,
            };
        };
        match Self::read(raw) {
            Ok(h) => Payload::Handshake(h),
            Err(e) => Payload::Invalid(e),
        }
    }

    fn read(raw: Raw) -> Result<Handshake, String> {
        if raw.e2e.as_str() != Some(VERSION) {
            return Err(format!("version {} is not {VERSION}", raw.e2e));
        }
        match raw.step.as_deref() {
            Some("hello") => {
                let share = bytes("share", raw.share.as_deref())?;
                match raw.sid {
                    Some(sid) => Ok(Handshake::HostHello {
                        sid: bytes("sid", Some(&sid))?,
                        share,
                    }),
                    None => Ok(Handshake::JoinerHello { share }),
                }
            }
            Some("confirm") => Ok(Handshake::Confirm {
                tag: bytes("tag", raw.tag.as_deref())?,
            }),
            Some("abort") => {
                let reason = raw.reason.ok_or("reason is missing")?;
                serde_json::from_value(reason)
                    .map(Handshake::Abort)
                    .map_err(|_| "unknown abort reason".to_owned())
            }
            Some(s) => Err(format!("unknown step {s:?}")),
            None => Err("step is missing".into()),
        }
    }
}

impl Handshake {
    /// The `data` payload carrying this message.
    pub fn to_payload(&self) -> String {
        let mut raw = Raw {
            e2e: VERSION.into(),
            step: None,
            sid: None,
            share: None,
            tag: None,
            reason: None,
            note: None,
        };
        match self {
            Handshake::HostHello { sid, share } => {
                raw.step = Some("hello".into());
                raw.sid = Some(URL_SAFE_NO_PAD.encode(sid));
                raw.share = Some(URL_SAFE_NO_PAD.encode(share));
                raw.note = Some(HELLO_NOTE.into());
            }
            Handshake::JoinerHello { share } => {
                raw.step = Some("hello".into());
                raw.share = Some(URL_SAFE_NO_PAD.encode(share));
            }
            Handshake::Confirm { tag } => {
                raw.step = Some("confirm".into());
                raw.tag = Some(URL_SAFE_NO_PAD.encode(tag));
            }
            Handshake::Abort(r) => {
                raw.step = Some("abort".into());
                raw.reason = Some(serde_json::to_value(r).unwrap_or_default());
            }
        }
        // unwrap_or_default: a struct of strings always serialises.
        serde_json::to_string(&raw).unwrap_or_default()
    }
}

/// What a sealed frame carries once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plain {
    /// Application text.
    Text(String),
    /// Application bytes.
    Binary(Vec<u8>),
    /// The sender is leaving; nothing follows.
    End,
}

const KIND_TEXT: u8 = 0x01;
const KIND_BINARY: u8 = 0x02;
const KIND_END: u8 = 0x03;

impl Plain {
    /// `kind || body`, the plaintext to seal.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, &[u8]) = match self {
            Plain::Text(t) => (KIND_TEXT, t.as_bytes()),
            Plain::Binary(b) => (KIND_BINARY, b),
            Plain::End => (KIND_END, &[]),
        };
        let mut v = Vec::with_capacity(1 + body.len());
        v.push(kind);
        v.extend_from_slice(body);
        v
    }

    /// Reads an opened plaintext.
    ///
    /// # Errors
    /// A sentence when the kind is unknown, text is not UTF-8, or `end` has a body.
    pub fn decode(mut plain: Vec<u8>) -> Result<Self, String> {
        let Some(&kind) = plain.first() else {
            return Err("an empty plaintext".into());
        };
        plain.remove(0);
        match kind {
            KIND_TEXT => String::from_utf8(plain)
                .map(Plain::Text)
                .map_err(|_| "text that is not UTF-8".into()),
            KIND_BINARY => Ok(Plain::Binary(plain)),
            KIND_END if plain.is_empty() => Ok(Plain::End),
            KIND_END => Err("an end frame with a body".into()),
            k => Err(format!("unknown kind {k:#04x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_message_reads_back() {
        for h in [
            Handshake::HostHello {
                sid: [1; 16],
                share: [2; 32],
            },
            Handshake::JoinerHello { share: [3; 32] },
            Handshake::Confirm { tag: [4; 64] },
            Handshake::Abort(AbortReason::Mismatch),
            Handshake::Abort(AbortReason::NoSecret),
        ] {
            assert_eq!(Payload::parse(&h.to_payload()), Payload::Handshake(h));
        }
    }

    #[test]
    fn application_text_is_other() {
        for t in [
            "hello",
            "",
            "{}",
            "{\"type\":\"x\"}",
            "[1]",
            "{not json",
            "{\"E2E\":1}",
        ] {
            assert_eq!(Payload::parse(t), Payload::Other, "{t}");
        }
    }

    #[test]
    fn broken_messages_are_invalid() {
        for t in [
            r#"{"e2e":"relay-e2e/2","step":"hello","share":"AA"}"#,
            r#"{"e2e":1}"#,
            r#"{"e2e":"relay-e2e/1"}"#,
            r#"{"e2e":"relay-e2e/1","step":"dance"}"#,
            r#"{"e2e":"relay-e2e/1","step":"hello"}"#,
            r#"{"e2e":"relay-e2e/1","step":"hello","share":"AAAA"}"#,
            r#"{"e2e":"relay-e2e/1","step":"hello","share":"!!"}"#,
            r#"{"e2e":"relay-e2e/1","step":"confirm","tag":"AAAA"}"#,
            r#"{"e2e":"relay-e2e/1","step":"abort","reason":"bored"}"#,
            r#"{"e2e":"relay-e2e/1","step":"abort"}"#,
            r#"{"e2e":"relay-e2e/1","step":7}"#,
        ] {
            assert!(matches!(Payload::parse(t), Payload::Invalid(_)), "{t}");
        }
    }

    #[test]
    fn plaintexts_read_back_and_bad_ones_are_refused() {
        for p in [
            Plain::Text("hé".into()),
            Plain::Binary(vec![0, 255]),
            Plain::Binary(vec![]),
            Plain::End,
        ] {
            assert_eq!(Plain::decode(p.encode()).unwrap(), p);
        }
        assert!(Plain::decode(vec![]).is_err());
        assert!(Plain::decode(vec![KIND_TEXT, 0xff]).is_err());
        assert!(Plain::decode(vec![KIND_END, 0]).is_err());
        assert!(Plain::decode(vec![9]).is_err());
    }
}
