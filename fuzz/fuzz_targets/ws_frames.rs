//! The bytes a client writes on its WebSocket, as the relay's frame reader sees them, in chunks of any size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::socket::decode::{Frames, Inbound};

fuzz_target!(|data: &[u8]| {
    // First byte: how the bytes arrive (TCP splits them anywhere); next two:
    // the frame limit; the rest: the wire.
    let [chunk, m1, m2, wire @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let max = 64 + usize::from(u16::from_be_bytes([*m1, *m2]));
    // As the socket's pump does: bytes in as they arrive, every whole item
    // out, the buffer given back when nothing is left in it.
    let mut frames = Frames::new(max);
    let mut items: Vec<Inbound> = Vec::new();
    for c in wire.chunks(chunk) {
        frames.extend(c);
        while let Some(item) = frames.next() {
            items.push(item);
        }
        frames.release();
    }
    // Every frame has a header of at least 2 bytes (masked: 6).
    assert!(items.len() <= wire.len() / 2 + 1);
    for (i, item) in items.iter().enumerate() {
        match item {
            Inbound::Text(t) => assert!(t.len() <= max),
            Inbound::Binary(b) => assert!(b.len() <= max),
            // Nothing is read past a refusal.
            Inbound::TooLarge | Inbound::Broken(_) => assert_eq!(i, items.len() - 1),
            _ => {}
        }
    }
});
