//! The encryption task on its own, as a room host or a pairing's host: the
//! test plays the connection task below it (answering each frame it is
//! handed) and each guest or the browser (with the joiner's state machine),
//! so every frame the task writes can be checked: for whom, sealed with
//! which keys, under which number.

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Duration;

use super::{Side, Task, run, text_payload};
use crate::client::outbox::{Addressed, OutFrame, Target};
use crate::client::{Command, Data, Ended, Event, QueueFull, SendError};
use crate::e2e::{Binding, Channel, Handshake, HostHello, JoinerConfirm, Payload, Plain, Secret};
use crate::{ClientMessage, GuestId, SessionCode};

const CODE: &str = "6YM9AQ";
/// Far longer than any step takes: only a task that is stuck reaches it.
const STUCK: Duration = Duration::from_secs(20);

/// The application's handle, the connection task's side, and the code's secret.
struct Rig {
    app: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    conn: mpsc::Receiver<Command>,
    conn_events: mpsc::Sender<Event>,
    secret: Secret,
}

impl Rig {
    /// A room host registered with [`CODE`]; `timeout` for each guest's exchange.
    async fn start(timeout: Duration) -> Rig {
        Rig::start_as(Side::RoomHost, timeout).await
    }

    /// `side` (a host) registered with [`CODE`]; `timeout` for each exchange.
    async fn start_as(side: Side, timeout: Duration) -> Rig {
        let mut rig = Rig::spawn(side, timeout, Secret::generate());
        rig.conn_events
            .send(Event::Registered {
                code: CODE.into(),
                expires_at: 0,
                page: "http://h/".into(),
            })
            .await
            .unwrap();
        let Some(Event::Registered { code, .. }) = rig.events.recv().await else {
            panic!("no registered");
        };
        let secret = code.strip_prefix(&format!("{CODE}-")).expect("a full code");
        rig.secret = crate::e2e::FullCode::parse(&format!("{CODE}{secret}"))
            .unwrap()
            .secret
            .unwrap();
        rig
    }

    /// The task as `side`, nothing told yet; `secret` is the rig's until
    /// the task draws one (a host's registration).
    fn spawn(side: Side, timeout: Duration, secret: Secret) -> Rig {
        let (app, commands) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(64);
        let (inner, conn) = mpsc::channel(64);
        let (conn_events, inner_events) = mpsc::channel(64);
        let (_guest_tx, guest_rx) = watch::channel(None);
        tokio::spawn(run(Task::new(
            side,
            timeout,
            guest_rx,
            commands,
            events_tx,
            inner,
            inner_events,
        )));
        Rig {
            app,
            events,
            conn,
            conn_events,
            secret,
        }
    }

    /// The next frame handed to the connection task, answered with `answer`.
    async fn frame_answered(&mut self, answer: Result<(), SendError>) -> (Target, OutFrame) {
        match self.conn.recv().await {
            Some(Command::Send(Addressed { to, frame }, reply)) => {
                let _ = reply.send(answer);
                (to, frame)
            }
            Some(other) => panic!("a frame expected, got {other:?}"),
            None => panic!("the task ended"),
        }
    }

    async fn frame(&mut self) -> (Target, OutFrame) {
        self.frame_answered(Ok(())).await
    }

    /// The next handshake message for guest `g`.
    async fn handshake_for(&mut self, g: GuestId) -> Handshake {
        let (to, frame) = self.frame().await;
        assert_eq!(
            to,
            Target::Guest(g),
            "a handshake message for another guest"
        );
        let OutFrame::Text(t) = frame else {
            panic!("a handshake message is text")
        };
        match Payload::parse(&text_payload(&t)) {
            Payload::Handshake(h) => h,
            other => panic!("not a handshake message: {other:?}"),
        }
    }

    async fn guest_says(&self, g: GuestId, h: &Handshake) {
        let data = Data::Text(h.to_payload());
        self.conn_events
            .send(Event::GuestData { guest: g, data })
            .await
            .unwrap();
    }

