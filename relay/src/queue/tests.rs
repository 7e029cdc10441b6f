//! The queue's rules, one at a time; `props` checks them together.

use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_protocol::CloseCode;

use super::*;

fn limits() -> Limits {
    Limits {
        max_buffered: 1_000_000,
        stall: Duration::from_secs(3600),
        away_frames: 3,
        away_bytes: 1_000_000,
        paced: true,
    }
}

fn roomy() -> Limits {
    Limits {
        away_frames: 100,
        ..limits()
    }
}

fn data(n: u8) -> Frame {
    Frame::Binary(Bytes::from(vec![n]))
}

fn big(n: usize) -> Frame {
    Frame::Binary(Bytes::from(vec![0u8; n]))
}

const C: ConnId = ConnId(1);

fn seqs(d: &Drained) -> Vec<u64> {
    d.items
        .iter()
        .filter_map(|(_, i, _)| match i {
            Item::Data { seq, .. } => Some(*seq),
            Item::Event { .. } => None,
        })
        .collect()
}

fn drain_all(q: &mut Queue, after: u64) -> Drained {
    let mut d = Drained::default();
    q.drain(C, after, &mut d);
    d
}

#[test]
fn push_without_reader_is_refused() {
    let mut q = Queue::new(limits());
    assert_eq!(q.push(data(1)), Pushed::NotPaired);
    assert_eq!(q.accepted(), 0);
}

#[test]
fn away_queue_is_bounded() {
    let mut q = Queue::new(limits());
    q.reset_reader(); // away, as a freshly joined browser before attach
    for i in 0..3 {
        assert_eq!(q.push(data(i)), Pushed::Queued { backlogged: false });
    }
    assert_eq!(q.push(data(9)), Pushed::Overflow);
    assert_eq!(q.push(data(9)), Pushed::NotPaired);
    assert_eq!(q.accepted(), 4);
    assert!(
        !q.sender_paused(),
        "an absent reader never pauses the sender"
    );
    assert!(!q.take_wake(), "nobody to wake");
}

#[test]
fn replay_starts_after_last_seq_and_acks_trim() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    for i in 0..5 {
        q.push(data(i));
    }
    // Resume having received 2 of 5: replay 3, 4, 5.
    let written = q.attach(C, 2, Instant::now()).unwrap();
    assert!(q.take_wake(), "attaching asks for a wake-up");
    let d = drain_all(&mut q, written);
    assert_eq!(seqs(&d), vec![3, 4, 5]);
    assert_eq!(q.ack(d.items.last().unwrap().0, Instant::now()), None);
    assert_eq!(q.held_entries(), 0);
    assert_eq!(q.held_bytes(), 0);
}

#[test]
fn resume_with_impossible_last_seq_is_a_gap() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    for i in 0..5 {
        q.push(data(i));
    }
    let now = Instant::now();
    assert_eq!(q.attach(C, 6, now), Err(Gap::Ahead { sent: 5 }));
    q.attach(C, 0, now).unwrap();
    q.ack(3, now); // the client acknowledged frames 1..=3
    assert!(q.detach(C));
    assert_eq!(q.attach(C, 1, now), Err(Gap::Behind { oldest: 4 }));
    q.close();
    assert_eq!(q.attach(C, 5, now), Err(Gap::Closed));
}

#[test]
fn events_stay_in_order_with_data() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    q.push(data(1));
    q.push_event("ev".into(), EventEffect::None);
    q.push(data(2));
    let w = q.attach(C, 0, Instant::now()).unwrap();
    let d = drain_all(&mut q, w);
    let kinds: Vec<_> = d
        .items
        .iter()
        .map(|(_, i, _)| match i {
            Item::Data { seq, .. } => format!("d{seq}"),
            Item::Event { .. } => "ev".to_string(),
        })
        .collect();
    assert_eq!(kinds, ["d1", "ev", "d2"]);
}

#[test]
fn an_event_written_after_the_last_frame_is_not_replayed_but_one_never_written_is() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    let now = Instant::now();
    q.attach(C, 0, now).unwrap();
    q.push(data(1));
    q.push_event("seen".into(), EventEffect::None);
    drain_all(&mut q, 0);
    q.detach(C);
    q.push_event("unseen".into(), EventEffect::None);
    // Back with frame 1: "seen" was handed out after it, "unseen" never was.
    let w = q.attach(C, 1, now).unwrap();
    let d = drain_all(&mut q, w);
    let texts: Vec<String> = d
        .items
        .iter()
        .filter_map(|(_, i, _)| match i {
            Item::Event { text, .. } => Some(text.to_string()),
            Item::Data { .. } => None,
        })
        .collect();
    assert_eq!(texts, ["unseen"]);
}

