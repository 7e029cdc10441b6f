#![allow(clippy::unwrap_used)]
use super::*;

fn binding(secret: &str) -> Binding {
    Binding::new(
        SessionCode::parse("6YM9AQ").unwrap(),
        crate::e2e::FullCode::parse(&format!("6YM9AQ{secret}"))
            .unwrap()
            .secret
            .unwrap(),
        None,
    )
}

/// Runs the exchange; `Ok` holds (host's channel, joiner's channel).
fn run(host: &Binding, joiner: &Binding) -> Result<(Channel, Channel), Failure> {
    let (h, hello) = HostHello::start(host);
    let Handshake::HostHello { sid, share } = hello else {
        panic!("not a host hello")
    };
    let (j, [jhello, jconfirm]) = JoinerConfirm::answer(joiner, &sid, &share)?;
    let (Handshake::JoinerHello { share: yb }, Handshake::Confirm { tag }) = (jhello, jconfirm)
    else {
        panic!("not the joiner's answer")
    };
    let (hc, confirm) = h.on_share(&yb)?.on_confirm(&tag)?;
    let Handshake::Confirm { tag } = confirm else {
        panic!("not a confirm")
    };
    Ok((hc, j.on_confirm(&tag)?))
}

#[test]
fn the_same_secret_gives_one_channel_both_ways() {
    let (mut host, mut joiner) = run(&binding("K7P3X"), &binding("K7P3X")).unwrap();
    let f = host.sealer.seal(&Plain::Text("hi".into()));
    host.sealer.sent();
    assert_eq!(joiner.opener.open(&f).unwrap(), Plain::Text("hi".into()));
    let f = joiner.sealer.seal(&Plain::Binary(vec![1, 2]));
    joiner.sealer.sent();
    assert_eq!(host.opener.open(&f).unwrap(), Plain::Binary(vec![1, 2]));
    assert_eq!(host.sealer.next(), 4);
}

#[test]
fn a_wrong_secret_fails_at_the_host() {
    assert_eq!(
        run(&binding("K7P3X"), &binding("K7P3Y")).err(),
        Some(Failure::Mismatch)
    );
}

#[test]
fn another_relay_code_or_guest_fails() {
    let other = Binding::new(
        SessionCode::parse("6YM9AR").unwrap(),
        binding("K7P3X").secret,
        None,
    );
    assert_eq!(
        run(&binding("K7P3X"), &other).err(),
        Some(Failure::Mismatch)
    );
    let guest = Binding::new(
        SessionCode::parse("6YM9AQ").unwrap(),
        binding("K7P3X").secret,
        Some(1),
    );
    assert_eq!(
        run(&binding("K7P3X"), &guest).err(),
        Some(Failure::Mismatch)
    );
}

#[test]
fn a_forged_host_tag_fails_at_the_joiner() {
    let (_, hello) = HostHello::start(&binding("K7P3X"));
    let Handshake::HostHello { sid, share } = hello else {
        panic!()
    };
    let (j, _) = JoinerConfirm::answer(&binding("K7P3X"), &sid, &share).unwrap();
    assert_eq!(j.on_confirm(&[0; 64]).err(), Some(Failure::Mismatch));
}

#[test]
fn invalid_shares_are_refused() {
    let (h, _) = HostHello::start(&binding("K7P3X"));
    assert_eq!(h.on_share(&[0; 32]).err(), Some(Failure::Invalid));
    assert_eq!(
        JoinerConfirm::answer(&binding("K7P3X"), &[0; 16], &[0xff; 32]).err(),
        Some(Failure::Invalid)
    );
}

#[test]
fn altered_dropped_replayed_and_reordered_frames_do_not_open() {
    let (mut host, mut joiner) = run(&binding("K7P3X"), &binding("K7P3X")).unwrap();
    let mut frames = Vec::new();
    for i in 0..3u8 {
        frames.push(host.sealer.seal(&Plain::Binary(vec![i])));
        host.sealer.sent();
    }
    // Altered.
    let mut bad = frames[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(joiner.opener.open(&bad).is_err());
    // Dropped (the second arrives first) and reordered.
    assert!(joiner.opener.open(&frames[1]).is_err());
    assert_eq!(
        joiner.opener.open(&frames[0]).unwrap(),
        Plain::Binary(vec![0])
    );
    // Replayed.
    assert!(joiner.opener.open(&frames[0]).is_err());
    assert_eq!(
        joiner.opener.open(&frames[1]).unwrap(),
        Plain::Binary(vec![1])
    );
    // A frame of the other direction (reflected back) does not open either.
    let own = joiner.sealer.seal(&Plain::Binary(vec![2]));
    assert!(joiner.opener.open(&own).is_err());
    // Garbage and a wrong version byte.
    assert!(joiner.opener.open(&[]).is_err());
    let mut v2 = frames[2].clone();
    v2[0] = 2;
    assert!(joiner.opener.open(&v2).is_err());
    assert_eq!(
        joiner.opener.open(&frames[2]).unwrap(),
        Plain::Binary(vec![2])
    );
}

#[test]
fn nothing_opens_after_end() {
    let (mut host, mut joiner) = run(&binding("K7P3X"), &binding("K7P3X")).unwrap();
    let end = host.sealer.seal(&Plain::End);
    host.sealer.sent();
    let after = host.sealer.seal(&Plain::Text("late".into()));
    assert_eq!(joiner.opener.open(&end).unwrap(), Plain::End);
    assert!(joiner.opener.ended());
    assert!(joiner.opener.open(&after).is_err());
}

#[test]
fn an_unsent_frame_takes_no_number() {
    let (mut host, mut joiner) = run(&binding("K7P3X"), &binding("K7P3X")).unwrap();
    let _refused = host.sealer.seal(&Plain::Text("refused".into()));
    let f = host.sealer.seal(&Plain::Text("sent".into()));
    host.sealer.sent();
    assert_eq!(joiner.opener.open(&f).unwrap(), Plain::Text("sent".into()));
}