    /// Admits guest `g`, which answers with `secret`; returns its channel
    /// once the host confirmed (`None` when the host refused its tag).
    async fn admit(&mut self, g: GuestId, secret: &Secret) -> Option<Channel> {
        self.conn_events
            .send(Event::GuestAdmitted(g))
            .await
            .unwrap();
        let Handshake::HostHello { sid, share } = self.handshake_for(g).await else {
            panic!("no hello for guest {g}");
        };
        let relay = SessionCode::parse(CODE).unwrap();
        let binding = Binding::new(relay, secret.clone(), Some(g));
        let (state, [hello, confirm]) = JoinerConfirm::answer(&binding, &sid, &share).unwrap();
        self.guest_says(g, &hello).await;
        self.guest_says(g, &confirm).await;
        match self.handshake_for(g).await {
            Handshake::Confirm { tag } => {
                let channel = state.on_confirm(&tag).expect("the host's tag verifies");
                assert_eq!(self.event().await, Event::GuestEncrypted(g));
                assert_eq!(self.event().await, Event::GuestAdmitted(g));
                Some(channel)
            }
            other => {
                assert_eq!(other, Handshake::Abort(crate::e2e::AbortReason::Mismatch));
                None
            }
        }
    }

    /// A pairing's host: the browser joins with `secret` and answers the
    /// host's `hello`; returns the browser's state, waiting for the host's
    /// `confirm`, which the connection task has not taken yet.
    async fn browser_answers(&mut self, secret: &Secret) -> JoinerConfirm {
        self.conn_events.send(Event::PeerJoined).await.unwrap();
        let (to, OutFrame::Text(t)) = self.frame().await else {
            panic!("a handshake message is text")
        };
        assert_eq!(to, Target::All);
        let Payload::Handshake(Handshake::HostHello { sid, share }) =
            Payload::parse(&text_payload(&t))
        else {
            panic!("no hello for the browser");
        };
        let binding = Binding::new(SessionCode::parse(CODE).unwrap(), secret.clone(), None);
        let (state, msgs) = JoinerConfirm::answer(&binding, &sid, &share).unwrap();
        for h in msgs {
            let data = Data::Text(h.to_payload());
            self.conn_events.send(Event::Data(data)).await.unwrap();
        }
        state
    }

    /// The host's next frame to all, as a handshake message.
    async fn handshake(&mut self) -> Handshake {
        let (to, OutFrame::Text(t)) = self.frame().await else {
            panic!("a handshake message is text")
        };
        assert_eq!(to, Target::All);
        match Payload::parse(&text_payload(&t)) {
            Payload::Handshake(h) => h,
            other => panic!("not a handshake message: {other:?}"),
        }
    }

    /// Plays the connection task handing over `events` (a busy relay, or
    /// a peer sending much), while taking no command.
    fn feed(&self, events: Vec<Event>) -> tokio::task::JoinHandle<()> {
        let conn_events = self.conn_events.clone();
        tokio::spawn(async move {
            for ev in events {
                conn_events.send(ev).await.unwrap();
            }
        })
    }

    /// The application's next event (a task that stopped answering fails
    /// the test instead of hanging it).
    async fn event(&mut self) -> Event {
        tokio::time::timeout(STUCK, self.events.recv())
            .await
            .expect("the task is stuck")
            .expect("an event")
    }

    /// The application sends `text` to `to`; returns the task's reply channel.
    async fn send(&self, to: Target, text: &str) -> oneshot::Receiver<Result<(), SendError>> {
        let frame =
            OutFrame::Text(serde_json::json!({"type": "data", "payload": text}).to_string());
        let (tx, rx) = oneshot::channel();
        self.app
            .send(Command::Send(Addressed { to, frame }, tx))
            .await
            .unwrap();
        rx
    }

    /// The next frame, sealed for guest `g`: its bytes.
    async fn sealed_for(&mut self, g: GuestId, answer: Result<(), SendError>) -> Vec<u8> {
        let (to, frame) = self.frame_answered(answer).await;
        assert_eq!(to, Target::Guest(g));
        let OutFrame::Binary(b) = frame else {
            panic!("a sealed frame is binary")
        };
        b.to_vec()
    }
}

fn text(t: &str) -> Plain {
    Plain::Text(t.into())
}

