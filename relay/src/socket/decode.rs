//! Turns the bytes a client sent into [`Inbound`] items: frames decoded by
//! actix-http's WebSocket codec, fragmented messages reassembled within the
//! frame limit, text checked to be UTF-8. No I/O here: the socket's pump
//! (`pump.rs`) reads bytes only while no whole frame is buffered, so a client
//! that floods cannot grow the node's memory, and hands them in.

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

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

/// The decoder of one connection: what it read and has not handed out yet.
pub struct Frames {
    codec: Codec,
    /// Bytes read and not yet decoded: empty, holding no allocation, while
    /// no frame is in flight.
    buf: BytesMut,
    max: usize,
    partial: Option<Partial>,
    /// An oversized or broken frame ended the stream: nothing more is decoded.
    done: bool,
    /// The last read was large: the client is streaming (see [`Frames::spare`]).
    streaming: bool,
}

/// A read at least this large says the client is streaming frames.
const STREAMING: usize = 16 << 10;

/// Room made for one read straight into the buffer: what the worker's
/// scratch buffer takes (`io.rs`).
const READ_ROOM: usize = 64 << 10;

impl Frames {
    /// Decodes frames of at most `max` bytes (whole messages too).
    pub fn new(max: usize) -> Self {
        Frames {
            codec: Codec::new().max_size(max),
            buf: BytesMut::new(),
            max,
            partial: None,
            done: false,
            streaming: false,
        }
    }

    /// Whether an error ended the stream.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Where the next read goes, when not through the worker's scratch
    /// buffer: this connection's own buffer, with room made for a read,
    /// while the client streams frames and one is half read (the buffer is
    /// held then anyway). Read there, a frame is copied once less; a
    /// connection that sends a little at a time never gets the room.
    pub fn spare(&mut self) -> Option<&mut BytesMut> {
        if !self.streaming || self.buf.is_empty() {
            return None;
        }
        let rest_of_frame = frame_total_len(&self.buf)
            .filter(|&t| t <= self.max.saturating_add(MAX_HEADER))
            .map_or(0, |t| t.saturating_sub(self.buf.len()));
        self.buf.reserve(rest_of_frame.max(READ_ROOM));
        Some(&mut self.buf)
    }

    /// `n` bytes were read into [`Frames::spare`].
    pub fn filled(&mut self, n: usize) {
        self.streaming = n >= STREAMING;
    }

    /// Takes bytes read from the client.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.streaming = bytes.len() >= STREAMING;
        // Room for the whole frame these bytes start, once its header is
        // here, so a large frame is not copied again as the buffer grows.
        if self.buf.is_empty() {
            let whole =
                frame_total_len(bytes).filter(|&t| t <= self.max.saturating_add(MAX_HEADER));
            self.buf.reserve(whole.unwrap_or(0).max(bytes.len()));
            self.buf.extend_from_slice(bytes);
            return;
        }
        self.buf.extend_from_slice(bytes);
        if let Some(total) = frame_total_len(&self.buf) {
            if total <= self.max.saturating_add(MAX_HEADER) && total > self.buf.len() {
                self.buf.reserve(total - self.buf.len());
            }
        }
    }

    /// Gives back the buffer's memory once everything in it was decoded:
    /// most of a node's connections wait most of the time, holding nothing.
    pub fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// The next item from what was read, or `None` until more bytes come
    /// (or after the stream ended).
    pub fn next(&mut self) -> Option<Inbound> {
        while !self.done {
            // actix's parser only reports an oversized frame once all of it
            // is buffered; refuse it from its header instead.
            if announced_len(&self.buf).is_some_and(|len| len > self.max as u64) {
                self.done = true;
                return Some(Inbound::TooLarge);
            }
            match self.codec.decode(&mut self.buf) {
                Err(ProtocolError::Overflow) => {
                    self.done = true;
                    return Some(Inbound::TooLarge);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Inbound::Broken(e));
                }
                Ok(Some(frame)) => {
                    if let Some(item) = self.assemble(frame) {
                        return Some(item);
                    }
                }
                Ok(None) => return None,
            }
        }
        None
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

/// The longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Header and payload length of the next frame, once its header is buffered.
fn frame_total_len(buf: &[u8]) -> Option<usize> {
    let len = usize::try_from(announced_len(buf)?).ok()?;
    let masked = buf.get(1)? & 0x80 != 0;
    let extended = match buf.get(1)? & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + extended + if masked { 4 } else { 0 } + len)
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

#[cfg(test)]
mod tests {
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
        let mut frames = Frames::new(max);
        let mut items = Vec::new();
        for c in bytes.chunks(chunk) {
            frames.extend(c);
            while let Some(item) = frames.next() {
                items.push(item);
            }
            frames.release();
        }
        items
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

    /// A streaming client's reads go straight into the connection's
    /// buffer while a frame is half read, and decode the same; one that
    /// sends a little at a time never gets the room.
    #[test]
    fn streamed_reads_go_into_the_buffer_and_decode_the_same() {
        let mut wire = Vec::new();
        for i in 0..100u32 {
            wire.extend(frame(true, 2, &vec![i as u8; 1000 + i as usize]));
        }
        let mut frames = Frames::new(1 << 20);
        let mut got = Vec::new();
        let (first, mut rest) = wire.split_at(STREAMING + 7);
        frames.extend(first);
        while let Some(item) = frames.next() {
            got.push(item);
        }
        while !rest.is_empty() {
            let buf = frames.spare().expect("streaming, a frame half read");
            assert!(buf.capacity() - buf.len() >= READ_ROOM);
            let n = rest.len().min(STREAMING + 1000);
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            frames.filled(n);
            while let Some(item) = frames.next() {
                got.push(item);
            }
        }
        assert_eq!(got.len(), 100);
        for (i, item) in got.iter().enumerate() {
            assert!(
                matches!(item, Inbound::Binary(b) if b.len() == 1000 + i && b.iter().all(|&x| x == i as u8)),
                "frame {i}"
            );
        }

        let mut frames = Frames::new(1 << 20);
        frames.extend(&wire[..100]);
        assert!(frames.next().is_none());
        assert!(frames.spare().is_none(), "a small read is not streaming");
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
