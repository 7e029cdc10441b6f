//! Encrypted rooms (PROTOCOL.md, "End-to-end encryption" → "Rooms"): a
//! Rust room host and Rust guests through a real relay. Each guest runs its
//! own exchange; frames to all and to one arrive opened and verbatim; the
//! relay logs none of the plaintext; a guest with a wrong secret, only the
//! relay code, or no encryption at all is removed while the others go on;
//! and resumes on either side, with frames lost in flight and sent again,
//! keep every guest's frame numbers (the nonces) in step.

use bytes::Bytes;
use relay_protocol::client::{Client, Data, Ended, Event, Events, Target};
use relay_protocol::{AdmitMode, GuestId, GuestLeftReason};
use serde_json::json;

use super::{encrypted, ended, secure};
use crate::client::{config, until};
use crate::room_clients::Proxy;
use crate::support::Relay;

/// An encrypted room host, registered: its client, events and full code.
async fn secure_room(url: &str, max_guests: u32, admit: AdmitMode) -> (Client, Events, String) {
    let (host, mut ev) = Client::mac(secure(&[url.to_owned()]).with_room(max_guests, admit));
    let code = until(&mut ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    (host, ev, code)
}

/// A guest of an `auto` room joined with `code` and confirmed on both
/// sides: the host hears `GuestEncrypted` before `GuestAdmitted`.
async fn secure_guest(url: &str, code: &str, host_ev: &mut Events) -> (Client, Events, GuestId) {
    let (g, mut ev) = Client::browser(config(&[url.to_owned()]), code);
    encrypted(&mut ev, "guest", Event::Joined).await;
    let id = g.guest_id().expect("a guest id once joined");
    until(host_ev, "guest encrypted", |e| {
        assert_ne!(e, &Event::GuestAdmitted(id), "admitted before confirmed");
        (e == &Event::GuestEncrypted(id)).then_some(())
    })
    .await;
    until(host_ev, "guest admitted", |e| {
        (e == &Event::GuestAdmitted(id)).then_some(())
    })
    .await;
    (g, ev, id)
}

/// The next data event of a guest; it must not have ended.
async fn next_data(ev: &mut Events, who: &str) -> Data {
    until(ev, &format!("{who}: data"), |e| match e {
        Event::Data(d) => Some(d.clone()),
        Event::Ended(why) => panic!("{who} ended: {why}"),
        _ => None,
    })
    .await
}

/// The next frame the host got from a guest.
async fn from_guest(ev: &mut Events) -> (GuestId, Data) {
    until(ev, "guest data", |e| match e {
        Event::GuestData { guest, data } => Some((*guest, data.clone())),
        Event::Ended(why) => panic!("host ended: {why}"),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn each_guest_gets_its_own_key_and_frames_to_all_or_one_arrive_verbatim() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (host, mut hev, code) = secure_room(&url, 3, AdmitMode::Auto).await;
    assert_eq!(code.len(), 12, "a full code: {code}");
    let (a, mut aev, a_id) = secure_guest(&url, &code, &mut hev).await;
    let (b, mut bev, b_id) = secure_guest(&url, &code, &mut hev).await;
    let (c, mut cev, c_id) = secure_guest(&url, &code, &mut hev).await;

    let text = "plainword-to-all é {\"type\":\"data\"} \u{0}";
    let bytes: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    host.send_text(text).await.unwrap();
    host.send_binary(bytes.clone()).await.unwrap();
    host.send_text_to(Target::Guest(b_id), "plainword-only-b")
        .await
        .unwrap();
    host.send_text("").await.unwrap();
    for (ev, who, id) in [
        (&mut aev, "a", a_id),
        (&mut bev, "b", b_id),
        (&mut cev, "c", c_id),
    ] {
        assert_eq!(next_data(ev, who).await, Data::Text(text.into()));
        assert_eq!(next_data(ev, who).await, Data::Binary(bytes.clone()));
        if id == b_id {
            assert_eq!(
                next_data(ev, who).await,
                Data::Text("plainword-only-b".into())
            );
        }
        // The frame for b alone reached nobody else: the next is the last to all.
        assert_eq!(next_data(ev, who).await, Data::Text(String::new()));
    }

    // Each guest's frames open with its keys and come tagged with it.
    a.send_text("plainword-from-a").await.unwrap();
    b.send_binary(bytes.clone()).await.unwrap();
    c.send_text("plainword-from-c").await.unwrap();
    let mut got = vec![
        from_guest(&mut hev).await,
        from_guest(&mut hev).await,
        from_guest(&mut hev).await,
    ];
    got.sort_by_key(|(g, _)| *g);
    assert_eq!(
        got,
        vec![
            (a_id, Data::Text("plainword-from-a".into())),
            (b_id, Data::Binary(bytes)),
            (c_id, Data::Text("plainword-from-c".into())),
        ]
    );

    // The host leaves with an end frame for each guest: none is cut short.
    host.leave().await;
    for (ev, who) in [(&mut aev, "a"), (&mut bev, "b"), (&mut cev, "c")] {
        let why = loop {
            match until(ev, who, |e| Some(e.clone())).await {
                Event::Unfinished => panic!("{who}: the host's end frame did not arrive"),
                Event::Ended(why) => break why,
                _ => {}
            }
        };
        assert_eq!(why, Ended::MacDisconnected, "{who}");
    }
    // The relay saw only ciphertext: none of the plaintext is in its logs.
    assert!(!relay.logged("plainword"));
}

#[tokio::test]
async fn a_guest_that_fails_the_exchange_is_removed_and_the_room_goes_on() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (host, mut hev, code) = secure_room(&url, 4, AdmitMode::Auto).await;
    let (a, mut aev, a_id) = secure_guest(&url, &code, &mut hev).await;

    // A wrong secret: both sides say the sentence; the host removes it.
    let last = code.chars().last().unwrap();
    let wrong = format!(
        "{}{}",
        &code[..code.len() - 1],
        if last == '3' { '4' } else { '3' }
    );
    let (bad, mut bad_ev) = Client::browser(config(std::slice::from_ref(&url)), wrong);
    assert_eq!(
        ended(&mut bad_ev, "wrong secret").await,
        Ended::CodeMismatch
    );
    let bad_id = bad.guest_id().expect("it joined");
    let failed = |ev: &Event| match ev {
        Event::GuestFailed { guest, why } => Some((*guest, why.clone())),
        Event::Ended(why) => panic!("the host ended: {why}"),
        Event::GuestAdmitted(g) if *g == bad_id => panic!("a guesser was admitted"),
        _ => None,
    };
    let (g, why) = until(&mut hev, "guest failed", failed).await;
    assert_eq!((g, why), (bad_id, Ended::CodeMismatch));
    until(&mut hev, "guest removed", |e| {
        (e == &Event::GuestLeft {
            guest: bad_id,
            reason: GuestLeftReason::Removed,
        })
            .then_some(())
    })
    .await;

    // Only the relay code: told to type the whole code; removed.
    let (_short, mut short_ev) = Client::browser(secure(std::slice::from_ref(&url)), &code[..6]);
    let why = ended(&mut short_ev, "relay code only").await;
    assert!(
        matches!(&why, Ended::NotEncrypted(s) if s.contains("whole code")),
        "{why}"
    );
    let (_, why) = until(&mut hev, "guest failed", failed).await;
    assert!(
        matches!(&why, Ended::NotEncrypted(s) if s.contains("first part")),
        "{why}"
    );

    // A client of the original protocol: sees the hello's note, answers in
    // clear, and is removed without anything sealed reaching it.
    let mut old = relay.browser().await;
    old.json(json!({"type": "join", "code": &code[..6]})).await;
    old.expect("joined").await;
    let hello = old.expect("data").await;
    assert!(
        hello["payload"]
            .as_str()
            .unwrap()
            .contains("end-to-end encrypted")
    );
    old.data("hello?").await;
    let (_, why) = until(&mut hev, "guest failed", failed).await;
    assert!(
        matches!(&why, Ended::NotEncrypted(s) if s.contains("does not use")),
        "{why}"
    );
    let abort = old.expect("data").await;
    assert!(
        abort["payload"].as_str().unwrap().contains("\"invalid\""),
        "{abort}"
    );
    assert_eq!(old.expect("error").await["code"], "REMOVED");

    // The room went on: a still talks with the host, and a new guest joins.
    host.send_text("still here").await.unwrap();
    assert_eq!(
        next_data(&mut aev, "a").await,
        Data::Text("still here".into())
    );
    a.send_text("me too").await.unwrap();
    assert_eq!(
        from_guest(&mut hev).await,
        (a_id, Data::Text("me too".into()))
    );
    let (_d, mut dev, d_id) = secure_guest(&url, &code, &mut hev).await;
    host.send_text_to(Target::Guest(d_id), "welcome")
        .await
        .unwrap();
    assert_eq!(next_data(&mut dev, "d").await, Data::Text("welcome".into()));
}

/// The binary frame numbered `n`, tagged with who it is for or from.
fn numbered(tag: GuestId, n: u32) -> Bytes {
    let mut b = vec![tag as u8];
    b.extend_from_slice(&n.to_be_bytes());
    Bytes::from(b)
}

/// A guest receives exactly `want`, in order (a frame that did not open
/// would end it as tampered); returns the other events meanwhile.
async fn guest_gets(ev: &mut Events, want: &[Bytes], who: &str) -> Vec<Event> {
    let mut others = Vec::new();
    for (i, w) in want.iter().enumerate() {
        let d = until(ev, &format!("{who}: frame {i}"), |e| match e {
            Event::Data(d) => Some(d.clone()),
            Event::Ended(why) => panic!("{who} ended: {why}"),
            other => {
                others.push(other.clone());
                None
            }
        })
        .await;
        assert_eq!(d, Data::Binary(w.clone()), "{who}: frame {i}");
    }
    others
}

/// The host receives `n` numbered frames from each guest, each guest's in order.
async fn host_gets(ev: &mut Events, guests: &[GuestId], n: u32) {
    let mut next = vec![1u32; guests.len()];
    while next.iter().any(|&k| k <= n) {
        let (g, d) = from_guest(ev).await;
        let i = guests.iter().position(|x| *x == g).expect("a known guest");
        let Data::Binary(b) = d else {
            panic!("text from {g}")
        };
        assert_eq!(
            b,
            numbered(g, next[i]),
            "guest {g}: lost, repeated or reordered"
        );
        next[i] += 1;
    }
}

async fn guest_sends(g: &Client, id: GuestId, from: u32, to: u32) {
    for k in from..=to {
        g.send_binary(numbered(id, k)).await.unwrap();
    }
}

#[tokio::test]
async fn resumes_of_a_guest_and_of_the_host_keep_each_guests_frames_in_step() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let a_net = Proxy::start(relay.addr).await;
    let host_net = Proxy::start(relay.addr).await;
    let (host, mut hev, code) = secure_room(&host_net.url(), 2, AdmitMode::Auto).await;
    let (a, mut aev, a_id) = secure_guest(&a_net.url(), &code, &mut hev).await;
    let (b, mut bev, b_id) = secure_guest(&url, &code, &mut hev).await;
    let all: Vec<Bytes> = (1..=100).map(|k| numbered(0, k)).collect();

    // a's network swallows what it writes, then fails: a resumes and sends
    // its sealed frames again, numbered as before.
    let guest_drop = async {
        for f in &all[..40] {
            host.send_binary(f.clone()).await.unwrap();
        }
        a_net.hold();
        guest_sends(&a, a_id, 1, 30).await;
        a_net.wait_held(30 * 20).await;
        a_net.cut();
        for f in &all[40..] {
            host.send_binary(f.clone()).await.unwrap();
        }
        guest_sends(&a, a_id, 31, 60).await;
    };
    let (_, a_others, _, _) = tokio::join!(
        guest_drop,
        guest_gets(&mut aev, &all, "a"),
        guest_gets(&mut bev, &all, "b"),
        async {
            guest_sends(&b, b_id, 1, 60).await;
            host_gets(&mut hev, &[a_id, b_id], 60).await
        },
    );
    assert!(
        a_others.contains(&Event::Resumed),
        "a did not resume: {a_others:?}"
    );

    // The host's network swallows frames for a alone and for all, then
    // fails: the host resumes and sends them again, each sealed for its guest.
    let to_a: Vec<Bytes> = (1..=20).map(|k| numbered(a_id, k)).collect();
    let later: Vec<Bytes> = (101..=140).map(|k| numbered(0, k)).collect();
    let host_drop = async {
        host_net.hold();
        for f in &to_a {
            host.send_binary_to(Target::Guest(a_id), f.clone())
                .await
                .unwrap();
        }
        for f in &later[..20] {
            host.send_binary(f.clone()).await.unwrap();
        }
        host_net.wait_held(20 * 20).await;
        host_net.cut();
        for f in &later[20..] {
            host.send_binary(f.clone()).await.unwrap();
        }
        guest_sends(&a, a_id, 61, 80).await;
        guest_sends(&b, b_id, 61, 80).await;
    };
    let a_wants: Vec<Bytes> = to_a.iter().chain(&later).cloned().collect();
    tokio::join!(
        host_drop,
        guest_gets(&mut aev, &a_wants, "a"),
        guest_gets(&mut bev, &later, "b"),
    );
    // Each guest's frames 61..=80 reach the host opened, in order, and the
    // host did resume on the way.
    let mut next = [61u32, 61];
    let mut resumed = false;
    while next.iter().any(|&k| k <= 80) {
        let (g, d) = until(&mut hev, "guest data", |e| match e {
            Event::GuestData { guest, data } => Some((*guest, data.clone())),
            Event::Resumed => {
                resumed = true;
                None
            }
            Event::Ended(why) => panic!("host ended: {why}"),
            _ => None,
        })
        .await;
        let i = usize::from(g != a_id);
        assert_eq!(d, Data::Binary(numbered(g, next[i])), "guest {g}");
        next[i] += 1;
    }
    assert!(resumed, "the host did not resume");
}