#[test]
fn a_backlog_pauses_the_sender_until_the_reader_drains() {
    let mut q = Queue::new(Limits {
        max_buffered: 4 * 65536,
        ..limits()
    });
    q.reset_reader();
    q.attach(C, 0, Instant::now()).unwrap();
    assert_eq!(q.push(big(40_000)), Pushed::Queued { backlogged: false });
    assert_eq!(q.push(big(40_000)), Pushed::Queued { backlogged: true });
    assert!(q.sender_paused());
    drain_all(&mut q, 0);
    assert!(!q.sender_paused(), "a drain lets the sender go on");
    assert_eq!(
        q.held_entries(),
        2,
        "drained frames stay until acknowledged"
    );
}

#[test]
fn a_stalled_reader_over_the_limit_is_cut() {
    let mut q = Queue::new(Limits {
        max_buffered: 100_000,
        stall: Duration::from_secs(10),
        ..limits()
    });
    q.reset_reader();
    let t0 = Instant::now();
    q.attach(C, 0, t0).unwrap();
    q.push(big(60_000));
    let later = t0 + Duration::from_secs(11);
    assert_eq!(q.cut_if_stalled(later), None, "under the limit");
    q.push(big(60_000));
    assert_eq!(q.cut_if_stalled(t0), None, "not stalled long enough");
    assert_eq!(q.cut_if_stalled(later), Some(C));
    assert_eq!(q.take_cut(), Some(C));
    assert!(q.was_cut(C));
    assert!(!q.sender_paused(), "the cut lets the sender go on");
    assert_eq!(drain_all(&mut q, 0).items.len(), 0);
    // Now away: the away limits (3 frames) apply.
    for _ in 0..3 {
        assert_eq!(q.push(data(0)), Pushed::Queued { backlogged: false });
    }
    assert_eq!(q.push(data(9)), Pushed::Overflow);
}

#[test]
fn the_hard_cap_cuts_at_once() {
    let mut q = Queue::new(Limits {
        max_buffered: 100_000,
        ..limits()
    });
    q.reset_reader();
    q.attach(C, 0, Instant::now()).unwrap();
    let mut results = Vec::new();
    for _ in 0..8 {
        // Drain between pushes, so only the unacknowledged bytes grow.
        results.push(q.push(big(60_000)));
        drain_all(&mut q, u64::MAX);
    }
    // 400,000 bytes is the cap: the seventh frame crosses it.
    assert_eq!(results[6], Pushed::SlowConsumer(C), "{results:?}");
    assert!(
        results[..6]
            .iter()
            .all(|r| *r == Pushed::Queued { backlogged: false }),
        "{results:?}"
    );
}

#[test]
fn a_queue_toward_another_node_is_paced_by_what_that_node_wrote_not_by_acks() {
    let mut q = Queue::sending_to_peer(
        Limits {
            max_buffered: 4 * 65536,
            ..limits()
        },
        0,
        0,
    );
    let pushed = q.push(big(40_000));
    assert!(matches!(
        pushed,
        Pushed::Publish {
            p: 1,
            backlogged: false,
            ..
        }
    ));
    assert!(matches!(
        q.push(big(40_000)),
        Pushed::Publish {
            p: 2,
            backlogged: true,
            ..
        }
    ));
    assert!(q.sender_paused());
    q.written_from_peer(2);
    assert!(!q.sender_paused(), "a written report releases the sender");
    assert_eq!(q.held_entries(), 2, "frames stay held until acknowledged");
    q.written_from_peer(1); // an old report changes nothing
    q.ack_from_peer(2, Instant::now());
    assert_eq!(q.held_entries(), 0);
}

#[test]
fn acks_alone_release_a_sender_whose_peer_never_reports_writes() {
    // A node that does not know written reports still paces by acks.
    let mut q = Queue::sending_to_peer(
        Limits {
            max_buffered: 4 * 65536,
            ..limits()
        },
        0,
        0,
    );
    q.push(big(40_000));
    q.push(big(40_000));
    assert!(q.sender_paused());
    q.ack_from_peer(1, Instant::now());
    assert!(
        q.sender_paused(),
        "more than half the backlog is still unwritten"
    );
    q.ack_from_peer(2, Instant::now());
    assert!(!q.sender_paused());
}

