//! Resume: a side drops (or is taken over) while the other keeps sending;
//! sequence-numbered payloads prove nothing is lost, duplicated or reordered.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Got, Relay, Stream, WAIT, Ws, pair, register, resume_msg};

/// A data frame carrying `seq`, padded to a size that varies with it.
fn frame(seq: u64) -> Message {
    let mut b = seq.to_be_bytes().to_vec();
    b.resize(8 + (seq as usize * 37) % 900, (seq % 251) as u8);
    Message::binary(b)
}

fn seq_of(m: &[u8]) -> u64 {
    let seq = u64::from_be_bytes(m[..8].try_into().unwrap());
    assert_eq!(
        m.len(),
        8 + (seq as usize * 37) % 900,
        "frame {seq} has the wrong length"
    );
    seq
}

/// Reads until `count` data frames came in; returns their seqs and the control messages seen.
async fn collect(rx: &mut SplitStream<Stream>, count: usize) -> (Vec<u64>, Vec<Value>) {
    let mut seqs = Vec::new();
    let mut events = Vec::new();
    while seqs.len() < count {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} frames came", seqs.len()))
            .expect("open")
            .expect("ok");
        match m {
            Message::Binary(b) => seqs.push(seq_of(&b)),
            Message::Text(t) => events.push(serde_json::from_str(&t).unwrap()),
            Message::Close(c) => panic!("closed {c:?} after {} frames", seqs.len()),
            _ => {}
        }
    }
    (seqs, events)
}

async fn send_range(tx: &mut SplitSink<Stream, Message>, from: u64, to: u64) {
    for seq in from..=to {
        tx.send(frame(seq)).await.expect("send");
        if seq % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

fn assert_sequence(seqs: &[u64], n: u64, who: &str) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(
            *s,
            i as u64 + 1,
            "{who}: frame {} should be {} (lost, duplicated or reordered)",
            s,
            i + 1
        );
    }
    assert_eq!(seqs.len() as u64, n, "{who}: frame count");
}

/// How the moving side leaves its first connection.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// The TCP connection drops.
    Drop,
    /// It stays open and a new connection takes over.
    Takeover,
}

