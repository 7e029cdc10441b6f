//! CPace (draft-irtf-cfrg-cpace), cipher suite CPACE-RISTR255-SHA512, in the
//! initiator-responder setting. Only the draft's byte layouts live here; the
//! group (element derivation, encoding, scalar multiplication) is
//! curve25519-dalek's and the hash is RustCrypto's SHA-512. The unit tests
//! hold it to the draft's own vectors (appendix B.3).

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha512};

/// `G.DSI` of the ristretto255 group.
const DSI: &[u8] = b"CPaceRistretto255";
/// `G.DSI || "_ISK"`.
const DSI_ISK: &[u8] = b"CPaceRistretto255_ISK";
/// SHA-512's input block size (`H.s_in_bytes`), which the generator string pads to.
const S_IN_BYTES: usize = 128;

/// `prepend_len`: the length as LEB128, then the bytes.
pub(crate) fn prepend_len(out: &mut Vec<u8>, data: &[u8]) {
    let mut n = data.len();
    loop {
        // Seven bits at a time, low first; the high bit says more follow.
        let low = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { low } else { low | 0x80 });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(data);
}

/// `lv_cat`: each part with its length in front.
pub(crate) fn lv_cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 2).sum());
    for p in parts {
        prepend_len(&mut out, p);
    }
    out
}

fn prepended_len(data: &[u8]) -> usize {
    let mut v = Vec::new();
    prepend_len(&mut v, data);
    v.len()
}

/// `generator_string(G.DSI, PRS, CI, sid, H.s_in_bytes)`: zero padding
/// makes the password end in the first hash block.
fn generator_string(prs: &[u8], ci: &[u8], sid: &[u8]) -> Vec<u8> {
    let zpad = S_IN_BYTES.saturating_sub(1 + prepended_len(prs) + prepended_len(DSI));
    lv_cat(&[DSI, prs, &vec![0u8; zpad], ci, sid])
}

/// `calculate_generator`: the generator string hashed to 64 bytes and mapped
/// into the group with ristretto255's element derivation.
pub(crate) fn generator(prs: &[u8], ci: &[u8], sid: &[u8]) -> RistrettoPoint {
    let digest: [u8; 64] = Sha512::digest(generator_string(prs, ci, sid)).into();
    RistrettoPoint::from_uniform_bytes(&digest)
}

/// `sample_scalar` from 64 uniformly random bytes (reduced mod the group order,
/// bias below 2^-250).
pub(crate) fn scalar(random: &[u8; 64]) -> Scalar {
    Scalar::from_bytes_mod_order_wide(random)
}

/// `Y = encode(y·g)`: the share each side sends.
pub(crate) fn share(y: &Scalar, g: &RistrettoPoint) -> [u8; 32] {
    (g * y).compress().to_bytes()
}

/// `scalar_mult_vfy(y, Y_peer)`: `None` when the peer's share does not decode
/// or the result is the identity, where the draft says to abort.
pub(crate) fn secret(y: &Scalar, peer: &[u8; 32]) -> Option<[u8; 32]> {
    let point = CompressedRistretto(*peer).decompress()?;
    let k = point * y;
    if k.is_identity() {
        return None;
    }
    Some(k.compress().to_bytes())
}

/// `transcript_ir(Ya, ADa, Yb, ADb)`: the initiator's share first.
pub(crate) fn transcript(ya: &[u8], ada: &[u8], yb: &[u8], adb: &[u8]) -> Vec<u8> {
    let mut t = lv_cat(&[ya, ada]);
    t.extend(lv_cat(&[yb, adb]));
    t
}

/// The intermediate session key: `SHA-512(lv_cat(DSI_ISK, sid, K) || transcript)`.
pub(crate) fn isk(sid: &[u8], k: &[u8; 32], transcript: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(lv_cat(&[DSI_ISK, sid, k]));
    h.update(transcript);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex32(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }

    // draft-irtf-cfrg-cpace, appendix B.3 (CPACE-RISTR255-SHA512).
    const CI: &str = "6f630b425f726573706f6e6465720b415f696e69746961746f72";
    const SID: &str = "7e4b4791d6a8ef019b936c79fb7f2c57";

    #[test]
    fn the_draft_vectors_hold() {
        let (ci, sid) = (hex(CI), hex(SID));
        let gs = generator_string(b"Password", &ci, &sid);
        assert_eq!(
            gs,
            hex("11435061636552697374726574746f3235350850617373776f726464
                 00000000000000000000000000000000000000000000000000000000
                 00000000000000000000000000000000000000000000000000000000
                 00000000000000000000000000000000000000000000000000000000
                 000000000000000000000000000000001a6f630b425f726573706f6e
                 6465720b415f696e69746961746f72107e4b4791d6a8ef019b936c79
                 fb7f2c57")
        );
        let g = generator(b"Password", &ci, &sid);
        assert_eq!(
            g.compress().to_bytes(),
            hex32("a6fc82c3b8968fbb2e06fee81ca858586dea50d248f0c7ca6a18b0902a30b36b")
        );
        let ya = Scalar::from_bytes_mod_order(hex32(
            "da3d23700a9e5699258aef94dc060dfda5ebb61f02a5ea77fad53f4ff0976d08",
        ));
        let yb = Scalar::from_bytes_mod_order(hex32(
            "d2316b454718c35362d83d69df6320f38578ed5984651435e2949762d900b80d",
        ));
        let a = share(&ya, &g);
        let b = share(&yb, &g);
        assert_eq!(
            a,
            hex32("d40fb265a7abeaee7939d91a585fe59f7053f982c296ec413c624c669308f87a")
        );
        assert_eq!(
            b,
            hex32("08bcf6e9777a9c313a3db6daa510f2d398403319c2341bd506a92e672eb7e307")
        );
        let k = secret(&ya, &b).unwrap();
        assert_eq!(Some(k), secret(&yb, &a));
        assert_eq!(
            k,
            hex32("e22b1ef7788f661478f3cddd4c600774fc0f41e6b711569190ff88fa0e607e09")
        );
        let t = transcript(&a, b"ADa", &b, b"ADb");
        assert_eq!(
            isk(&sid, &k, &t).to_vec(),
            hex(
                "4c5469a16b2364c4b944ebc1a79e51d1674ad47db26e8718154f59faebfaa52d
                 8346f30aa58377117eb20d527f2cbc5c76381f7fd372e89df8239f87f2e02ed1"
            )
        );
    }

    #[test]
    fn identity_and_non_encodings_are_refused() {
        let y = scalar(&[7; 64]);
        assert_eq!(secret(&y, &[0; 32]), None, "the identity");
        assert_eq!(secret(&y, &[0xff; 32]), None, "not an encoding");
    }

    #[test]
    fn lengths_are_leb128() {
        let mut v = Vec::new();
        prepend_len(&mut v, &[0; 127]);
        assert_eq!(v[0], 127);
        v.clear();
        prepend_len(&mut v, &[0; 128]);
        assert_eq!(&v[..2], &[0x80, 0x01]);
        v.clear();
        prepend_len(&mut v, &[0; 300]);
        assert_eq!(&v[..2], &[0xac, 0x02]);
    }
}