#[test]
fn a_fed_queue_reports_written_every_eighth_of_the_backlog_and_acks_in_pairing_numbers() {
    let mut q = Queue::fed_from_peer(
        Limits {
            max_buffered: 4 * 65536,
            ..limits()
        },
        10,
        10,
    );
    q.attach(C, 10, Instant::now()).unwrap();
    assert_eq!(
        q.push_from_peer(1, big(4000), Instant::now()),
        FromPeer::Queued
    );
    let d = drain_all(&mut q, 0);
    assert!(d.remote);
    assert_eq!(d.report_written, None, "4 KiB: not yet");
    assert_eq!(
        q.push_from_peer(2, big(5000), Instant::now()),
        FromPeer::Queued
    );
    let last = d.items.last().unwrap().0;
    let d = drain_all(&mut q, last);
    assert_eq!(d.report_written, Some(2));
    assert_eq!(q.ack(d.items.last().unwrap().0, Instant::now()), Some(2));
}

#[test]
fn frames_from_another_node_are_taken_in_order_once() {
    let now = Instant::now();
    let mut q = Queue::fed_from_peer(roomy(), 0, 0);
    assert_eq!(q.push_from_peer(1, data(1), now), FromPeer::Queued);
    assert_eq!(
        q.push_from_peer(3, data(3), now),
        FromPeer::Gap { next: 2, ask: true }
    );
    assert_eq!(q.push_from_peer(2, data(2), now), FromPeer::Queued);
    assert!(matches!(
        q.push_from_peer(2, data(2), now),
        FromPeer::Duplicate { ack: None }
    ));
    assert_eq!(q.pairing_count(), 2);
    q.close();
    assert_eq!(q.push_from_peer(3, data(3), now), FromPeer::Dropped);
}

#[test]
fn a_gap_asks_for_one_resend_until_it_moves_or_the_retry_interval_passes() {
    let t0 = Instant::now();
    let mut q = Queue::fed_from_peer(roomy(), 0, 0);
    q.attach(C, 0, t0).unwrap();
    assert_eq!(q.push_from_peer(1, data(1), t0), FromPeer::Queued);
    let gap = |ask| FromPeer::Gap { next: 2, ask };
    // Frames 2 and 3 were lost: the first frame past the gap asks; the
    // frames behind it, arriving while the resend is on its way, do not.
    assert_eq!(q.push_from_peer(4, data(4), t0), gap(true));
    for p in 5..10 {
        let t = t0 + RESEND_RETRY / 10 * (p as u32 - 4);
        assert_eq!(q.push_from_peer(p, data(1), t), gap(false), "frame {p}");
    }
    // The resend was lost too: a frame after the retry interval asks again,
    // once more.
    let later = t0 + RESEND_RETRY;
    assert_eq!(q.push_from_peer(10, data(1), later), gap(true));
    assert_eq!(q.push_from_peer(11, data(1), later), gap(false));
    // The resend fills the gap; a new one further on is asked for at once,
    // within the interval of the last ask.
    assert_eq!(q.push_from_peer(2, data(2), later), FromPeer::Queued);
    assert_eq!(q.push_from_peer(3, data(3), later), FromPeer::Queued);
    assert_eq!(
        q.push_from_peer(5, data(5), later),
        FromPeer::Gap { next: 4, ask: true }
    );
    // A new pairing numbers from 1 again: the same gap in it is a new one.
    let mut q = Queue::fed_from_peer(roomy(), 0, 0);
    let first = FromPeer::Gap { next: 1, ask: true };
    assert_eq!(q.push_from_peer(2, data(2), t0), first);
    q.start_pairing();
    assert_eq!(q.push_from_peer(2, data(2), t0), first);
}

#[test]
fn moving_the_reader_to_another_node_replays_what_it_lacks() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    q.attach(C, 0, Instant::now()).unwrap();
    q.start_pairing();
    for i in 0..4 {
        q.push(data(i));
    }
    q.push_event("not carried".into(), EventEffect::None);
    q.detach(C);
    let replay = q.send_to_peer(2, Instant::now()).unwrap();
    assert_eq!(replay.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [3, 4]);
    assert!(q.is_remote());
    assert_eq!(q.held_entries(), 2);
    assert!(matches!(q.push(data(5)), Pushed::Publish { p: 5, .. }));
    assert_eq!(
        q.send_to_peer(9, Instant::now()),
        Err(Gap::Ahead { sent: 5 })
    );
}