/// The `mover` side drops mid-stream and resumes while the other side keeps sending.
async fn resume_mid_stream(mover_is_mac: bool, how: Leave) {
    const N_STAY: u64 = 3000;
    const N_MOVE: u64 = 800;
    let relay = Relay::start(&[("RELAY_RESUME_BUFFER_FRAMES", "100000")]);
    let p = pair(&relay).await;
    let (session, token, mover_path) = if mover_is_mac {
        (p.session_id.clone(), p.mac_token.clone(), "/mac")
    } else {
        (p.session_id.clone(), p.browser_token.clone(), "/browser")
    };
    let (mover, stayer) = if mover_is_mac {
        (p.mac, p.browser)
    } else {
        (p.browser, p.mac)
    };

    // The stayer sends all its frames and collects all of the mover's.
    let (mut s_tx, mut s_rx) = stayer.into_inner().split();
    let stayer_send = tokio::spawn(async move {
        send_range(&mut s_tx, 1, N_STAY).await;
        s_tx
    });
    let stayer_recv = tokio::spawn(async move { collect(&mut s_rx, N_MOVE as usize).await });

    // First connection: send some, read some, then go.
    let (mut m_tx, mut m_rx) = mover.into_inner().split();
    send_range(&mut m_tx, 1, 400).await;
    let (first, _) = collect(&mut m_rx, 300).await;
    let old = m_rx.reunite(m_tx).expect("same stream");
    let mut old_ws = None;
    match how {
        Leave::Drop => {
            Ws::from_stream(old).drop_connection();
            // A resume that reaches the relay before it noticed the drop is
            // a takeover, which the peer does not hear of: wait for the drop.
            relay
                .wait_metric(r#"relay_sessions{state="away"}"#, |v| v == 1.0)
                .await;
        }
        Leave::Takeover => old_ws = Some(Ws::from_stream(old)),
    }

    // Second connection: resume from what it has, re-send what the relay lacks.
    let mut ws = Ws::connect(&relay.url(mover_path)).await;
    ws.json(resume_msg(&session, &token, first.len() as u64))
        .await;
    let resumed = ws.expect("resumed").await;
    assert_eq!(resumed["sessionId"], session.as_str());
    let accepted = resumed["lastSeq"].as_u64().expect("lastSeq");
    assert!(
        accepted <= 400,
        "relay cannot have accepted more than was sent"
    );
    let (mut m_tx, mut m_rx) = ws.into_inner().split();
    let resend = tokio::spawn(async move {
        send_range(&mut m_tx, accepted + 1, N_MOVE).await;
        m_tx
    });
    let (rest, _) = collect(&mut m_rx, (N_STAY as usize) - first.len()).await;
    let mut all = first;
    all.extend(rest);
    assert_sequence(&all, N_STAY, "mover received");

    let (got, events) = stayer_recv.await.unwrap();
    assert_sequence(&got, N_MOVE, "stayer received");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    match how {
        Leave::Drop => assert_eq!(types, ["peer_disconnected", "peer_resumed"]),
        // A takeover is seamless for the peer.
        Leave::Takeover => assert!(types.is_empty(), "{types:?}"),
    }
    if let Some(mut old) = old_ws {
        // The replaced connection still holds unread frames; it ends with 4001.
        assert_eq!(old.until_closed().await, Some(4001));
    }
    let _sink = stayer_send.await.unwrap();
    let _sink2 = resend.await.unwrap();
    assert_eq!(
        relay
            .metric("relay_disconnects_total{reason=\"slow_consumer\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn browser_drops_mid_stream_and_resumes_with_nothing_lost() {
    resume_mid_stream(false, Leave::Drop).await;
}

#[tokio::test]
async fn mac_drops_mid_stream_and_resumes_with_nothing_lost() {
    resume_mid_stream(true, Leave::Drop).await;
}

#[tokio::test]
async fn resume_takes_over_an_open_connection() {
    resume_mid_stream(false, Leave::Takeover).await;
}

#[tokio::test]
async fn away_buffer_overflow_ends_the_side_with_resume_expired() {
    let relay = Relay::start(&[("RELAY_RESUME_BUFFER_FRAMES", "5")]);
    let mut p = pair(&relay).await;
    let (session, token) = (p.session_id.clone(), p.browser_token.clone());
    p.browser.drop_connection();
    p.mac.expect("peer_disconnected").await;
    for i in 0..5u8 {
        p.mac.binary(vec![i]).await;
    }
    // The sixth frame does not fit: the browser's side ends rather than lose it silently.
    p.mac.binary(vec![5]).await;
    assert_eq!(p.mac.expect("peer_left").await["reason"], "timeout");
    p.mac.binary(vec![6]).await;
    p.mac.expect_error("NOT_PAIRED").await;
    let mut back = relay.browser().await;
    back.json(resume_msg(&session, &token, 0)).await;
    back.expect_error("RESUME_EXPIRED").await;
    assert_eq!(
        relay.metric("relay_resume_buffer_overflows_total").await,
        1.0
    );
}

#[tokio::test]
async fn an_impossible_last_seq_is_refused_and_changes_nothing() {
    let relay = Relay::start(&[]);
    let mut p = pair(&relay).await;
    p.mac.binary(vec![1]).await;
    assert_eq!(p.browser.recv().await, Got::Binary(vec![1]));
    let mut thief = relay.browser().await;
    thief
        .json(resume_msg(&p.session_id, &p.browser_token, 99))
        .await;
    let err = thief.expect_error("INVALID_RESUME").await;
    assert!(
        err["message"].as_str().unwrap().contains("lastSeq"),
        "{err}"
    );
    // The live browser was not replaced.
    p.mac.binary(vec![2]).await;
    assert_eq!(p.browser.recv().await, Got::Binary(vec![2]));
}

#[tokio::test]
async fn a_mac_that_comes_back_learns_what_happened_while_away() {
    let relay = Relay::start(&[]);
    let r = register(&relay).await;
    let (session, token, code) = (r.session_id.clone(), r.token.clone(), r.code.clone());
    r.ws.drop_connection();
    // A browser joins while the mac is away: it is told the mac is away.
    let mut b = relay.browser().await;
    b.json(json!({"type": "join", "code": code})).await;
    b.expect("joined").await;
    b.expect("peer_disconnected").await;
    b.binary(vec![42]).await;

    let mut mac = relay.mac().await;
    mac.json(resume_msg(&session, &token, 0)).await;
    assert_eq!(mac.expect("resumed").await["lastSeq"], 0);
    mac.expect("peer_joined").await;
    assert_eq!(mac.recv().await, Got::Binary(vec![42]));
    b.expect("peer_resumed").await;
}

#[tokio::test]
async fn resume_works_on_either_endpoint_only_for_its_own_side() {
    let relay = Relay::start(&[]);
    let p = pair(&relay).await;
    // The mac's token on /browser is not the browser's token.
    let mut wrong = relay.browser().await;
    wrong.json(resume_msg(&p.session_id, &p.mac_token, 0)).await;
    wrong.expect_error("INVALID_RESUME").await;
}

#[tokio::test]
async fn a_takeover_while_the_old_connection_still_sends_duplicates_nothing() {
    const N: u64 = 100_000;
    let relay = Relay::start(&[("RELAY_RESUME_BUFFER_FRAMES", "100000")]);
    let p = pair(&relay).await;
    let (session, token) = (p.session_id.clone(), p.browser_token.clone());
    let (_mac_tx, mut mac_rx) = p.mac.into_inner().split();
    let stayer = tokio::spawn(async move { collect(&mut mac_rx, N as usize).await });
    // The old connection sends as fast as it can and, while the relay is
    // still reading it (about 100 frames behind, measured), a new one takes
    // the side over: what the old socket pushes after the count is refused
    // (the fence), not delivered ahead of the same frames sent again.
    let (mut old_tx, old_rx) = p.browser.into_inner().split();
    send_range(&mut old_tx, 1, N / 2).await;
    let mut ws = Ws::connect(&relay.url("/browser")).await;
    ws.json(resume_msg(&session, &token, 0)).await;
    let accepted = ws.expect("resumed").await["lastSeq"].as_u64().unwrap();
    let (mut tx, _rx) = ws.into_inner().split();
    send_range(&mut tx, accepted + 1, N).await;
    let (got, _) = stayer.await.unwrap();
    assert_sequence(&got, N, "the mac received");
    drop((old_tx, old_rx));
}
