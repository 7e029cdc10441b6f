//! One Redis pub/sub message between nodes: what a node of another version, or anyone who can PUBLISH, sends.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use relay::cluster::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    let (envelopes, bad) = Envelope::decode_all(Bytes::copy_from_slice(data));
    // Each envelope takes its 4-byte length and at least a kind byte.
    assert!(envelopes.len() + bad <= data.len() / 4 + 1);
    // A node forwards what it decoded by encoding it again (resend, resync):
    // that must read back as the same envelopes, with nothing skipped.
    let mut out = BytesMut::new();
    for e in &envelopes {
        e.encode(&mut out);
    }
    let (back, bad_back) = Envelope::decode_all(out.freeze());
    assert_eq!(bad_back, 0);
    assert_eq!(back, envelopes);
});
