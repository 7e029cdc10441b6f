//! Reads WebSocket frames off the request body with backpressure: bytes are
//! pulled from the connection only when no whole frame is buffered, so a
//! client that floods cannot grow the node's memory. Reassembles fragmented
//! messages within the frame limit and checks text is UTF-8.
//!
//! actix-web-actors' own reader drains the body into an unbounded buffer;
//! this one replaces it (the socket actor adds it with `ctx.add_stream`).

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;

use crate::gate::Gate;

/// One thing read from a client.
#[derive(Debug)]
pub enum Inbound {
    /// A whole text message, valid UTF-8.
    Text(ByteString),
    /// A whole binary message.
    Binary(Bytes),
    /// A text message that is not UTF-8; the connection can go on.
    BadUtf8,
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// The client closes.
    Close(Option<CloseReason>),
    /// A message over the size limit; nothing more is read.
    TooLarge,
    /// Framing the relay cannot read past; nothing more is read.
    Broken(ProtocolError),
}

/// A message being reassembled from fragments.
struct Partial {
    text: bool,
    buf: BytesMut,
}

/// The stream of [`Inbound`] items of one connection.
pub struct Frames<S> {
    body: S,
    /// Closed while the peer is behind: nothing more is read from the client.
    gate: std::sync::Arc<Gate>,
    codec: Codec,
    buf: BytesMut,
    max: usize,
    partial: Option<Partial>,
    /// The body ended; decode what is buffered, then end.
    eof: bool,
    /// An error ended the stream.
    done: bool,
}

impl<S> Frames<S> {
    /// Reads frames of at most `max` bytes (whole messages too) from
    /// `body`, while `gate` is open.
    pub fn new(body: S, max: usize, gate: std::sync::Arc<Gate>) -> Self {
        Frames {
            body,
            gate,
            codec: Codec::new().max_size(max),
            buf: BytesMut::new(),
            max,
            partial: None,
            eof: false,
            done: false,
        }
    }

    fn whole(text: bool, data: Bytes) -> Inbound {
        if text {
            match ByteString::try_from(data) {
                Ok(s) => Inbound::Text(s),
                Err(_) => Inbound::BadUtf8,
            }
        } else {
            Inbound::Binary(data)
        }
    }

    /// Turns a decoded frame into an item, or `None` while a fragmented
    /// message is still incomplete.
    fn assemble(&mut self, frame: Frame) -> Option<Inbound> {
        Some(match frame {
            Frame::Text(b) => Self::whole(true, b),
            Frame::Binary(b) => Self::whole(false, b),
            Frame::Ping(b) => Inbound::Ping(b),
            Frame::Pong(b) => Inbound::Pong(b),
            Frame::Close(r) => Inbound::Close(r),
            Frame::Continuation(item) => match item {
                Item::FirstText(b) => {
                    self.partial = Some(Partial {
                        text: true,
                        buf: BytesMut::from(&b[..]),
                    });
                    return None;
                }
                Item::FirstBinary(b) => {
                    self.partial = Some(Partial {
                        text: false,
                        buf: BytesMut::from(&b[..]),
                    });
                    return None;
                }
                item @ (Item::Continue(_) | Item::Last(_)) => {
                    let (last, b) = match item {
                        Item::Last(b) => (true, b),
                        Item::Continue(b) | Item::FirstText(b) | Item::FirstBinary(b) => (false, b),
                    };
                    // The codec refuses a continuation without a first frame.
                    let p = self.partial.as_mut()?;
                    if p.buf.len() + b.len() > self.max {
                        self.done = true;
                        self.partial = None;
                        return Some(Inbound::TooLarge);
                    }
                    p.buf.extend_from_slice(&b);
                    if !last {
                        return None;
                    }
                    let p = self.partial.take()?;
                    Self::whole(p.text, p.buf.freeze())
                }
            },
        })
    }
}

