//! A room host's `guestSeqs` on its resume, against a scripted relay.

use bytes::Bytes;
use relay_protocol::client::{Client, Data, Event};
use relay_protocol::{AdmitMode, GuestId};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{config, until};
use crate::support::WAIT;

/// What a scripted relay reads next from the client: its next text frame
/// as a message (pings and pongs skipped).
async fn next_message(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
) -> relay_protocol::ClientMessage {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the client said nothing in time")
            .expect("the client closed")
            .expect("a WebSocket frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return relay_protocol::ClientMessage::parse(&t).expect("a client message");
        }
    }
}

/// The host's `resume` carries `guestSeqs`: what it read from each guest,
/// counted from the `from` tags (data only), adding up to its `lastSeq`. A
/// relay that lost the merged order (its node died) needs exactly this; no
/// relay shows what a client sent, so the relay here is a script that
/// plays the room's frames and then drops the connection.
#[tokio::test]
async fn a_room_host_resumes_with_what_it_read_from_each_guest() {
    use futures_util::SinkExt;
    use relay_protocol::{ClientMessage, GuestSeqs, ServerMessage};
    use tokio_tungstenite::tungstenite::Message;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (host, mut hev) = Client::mac(config(&[url]).with_room(4, AdmitMode::Auto));

    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let hello = next_message(&mut ws).await;
    assert!(matches!(hello, ClientMessage::Register { .. }), "{hello:?}");
    let text = |m: ServerMessage| Message::text(m.to_text());
    let from = |g: GuestId| text(ServerMessage::From { guest_id: g });
    let bin = |s: &'static str| Message::binary(Bytes::from_static(s.as_bytes()));
    let script = [
        text(ServerMessage::Registered {
            code: "6YM9AQ".into(),
            expires_at: 0,
            session_id: "s".into(),
            resume_token: "t".into(),
            max_guests: Some(4),
            admit: Some(AdmitMode::Auto),
        }),
        from(1),
        bin("a1"),
        bin("a2"),
        // Not a data frame: counted nowhere.
        text(ServerMessage::GuestBack { guest_id: 1 }),
        from(3),
        bin("c1"),
        from(1),
        bin("a3"),
    ];
    for m in script {
        ws.send(m).await.unwrap();
    }
    for want in ["a1", "a2", "c1", "a3"] {
        let got = until(&mut hev, want, |e| match e {
            Event::GuestData {
                guest,
                data: Data::Binary(b),
            } => Some((*guest, b.clone())),
            _ => None,
        })
        .await;
        assert_eq!(got.1, Bytes::from_static(want.as_bytes()), "{got:?}");
        assert_eq!(got.0, if want == "c1" { 3 } else { 1 });
    }
    // The network fails; the client resumes on its own.
    drop(ws);
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let ClientMessage::Resume {
        session_id,
        resume_token,
        last_seq,
        guest_seqs,
    } = next_message(&mut ws).await
    else {
        panic!("not a resume")
    };
    assert_eq!((session_id.as_str(), resume_token.as_str()), ("s", "t"));
    assert_eq!(last_seq, 4);
    assert_eq!(guest_seqs, GuestSeqs::from([(1, 3), (3, 1)]));
    host.leave().await;
}
