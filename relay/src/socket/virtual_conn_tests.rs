//! The virtual connection's bookkeeping alone: positions, acknowledgements,
//! batches, closing and the cap (the HTTP side is tested in tests/http/).

use actix_http::ws::OpCode;
use bytestring::ByteString;
use prometheus::IntGauge;

use super::*;

fn items(c: &VirtualConn, generation: u64) -> Vec<serde_json::Value> {
    match c.collect(generation, usize::MAX) {
        Some(Collected::Items(v)) => v
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or_default())
            .collect(),
        Some(Collected::Over) => panic!("over"),
        None => Vec::new(),
    }
}

fn generation(r: Result<Receiving, ReceiveRefused>) -> u64 {
    r.map(|r| r.generation).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn items_are_numbered_held_until_acknowledged_and_sent_again_after_a_loss() {
    let c = VirtualConn::default();
    c.write(b"one", OpCode::Text);
    c.write(&[0, 255], OpCode::Binary);
    c.write(b"three", OpCode::Text);
    let g = generation(c.receive(0));
    let got = items(&c, g);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["text"], "one");
    assert_eq!(got[1]["binary"], "AP8=");
    assert_eq!(got[2]["pos"], 3);
    assert!(items(&c, g).is_empty(), "nothing new");
    // The answer was lost: the same `after` gets them again.
    let g = generation(c.receive(0));
    assert_eq!(items(&c, g).len(), 3);
    // Acknowledging 2 leaves 3; going back, or past what was sent, is refused.
    let g = generation(c.receive(2));
    assert_eq!(items(&c, g)[0]["pos"], 3);
    assert_eq!(
        c.receive(1).err(),
        Some(ReceiveRefused::Backwards { acked: 2 })
    );
    assert_eq!(c.receive(4).err(), Some(ReceiveRefused::Beyond));
    // A newer receive ends the one before.
    let old = generation(c.receive(3));
    let _new = generation(c.receive(3));
    assert!(matches!(c.collect(old, 10), Some(Collected::Over)));
}

#[test]
fn a_marker_rides_on_the_last_item_and_comes_back_with_its_acknowledgement() {
    let c = VirtualConn::default();
    let marker = [1u8; 12];
    c.write(b"a", OpCode::Text);
    c.write(&marker, OpCode::Ping);
    c.write(b"b", OpCode::Text);
    let g = generation(c.receive(0));
    items(&c, g);
    let r = c.receive(1).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.marker, Some(marker));
    assert_eq!(items(&c, r.generation)[0]["text"], "b");
    // With nothing held, a marker waits for the next receive.
    let g = generation(c.receive(2));
    assert!(items(&c, g).is_empty());
    c.write(&[2u8; 12], OpCode::Ping);
    assert_eq!(c.receive(2).ok().and_then(|r| r.marker), Some([2u8; 12]));
}

#[test]
fn batches_are_taken_once_in_order_one_at_a_time() {
    let c = VirtualConn::default();
    let frame = || vec![Inbound::Text(ByteString::from_static("x"))];
    assert_eq!(c.send(1, frame()), SendStep::Accepted);
    assert_eq!(c.send(1, frame()), SendStep::Applying);
    assert_eq!(c.send(2, frame()), SendStep::Refused { expected: 1 });
    assert!(c.taken(1).is_none());
    assert!(matches!(c.next_inbound(), Some(Inbound::Text(_))));
    assert!(c.next_inbound().is_none());
    assert_eq!(c.taken(1), Some(SendStep::Taken));
    assert_eq!(c.send(1, frame()), SendStep::Taken);
    assert_eq!(c.send(3, frame()), SendStep::Refused { expected: 2 });
    // An empty batch is taken as soon as the ones before it.
    assert_eq!(c.send(2, Vec::new()), SendStep::Accepted);
    assert!(c.next_inbound().is_none());
    assert_eq!(c.taken(2), Some(SendStep::Taken));
}

#[test]
fn a_closed_connection_delivers_its_last_items_then_refuses() {
    let c = VirtualConn::default();
    c.write(b"bye", OpCode::Text);
    c.close(1000, "");
    c.write(b"after", OpCode::Text);
    let g = generation(c.receive(0));
    let got = items(&c, g);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1]["close"], 1000);
    assert!(c.finished());
    let closed = Closed {
        code: 1000,
        reason: String::new(),
    };
    assert_eq!(
        c.receive(2).err(),
        Some(ReceiveRefused::Closed(closed.clone()))
    );
    assert_eq!(c.send(1, Vec::new()), SendStep::Closed(closed));
}

#[test]
fn past_its_cap_it_closes_as_a_slow_consumer_and_gives_its_gauge_back() {
    let gauge = IntGauge::new("t", "t").unwrap_or_else(|e| panic!("{e}"));
    let c = VirtualConn::new(gauge.clone(), 100);
    assert_eq!(gauge.get(), 1);
    for _ in 0..10 {
        c.write(b"0123456789", OpCode::Text);
    }
    assert_eq!(c.closed().map(|(c, _)| c.code), Some(1013));
    assert_eq!(gauge.get(), 0);
    c.close(1000, "");
    assert_eq!(gauge.get(), 0, "given back once");
}