#[tokio::test]
async fn a_frame_to_all_is_sealed_for_each_guest_with_its_own_keys() {
    let mut rig = Rig::start(Duration::from_secs(30)).await;
    let secret = rig.secret.clone();
    let mut one = rig.admit(1, &secret).await.unwrap();
    let mut two = rig.admit(2, &secret).await.unwrap();

    let reply = rig.send(Target::All, "to all").await;
    let for_one = rig.sealed_for(1, Ok(())).await;
    let for_two = rig.sealed_for(2, Ok(())).await;
    assert_eq!(reply.await.unwrap(), Ok(()));
    // Each guest's keys open its own frame and not the other's.
    assert!(one.opener.open(&for_two).is_err());
    assert_eq!(one.opener.open(&for_one).unwrap(), text("to all"));
    assert_eq!(two.opener.open(&for_two).unwrap(), text("to all"));

    // A frame for one guest goes to it alone; both numbers stay in step.
    let reply = rig.send(Target::Guest(2), "to two").await;
    let f = rig.sealed_for(2, Ok(())).await;
    assert_eq!(reply.await.unwrap(), Ok(()));
    assert_eq!(two.opener.open(&f).unwrap(), text("to two"));
    let reply = rig.send(Target::All, "again").await;
    let (f1, f2) = (
        rig.sealed_for(1, Ok(())).await,
        rig.sealed_for(2, Ok(())).await,
    );
    assert_eq!(reply.await.unwrap(), Ok(()));
    assert_eq!(one.opener.open(&f1).unwrap(), text("again"));
    assert_eq!(two.opener.open(&f2).unwrap(), text("again"));

    // A guest's frames open with its keys and come tagged with it.
    let sealed = two.sealer.seal(&text("from two"));
    let data = Data::Binary(sealed.into());
    rig.conn_events
        .send(Event::GuestData { guest: 2, data })
        .await
        .unwrap();
    assert_eq!(
        rig.event().await,
        Event::GuestData {
            guest: 2,
            data: Data::Text("from two".into())
        }
    );
    // No keys for a guest that is not in: nothing is sealed for it.
    let reply = rig.send(Target::Guest(9), "nobody").await;
    assert_eq!(reply.await.unwrap(), Err(SendError::NotPaired));
}

#[tokio::test]
async fn a_guest_with_a_wrong_secret_or_a_bad_frame_is_removed_and_the_rest_go_on() {
    let mut rig = Rig::start(Duration::from_secs(30)).await;
    let secret = rig.secret.clone();
    let mut one = rig.admit(1, &secret).await.unwrap();
    let wrong = crate::e2e::FullCode::parse(&format!("{CODE}33333"))
        .unwrap()
        .secret
        .unwrap();
    let wrong = if wrong == secret {
        crate::e2e::FullCode::parse(&format!("{CODE}44444"))
            .unwrap()
            .secret
            .unwrap()
    } else {
        wrong
    };
    assert!(
        rig.admit(2, &wrong).await.is_none(),
        "a wrong tag was confirmed"
    );
    let remove = |c: Option<Command>, g| match c {
        Some(Command::Room(ClientMessage::Remove { guest_id }, reply)) if guest_id == g => {
            let _ = reply.send(Ok(()));
        }
        other => panic!("no remove of guest {g}: {other:?}"),
    };
    remove(rig.conn.recv().await, 2);
    assert_eq!(
        rig.event().await,
        Event::GuestFailed {
            guest: 2,
            why: Ended::CodeMismatch
        }
    );

    // A third guest whose frame was tampered with is removed too.
    let three = rig.admit(3, &secret).await.unwrap();
    let mut bad = three.sealer.seal(&text("x"));
    bad[5] ^= 1;
    let data = Data::Binary(bad.into());
    rig.conn_events
        .send(Event::GuestData { guest: 3, data })
        .await
        .unwrap();
    remove(rig.conn.recv().await, 3);
    assert!(matches!(
        rig.event().await,
        Event::GuestFailed {
            guest: 3,
            why: Ended::Tampered(_)
        }
    ));

    // The room goes on: frames to all reach guest 1 alone.
    let reply = rig.send(Target::All, "still here").await;
    let f = rig.sealed_for(1, Ok(())).await;
    assert_eq!(reply.await.unwrap(), Ok(()));
    assert_eq!(one.opener.open(&f).unwrap(), text("still here"));
}

