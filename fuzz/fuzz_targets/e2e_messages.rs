//! What a hostile peer or relay can put in front of the end-to-end
//! encryption (`relay-e2e/1`): handshake payloads, full codes and links,
//! and sealed frames. The first byte picks the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_protocol::SessionCode;
use relay_protocol::e2e::{
    Binding, Channel, FullCode, Handshake, HostHello, JoinerConfirm, Payload, Plain,
};

/// A confirmed pair of channels (host, joiner) for a fixed code.
fn channels() -> (Channel, Channel) {
    // unwrap: a literal full code.
    let code = FullCode::parse("6YM9AQ-K7P3X").unwrap();
    let relay: SessionCode = code.relay.clone();
    let secret = code.secret.clone().unwrap();
    let b = Binding::new(relay, secret, None);
    let (h, hello) = HostHello::start(&b);
    let Handshake::HostHello { sid, share } = hello else {
        unreachable!()
    };
    let (j, [jh, jc]) = JoinerConfirm::answer(&b, &sid, &share).unwrap();
    let (Handshake::JoinerHello { share: yb }, Handshake::Confirm { tag }) = (jh, jc) else {
        unreachable!()
    };
    let (host, confirm) = h.on_share(&yb).unwrap().on_confirm(&tag).unwrap();
    let Handshake::Confirm { tag } = confirm else {
        unreachable!()
    };
    (host, j.on_confirm(&tag).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Payload::Handshake(h) = Payload::parse(text) {
                // What decodes, encodes back to the same message.
                assert_eq!(Payload::parse(&h.to_payload()), Payload::Handshake(h));
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(code) = FullCode::parse(text) {
                assert_eq!(code.relay.as_str().len(), 6);
                assert_eq!(FullCode::parse(&code.to_string()), Ok(code.clone()));
                assert_eq!(FullCode::parse(&code.link("https://h/")), Ok(code));
            }
        }
        _ => {
            let _ = Plain::decode(rest.to_vec());
            let (mut host, mut joiner) = channels();
            let genuine = host.sealer.seal(&Plain::Binary(b"genuine".to_vec()));
            host.sealer.sent();
            // Bytes the host did not seal never open, and a refusal leaves
            // the channel as it was: the genuine frame still opens.
            if rest != genuine.as_slice() {
                assert!(joiner.opener.open(rest).is_err());
            } else {
                return;
            }
            assert_eq!(
                joiner.opener.open(&genuine),
                Ok(Plain::Binary(b"genuine".to_vec()))
            );
        }
    }
});