#[test]
fn a_sender_that_moves_hands_what_its_reader_has_not_acknowledged_to_its_new_node() {
    // The reader's queue, both sides on one node: five frames, two acknowledged.
    let mut here = Queue::new(roomy());
    here.reset_reader();
    here.attach(C, 0, Instant::now()).unwrap();
    here.start_pairing();
    for i in 1..=5 {
        here.push(data(i));
    }
    let d = drain_all(&mut here, 0);
    let second = d.items[1].0;
    here.ack(second, Instant::now());
    // The sender moves: its new node holds 3 to 5, in pairing numbers.
    here.set_fed(true);
    let held = here.unacknowledged();
    assert_eq!(here.pairing_count(), 5);
    assert_eq!(held.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(
        here.held_entries(),
        3,
        "the reader's node keeps them for its reader"
    );

    let mut there = Queue::sending_to_peer(roomy(), 5, 5);
    let mut offered = held.clone();
    // Not this queue's: past its count, and out of order.
    offered.push((9, data(9)));
    offered.insert(1, (2, data(2)));
    there.hold_handed_over(offered);
    assert_eq!(there.held_entries(), 3);
    assert!(!there.sender_paused(), "held frames are not unwritten");
    // New frames are published after them; old ones are not published again.
    assert!(matches!(there.push(data(6)), Pushed::Publish { p: 6, .. }));
    // The reader moves too, having read 2: everything after comes from here.
    let replay = there.send_to_peer(2, Instant::now()).unwrap();
    assert_eq!(
        replay.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    assert_eq!(replay[0].1, data(3), "verbatim");
    there.ack_from_peer(4, Instant::now());
    assert_eq!(there.held_entries(), 2);
}

#[test]
fn a_count_that_may_lag_takes_a_reader_ahead_of_it_and_skips_what_it_has() {
    // A checkpoint said 2 frames; the reader really read 4 before the crash.
    let mut q = Queue::sending_to_peer(roomy(), 2, 2);
    q.count_may_lag();
    q.peer_away();
    q.push_event("peer_resumed".into(), EventEffect::None);
    q.send_to_peer(4, Instant::now()).unwrap();
    // The sender, told 2, sends 3 and 4 again: dropped; 5 is new.
    assert_eq!(q.push(data(3)), Pushed::Skipped);
    assert_eq!(q.push(data(4)), Pushed::Skipped);
    assert!(matches!(q.push(data(5)), Pushed::Publish { p: 5, .. }));
    assert_eq!(q.accepted(), 5);
}

#[test]
fn control_messages_move_with_a_side_that_left_but_frames_stay() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    q.push(data(1));
    q.push_event("peer_disconnected".into(), EventEffect::None);
    q.push(data(2));
    assert_eq!(q.take_events(0), ["peer_disconnected"]);
    assert_eq!(q.held_entries(), 2);
    assert_eq!(q.take_events(0), Vec::<String>::new());
}

#[test]
fn closing_keeps_the_last_events_for_an_attached_reader_only() {
    let mut q = Queue::new(roomy());
    q.reset_reader();
    q.attach(C, 0, Instant::now()).unwrap();
    q.push_event("bye".into(), EventEffect::Close(CloseCode::SessionOver));
    q.close();
    assert_eq!(q.push(data(1)), Pushed::NotPaired);
    let mut d = Drained::default();
    assert_eq!(q.drain(C, 0, &mut d), Status::Closed);
    assert_eq!(d.items.len(), 1);

    let mut away = Queue::new(roomy());
    away.reset_reader();
    away.push_event("bye".into(), EventEffect::None);
    away.close();
    assert_eq!(away.held_entries(), 0);
}

/// Toward a room guest whose node died with its host's: what the rebuilt
/// room holds for it is numbered after the count the guest brings back,
/// once, whether it comes back to this node or to another; the host's
/// number of each frame goes along with it.
#[test]
fn a_queue_waiting_for_its_reader_s_count_numbers_what_it_holds_after_it() {
    let fresh = || {
        let mut q = Queue::sending_to_peer(roomy(), 0, 0);
        q.peer_away();
        q.number_on_return();
        for i in 1..=3 {
            q.push_host(data(i), 40 + u64::from(i));
        }
        q
    };
    // Back here, having 10 frames of its direction.
    let mut q = fresh();
    q.renumber(10);
    q.attach(C, 10, Instant::now()).unwrap();
    assert_eq!(seqs(&drain_all(&mut q, 0)), [11, 12, 13]);
    q.renumber(20);
    assert!(matches!(q.push(data(4)), Pushed::Queued { .. }));
    assert_eq!(q.pairing_count(), 14, "renumbered once");
    // Back on another node: sent there after its count, with the host's numbers.
    let mut q = fresh();
    q.renumber(7);
    q.send_to_peer(7, Instant::now()).unwrap();
    assert_eq!(
        q.resend_numbered(0)
            .into_iter()
            .map(|(p, _, host)| (p, host))
            .collect::<Vec<_>>(),
        [(8, 41), (9, 42), (10, 43)]
    );
}