#[tokio::test]
async fn a_frame_to_all_refused_part_way_is_sent_again_only_to_the_guests_it_missed() {
    let mut rig = Rig::start(Duration::from_secs(30)).await;
    let secret = rig.secret.clone();
    let mut one = rig.admit(1, &secret).await.unwrap();
    let mut two = rig.admit(2, &secret).await.unwrap();
    let full = SendError::Full(QueueFull {
        frames: 1,
        bytes: 1,
    });

    let reply = rig.send(Target::All, "first").await;
    let f1 = rig.sealed_for(1, Ok(())).await;
    let _refused = rig.sealed_for(2, Err(full.clone())).await;
    assert_eq!(reply.await.unwrap(), Err(full));
    // The application tries again: only guest 2 gets it, under the number
    // the refused frame did not take.
    let reply = rig.send(Target::All, "first").await;
    let f2 = rig.sealed_for(2, Ok(())).await;
    assert_eq!(reply.await.unwrap(), Ok(()));
    assert_eq!(one.opener.open(&f1).unwrap(), text("first"));
    assert_eq!(two.opener.open(&f2).unwrap(), text("first"));
    let reply = rig.send(Target::All, "second").await;
    let (g1, g2) = (
        rig.sealed_for(1, Ok(())).await,
        rig.sealed_for(2, Ok(())).await,
    );
    assert_eq!(reply.await.unwrap(), Ok(()));
    assert_eq!(one.opener.open(&g1).unwrap(), text("second"));
    assert_eq!(two.opener.open(&g2).unwrap(), text("second"));
}

#[tokio::test]
async fn a_guest_that_never_answers_is_removed_when_its_exchange_times_out() {
    let mut rig = Rig::start(Duration::from_millis(50)).await;
    rig.conn_events.send(Event::GuestAdmitted(4)).await.unwrap();
    assert!(matches!(
        rig.handshake_for(4).await,
        Handshake::HostHello { .. }
    ));
    assert_eq!(
        rig.handshake_for(4).await,
        Handshake::Abort(crate::e2e::AbortReason::Timeout)
    );
    match rig.conn.recv().await {
        Some(Command::Room(ClientMessage::Remove { guest_id: 4 }, reply)) => {
            let _ = reply.send(Ok(()));
        }
        other => panic!("no remove: {other:?}"),
    }
    assert!(matches!(
        rig.event().await,
        Event::GuestFailed {
            guest: 4,
            why: Ended::NotEncrypted(_)
        }
    ));
}

#[tokio::test]
async fn guests_frames_keep_flowing_while_the_connection_task_has_not_taken_a_handshake() {
    let mut rig = Rig::start(Duration::from_secs(30)).await;
    let secret = rig.secret.clone();
    let mut one = rig.admit(1, &secret).await.unwrap();
    let frames: Vec<Vec<u8>> = (0..500)
        .map(|i| {
            let f = one.sealer.seal(&text(&i.to_string()));
            one.sealer.sent();
            f
        })
        .collect();
    // Guest 2 comes in, then guest 1 sends far more than the channels
    // hold, and the connection task takes no command meanwhile: the host
    // must not wait for guest 2's hello to be taken before reading on.
    let conn_events = rig.conn_events.clone();
    let feeder = tokio::spawn(async move {
        conn_events.send(Event::GuestAdmitted(2)).await.unwrap();
        for f in frames {
            let data = Data::Binary(f.into());
            conn_events
                .send(Event::GuestData { guest: 1, data })
                .await
                .unwrap();
        }
    });
    for i in 0..500 {
        let want = Event::GuestData {
            guest: 1,
            data: Data::Text(i.to_string()),
        };
        assert_eq!(rig.event().await, want);
    }
    feeder.await.unwrap();
    assert!(matches!(
        rig.handshake_for(2).await,
        Handshake::HostHello { .. }
    ));
}

