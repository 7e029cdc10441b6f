//! The bytes a client writes on its WebSocket, as the relay's frame reader sees them, in chunks of any size.
#![no_main]

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use libfuzzer_sys::fuzz_target;
use relay::gate::Gate;
use relay::socket::decode::{Frames, Inbound};

fuzz_target!(|data: &[u8]| {
    // First byte: how the bytes arrive (TCP splits them anywhere); next two:
    // the frame limit; the rest: the wire.
    let [chunk, m1, m2, wire @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let max = 64 + usize::from(u16::from_be_bytes([*m1, *m2]));
    let chunks: Vec<Result<Bytes, ()>> = wire
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let frames = Frames::new(stream::iter(chunks), max, Gate::new());
    let items: Vec<Inbound> = actix::System::new().block_on(frames.collect());
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
