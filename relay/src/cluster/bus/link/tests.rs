//! Each class's bound and what happens when it is reached.

use bytes::Bytes;

use super::*;
use crate::cluster::envelope::EndReason;

fn link() -> Link {
    let metrics = Arc::new(Metrics::new("test").expect("metrics"));
    Link::new(Arc::from("other"), Arc::new(Shared::new(metrics)))
}

fn dropped(l: &Link, r: DropReason) -> u64 {
    l.shared
        .metrics
        .bus_dropped
        .with_label_values(&[r.as_str()])
        .get()
}

fn mib() -> Frame {
    Frame::Binary(Bytes::from(vec![0u8; 1 << 20]))
}

fn ended(n: usize) -> Control {
    Control::Ended {
        sid: format!("s{n}"),
        role: Role::Browser,
        reason: EndReason::Left,
    }
}

/// Takes and publishes everything queued.
fn publish_all(l: &Link) {
    let mut out = Vec::new();
    let bytes = l.take(usize::MAX, &mut out);
    l.published(bytes, out.len(), true);
}

/// Fills the link with new frames past the hard limit.
fn overfill(l: &Link, gate: &Arc<Gate>) {
    let mut p = 0;
    while l.held() <= HARD_LIMIT {
        p += 1;
        l.frame("s".into(), Role::Mac, p, mib(), gate);
    }
}

#[test]
fn new_frames_are_never_dropped_but_pause_their_sender_until_below_the_low_mark() {
    let l = link();
    let gate = Gate::new();
    overfill(&l, &gate);
    assert!(gate.is_closed());
    assert_eq!(
        DropReason::ALL.map(|r| dropped(&l, r)),
        [0; 6],
        "nothing dropped"
    );
    // Publishing down to just above the low mark keeps the sender paused.
    let mut out = Vec::new();
    let above_low = (HARD_LIMIT - LOW_WATER) / (ENVELOPE_OVERHEAD + (1 << 20));
    let bytes = l.take(above_low, &mut out);
    l.published(bytes, out.len(), true);
    assert!(l.held() >= LOW_WATER, "{} held", l.held());
    assert!(gate.is_closed());
    publish_all(&l);
    assert!(!gate.is_closed());
    assert_eq!(l.held(), 0);
    assert_eq!(l.shared.metrics.bus_queued_bytes.get(), 0);
}

#[test]
fn replays_acks_written_reports_and_probes_are_dropped_past_the_hard_limit() {
    let l = link();
    let gate = Gate::new();
    overfill(&l, &gate);
    l.replay("s", Role::Mac, vec![(1, mib()), (2, mib())]);
    l.ack("s".into(), Role::Mac, 1, 0);
    l.written("s".into(), Role::Mac, 1, 0);
    l.probe(1);
    assert_eq!(dropped(&l, DropReason::ReplayFull), 2);
    assert_eq!(dropped(&l, DropReason::AckFull), 1);
    assert_eq!(dropped(&l, DropReason::WrittenFull), 1);
    assert_eq!(dropped(&l, DropReason::ProbeFull), 1);
    // Controls are bounded by count, not by what the frames fill.
    l.control(ended(0));
    assert_eq!(dropped(&l, DropReason::ControlFull), 0);
    // The dropped replays are owed, once the link has room for them.
    assert!(!l.take_lost());
    publish_all(&l);
    assert!(l.take_lost());
    assert!(!l.take_lost());
    assert!(l.is_idle());
}

#[test]
fn a_replay_that_does_not_fit_is_cut_at_the_first_frame_that_does_not() {
    let l = link();
    let gate = Gate::new();
    // Room for two frames below the hard limit, not three.
    let mut p = 0;
    while l.held() + 3 * (ENVELOPE_OVERHEAD + (1 << 20)) <= HARD_LIMIT {
        p += 1;
        l.frame("s".into(), Role::Mac, p, mib(), &gate);
    }
    // A small frame after a dropped big one would leave a hole: the rest of
    // the replay goes too.
    let small = Frame::Binary(Bytes::from_static(b"x"));
    let frames = vec![(1, mib()), (2, mib()), (3, mib()), (4, mib()), (5, small)];
    l.replay("s", Role::Mac, frames);
    assert_eq!(dropped(&l, DropReason::ReplayFull), 3, "frames 3, 4 and 5");
}

#[test]
fn control_messages_are_bounded_by_count_and_dropped_past_it() {
    let l = link();
    for n in 0..MAX_CONTROLS {
        l.control(ended(n));
    }
    l.control(ended(MAX_CONTROLS));
    l.control(ended(MAX_CONTROLS + 1));
    assert_eq!(dropped(&l, DropReason::ControlFull), 2);
    // Taking some makes room for as many.
    let mut out = Vec::new();
    let bytes = l.take(1, &mut out);
    l.control(ended(0));
    l.control(ended(1));
    assert_eq!(dropped(&l, DropReason::ControlFull), 3);
    l.published(bytes, out.len(), true);
    publish_all(&l);
    assert!(l.is_idle());
}

#[test]
fn a_failed_publish_counts_its_envelopes_and_marks_the_link_lost() {
    let l = link();
    l.ack("s".into(), Role::Mac, 1, 0);
    l.control(ended(0));
    let mut out = Vec::new();
    let bytes = l.take(usize::MAX, &mut out);
    assert_eq!(out.len(), 2);
    l.published(bytes, out.len(), false);
    assert_eq!(dropped(&l, DropReason::PublishFailed), 2);
    assert!(!l.is_idle(), "owed until the holders are told");
    assert!(l.take_lost());
    assert!(l.is_idle());
}

#[test]
fn every_reason_has_its_own_label() {
    let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DropReason::ALL.len());
}