#[tokio::test]
async fn a_pairing_host_reads_on_while_the_connection_task_has_not_taken_its_confirm() {
    let mut rig = Rig::start_as(Side::Host, Duration::from_secs(30)).await;
    let secret = rig.secret.clone();
    let browser = rig.browser_answers(&secret).await;
    // The connection task hands over far more than the channels hold
    // before it takes the host's `confirm`: the host must not wait for it.
    let latencies: Vec<Event> = (0..500)
        .map(|i| Event::Latency(Duration::from_millis(i)))
        .collect();
    let feeder = rig.feed(latencies.clone());
    assert_eq!(rig.event().await, Event::Encrypted);
    assert_eq!(rig.event().await, Event::PeerJoined);
    for want in latencies {
        assert_eq!(rig.event().await, want);
    }
    feeder.await.unwrap();
    let Handshake::Confirm { tag } = rig.handshake().await else {
        panic!("no confirm for the browser");
    };
    browser.on_confirm(&tag).expect("the host's tag verifies");
}

#[tokio::test]
async fn a_pairing_host_leaving_while_its_app_reads_late_still_ends_the_session_sealed() {
    let mut rig = Rig::start_as(Side::Host, Duration::from_secs(30)).await;
    let secret = rig.secret.clone();
    let browser = rig.browser_answers(&secret).await;
    let Handshake::Confirm { tag } = rig.handshake().await else {
        panic!("no confirm for the browser");
    };
    let mut browser = browser.on_confirm(&tag).unwrap();
    assert_eq!(rig.event().await, Event::Encrypted);
    assert_eq!(rig.event().await, Event::PeerJoined);
    // The application leaves, then reads its events late, while the
    // browser's frames (more than the channels hold) are still coming and
    // the connection task takes no command.
    let frames: Vec<Event> = (0..500)
        .map(|i| {
            let f = browser.sealer.seal(&text(&i.to_string()));
            browser.sealer.sent();
            Event::Data(Data::Binary(f.into()))
        })
        .collect();
    rig.app.send(Command::Leave).await.unwrap();
    let feeder = rig.feed(frames);
    for i in 0..500 {
        assert_eq!(rig.event().await, Event::Data(Data::Text(i.to_string())));
    }
    feeder.await.unwrap();
    // Then the sealed end, and the leave behind it.
    let (to, OutFrame::Binary(end)) = rig.frame().await else {
        panic!("the end frame is sealed binary")
    };
    assert_eq!(to, Target::All);
    assert_eq!(browser.opener.open(&end).unwrap(), Plain::End);
    assert!(matches!(rig.conn.recv().await, Some(Command::Leave)));
}

#[tokio::test]
async fn a_joiner_reads_on_while_the_connection_task_has_not_taken_its_answer() {
    let secret = Secret::generate();
    let code = SessionCode::parse(CODE).unwrap();
    let side = Side::Joiner(code.clone(), Some(secret.clone()));
    let mut rig = Rig::spawn(side, Duration::from_secs(30), secret.clone());
    rig.conn_events.send(Event::Joined).await.unwrap();
    // The mac (the test, with the host's state machine) says hello.
    let (mac, hello) = HostHello::start(&Binding::new(code, secret, None));
    let data = Data::Text(hello.to_payload());
    rig.conn_events.send(Event::Data(data)).await.unwrap();
    // The connection task hands over far more than the channels hold
    // before it takes the joiner's answer: the joiner must not wait for it.
    let latencies: Vec<Event> = (0..500)
        .map(|i| Event::Latency(Duration::from_millis(i)))
        .collect();
    let feeder = rig.feed(latencies.clone());
    for want in latencies {
        assert_eq!(rig.event().await, want);
    }
    feeder.await.unwrap();
    let Handshake::JoinerHello { share } = rig.handshake().await else {
        panic!("no hello from the joiner");
    };
    let Handshake::Confirm { tag } = rig.handshake().await else {
        panic!("no confirm from the joiner");
    };
    let (_, confirm) = mac
        .on_share(&share)
        .unwrap()
        .on_confirm(&tag)
        .expect("the joiner's tag verifies");
    let data = Data::Text(confirm.to_payload());
    rig.conn_events.send(Event::Data(data)).await.unwrap();
    assert_eq!(rig.event().await, Event::Encrypted);
    assert_eq!(rig.event().await, Event::Joined);
}