/// The payload length the next frame's header announces, once enough of the
/// header is buffered.
fn announced_len(buf: &[u8]) -> Option<u64> {
    let len7 = buf.get(1)? & 0x7f;
    match len7 {
        126 => Some(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as u64),
        127 => Some(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => Some(n as u64),
    }
}

impl<S, E> Stream for Frames<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.gate.poll_open(cx).is_pending() {
            return Poll::Pending;
        }
        loop {
            // actix's parser only reports an oversized frame once all of it
            // is buffered; refuse it from its header instead.
            if announced_len(&this.buf).is_some_and(|len| len > this.max as u64) {
                this.done = true;
                return Poll::Ready(Some(Inbound::TooLarge));
            }
            match this.codec.decode(&mut this.buf) {
                Err(ProtocolError::Overflow) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::TooLarge));
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::Broken(e)));
                }
                Ok(Some(frame)) => {
                    if let Some(item) = this.assemble(frame) {
                        return Poll::Ready(Some(item));
                    }
                    if this.done {
                        return Poll::Ready(None);
                    }
                }
                Ok(None) if this.eof => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => match Pin::new(&mut this.body).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                    // A body error is the connection dropping: end the stream.
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.eof = true,
                    Poll::Pending => {
                        // Most of a node's connections wait most of the time:
                        // they hold no buffer while they wait.
                        if this.buf.is_empty() && this.buf.capacity() > 0 {
                            this.buf = BytesMut::new();
                        }
                        return Poll::Pending;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use futures_util::stream;

    use super::*;

    /// A client frame: FIN flag, opcode, masked payload.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(bytes: Vec<u8>, chunk: usize, max: usize) -> Vec<Inbound> {
        let chunks: Vec<Result<Bytes, ()>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let frames = Frames::new(stream::iter(chunks), max, Gate::new());
        actix::System::new().block_on(frames.collect())
    }

    #[test]
    fn whole_and_fragmented_messages() {
        let mut wire = frame(true, 1, b"hello");
        wire.extend(frame(false, 1, b"frag"));
        wire.extend(frame(true, 9, b"p")); // a ping between fragments is allowed
        wire.extend(frame(false, 0, b"men"));
        wire.extend(frame(true, 0, b"ted"));
        wire.extend(frame(true, 2, &[0, 255]));
        for chunk in [1, 3, 1000] {
            let items = read_all(wire.clone(), chunk, 1024);
            assert!(
                matches!(&items[0], Inbound::Text(t) if t == "hello"),
                "{items:?}"
            );
            assert!(matches!(&items[1], Inbound::Ping(p) if &p[..] == b"p"));
            assert!(matches!(&items[2], Inbound::Text(t) if t == "fragmented"));
            assert!(matches!(&items[3], Inbound::Binary(b) if b[..] == [0, 255]));
            assert_eq!(items.len(), 4);
        }
    }

    #[test]
    fn invalid_utf8_is_reported_and_reading_goes_on() {
        let mut wire = frame(true, 1, &[0xff, 0xfe]);
        wire.extend(frame(true, 1, b"ok"));
        let items = read_all(wire, 1000, 1024);
        assert!(matches!(items[0], Inbound::BadUtf8));
        assert!(matches!(&items[1], Inbound::Text(t) if t == "ok"));
    }

    #[test]
    fn oversized_frames_and_messages_end_the_stream() {
        let items = read_all(frame(true, 2, &[0; 2000]), 1000, 1024);
        assert!(matches!(items[..], [Inbound::TooLarge]), "{items:?}");

        let mut wire = frame(false, 2, &[0; 600]);
        wire.extend(frame(true, 0, &[0; 600]));
        wire.extend(frame(true, 1, b"never read"));
        let items = read_all(wire, 1000, 1024);
        assert!(matches!(items[..], [Inbound::TooLarge]), "{items:?}");
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        // Only the header of a 1 TiB frame: refused without waiting for the body.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let items = read_all(header, 3, 1024);
        assert!(matches!(items[..], [Inbound::TooLarge]), "{items:?}");
    }

    #[test]
    fn unmasked_frames_break_the_stream() {
        let items = read_all(vec![0x81, 0x02, b'h', b'i'], 1000, 1024);
        assert!(
            matches!(items[..], [Inbound::Broken(ProtocolError::UnmaskedFrame)]),
            "{items:?}"
        );
    }
}
