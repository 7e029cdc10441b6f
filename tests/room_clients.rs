//! The Rust client as a room host and as guests, against a real relay:
//! admission, denial and removal, frames to all or one and back tagged by
//! guest, and resumes on either side with nothing lost, duplicated or sent
//! to the wrong guest. Dropped connections go through a TCP proxy that can
//! swallow what a client writes and then cut it, so frames are really lost
//! in flight and must be sent again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use relay_protocol::client::{Client, Data, Ended, Event, Events, SendError, Target};
use relay_protocol::{AdmitMode, ErrorCode, GuestId, GuestLeftReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::client::{config, until};
use crate::support::{Relay, WAIT};

mod guest_seqs;

/// One connection through the proxy.
struct Link {
    /// Swallow what the client writes instead of passing it on.
    hold: Arc<AtomicBool>,
    cut: Option<oneshot::Sender<()>>,
}

/// A TCP proxy in front of the relay that can hold a client's bytes and
/// cut its connections, the way a network that fails does.
pub(crate) struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Link>>>,
    /// Bytes from clients swallowed while held.
    held: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(relay: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Vec::<Link>::new()));
        let held = Arc::new(AtomicUsize::new(0));
        let (l, h) = (Arc::clone(&links), Arc::clone(&held));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(relay).await else {
                    continue;
                };
                let hold = Arc::new(AtomicBool::new(false));
                let (cut_tx, cut_rx) = oneshot::channel();
                l.lock().unwrap().push(Link {
                    hold: Arc::clone(&hold),
                    cut: Some(cut_tx),
                });
                tokio::spawn(pass(client, upstream, hold, Arc::clone(&h), cut_rx));
            }
        });
        Proxy {
            addr,
            links,
            held,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// From now on, what the clients connected now write goes nowhere.
    pub(crate) fn hold(&self) {
        for l in self.links.lock().unwrap().iter() {
            l.hold.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until at least `n` bytes were swallowed.
    pub(crate) async fn wait_held(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.held.load(Ordering::SeqCst) < n {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the client did not write {n} bytes in time"));
    }

    /// Cuts every connection open now; later ones pass.
    pub(crate) fn cut(&self) {
        for mut l in self.links.lock().unwrap().drain(..) {
            if let Some(c) = l.cut.take() {
                let _ = c.send(());
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Copies both ways until either side ends or the link is cut; then drops
/// both sockets, which each side sees as a dropped network.
async fn pass(
    client: TcpStream,
    upstream: TcpStream,
    hold: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    cut: oneshot::Receiver<()>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if hold.load(Ordering::SeqCst) {
                held.fetch_add(n, Ordering::SeqCst);
            } else if uw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
}

/// A room host: registered, with the code its guests join with.
async fn room_host(url: &str, max_guests: u32, admit: AdmitMode) -> (Client, Events, String) {
    let (host, mut ev) = Client::mac(config(&[url.to_owned()]).with_room(max_guests, admit));
    let code = until(&mut ev, "registered", |e| match e {
        Event::Registered { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    (host, ev, code)
}

/// A guest of an `auto` room, in: its client, events and id.
async fn admitted(url: &str, code: &str, host_ev: &mut Events) -> (Client, Events, GuestId) {
    let (g, mut ev) = Client::browser(config(&[url.to_owned()]), code);
    until(&mut ev, "joined", |e| {
        matches!(e, Event::Joined).then_some(())
    })
    .await;
    let id = g.guest_id().expect("a guest id once joined");
    until(host_ev, "guest_admitted", |e| match e {
        Event::GuestAdmitted(g) if *g == id => Some(()),
        _ => None,
    })
    .await;
    (g, ev, id)
}

/// The next text payload a guest receives.
async fn text(ev: &mut Events, what: &str) -> String {
    until(ev, what, |e| match e {
        Event::Data(Data::Text(t)) => Some(t.clone()),
        _ => None,
    })
    .await
}

/// How a guest client ended.
async fn refused(ev: &mut Events, what: &str) -> ErrorCode {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, ev.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} in time"))
            .unwrap_or_else(|| panic!("events ended before {what}"));
        match e {
            Event::Ended(Ended::Refused { code, .. }) => return code,
            Event::Ended(other) => panic!("{what}: ended otherwise: {other}"),
            Event::Retrying { cause, .. } => panic!("{what}: retried ({cause})"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_host_admits_denies_removes_and_addresses_its_guests() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (host, mut hev, code) = room_host(&url, 3, AdmitMode::Ask).await;

    // Three people ask; the host sees each with the name given.
    let mut guests = Vec::new();
    for name in ["Ana", "Bo", "Cy"] {
        let (g, mut ev) =
            Client::browser(config(std::slice::from_ref(&url)).with_name(name), &code);
        let id = until(&mut ev, "waiting", |e| match e {
            Event::Waiting { guest } => Some(*guest),
            _ => None,
        })
        .await;
        assert_eq!(g.guest_id(), Some(id));
        let heard = until(&mut hev, "guest_joined", |e| match e {
            Event::GuestJoined { guest, name } => Some((*guest, name.clone())),
            _ => None,
        })
        .await;
        assert_eq!(heard, (id, Some(name.to_owned())));
        // Waiting is not in: nothing can be sent yet.
        assert_eq!(g.send_text("early").await, Err(SendError::NotPaired));
        guests.push((g, ev, id));
    }
    let (cy, mut cy_ev, cy_id) = guests.pop().unwrap();
    let (bo, mut bo_ev, bo_id) = guests.pop().unwrap();
    let (ana, mut ana_ev, ana_id) = guests.pop().unwrap();

    // Sent before the admissions: it must reach no one of them.
    host.send_text("before anyone").await.unwrap();
    host.admit(ana_id).await.unwrap();
    host.admit(bo_id).await.unwrap();
    host.deny(cy_id).await.unwrap();
    for (ev, id) in [(&mut ana_ev, ana_id), (&mut bo_ev, bo_id)] {
        until(ev, "joined", |e| matches!(e, Event::Joined).then_some(())).await;
        let admitted = until(&mut hev, "guest_admitted", |e| match e {
            Event::GuestAdmitted(g) => Some(*g),
            _ => None,
        })
        .await;
        assert_eq!(admitted, id);
    }
    assert_eq!(refused(&mut cy_ev, "denied").await, ErrorCode::Denied);
    assert_eq!(cy.send_text("x").await, Err(SendError::Ended));
    let left = until(&mut hev, "guest_left", |e| match e {
        Event::GuestLeft { guest, reason } => Some((*guest, *reason)),
        _ => None,
    })
    .await;
    assert_eq!(left, (cy_id, GuestLeftReason::Denied));

    // To all, to one, to all again.
    host.send_text("hello all").await.unwrap();
    host.send_text_to(Target::Guest(bo_id), "only Bo")
        .await
        .unwrap();
    host.send_text_to(Target::All, "all again").await.unwrap();
    assert_eq!(text(&mut ana_ev, "Ana 1").await, "hello all");
    assert_eq!(text(&mut ana_ev, "Ana 2").await, "all again");
    assert_eq!(text(&mut bo_ev, "Bo 1").await, "hello all");
    assert_eq!(text(&mut bo_ev, "Bo 2").await, "only Bo");
    assert_eq!(text(&mut bo_ev, "Bo 3").await, "all again");

    // What each guest sends reaches the host tagged with it, text and binary.
    ana.send_text("from Ana").await.unwrap();
    bo.send_binary(Bytes::from_static(b"\x00from Bo\xff"))
        .await
        .unwrap();
    ana.send_binary(Bytes::from_static(b"Ana bytes"))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            until(&mut hev, "guest data", |e| match e {
                Event::GuestData { guest, data } => Some((*guest, data.clone())),
                Event::Data(d) => panic!("untagged data at a room host: {d:?}"),
                _ => None,
            })
            .await,
        );
    }
    let from = |id: GuestId| -> Vec<&Data> {
        got.iter()
            .filter(|(g, _)| *g == id)
            .map(|(_, d)| d)
            .collect()
    };
    assert_eq!(
        from(ana_id),
        [
            &Data::Text("from Ana".into()),
            &Data::Binary(Bytes::from_static(b"Ana bytes"))
        ]
    );
    assert_eq!(
        from(bo_id),
        [&Data::Binary(Bytes::from_static(b"\x00from Bo\xff"))]
    );

    // Bo is removed: told REMOVED, not retried; what follows reaches Ana only.
    host.remove(bo_id).await.unwrap();
    host.send_text("after Bo left").await.unwrap();
    let code = until(&mut bo_ev, "removed", |e| match e {
        Event::Data(Data::Text(t)) if t == "after Bo left" => panic!("a removed guest got a frame"),
        Event::Retrying { .. } => panic!("a removed guest retried"),
        Event::Ended(Ended::Refused { code, .. }) => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::Removed);
    assert_eq!(text(&mut ana_ev, "Ana 3").await, "after Bo left");
    let left = until(&mut hev, "guest_left", |e| match e {
        Event::GuestLeft { guest, reason } => Some((*guest, *reason)),
        _ => None,
    })
    .await;
    assert_eq!(left, (bo_id, GuestLeftReason::Removed));

    // Commands naming no guest in the room are the relay's to refuse.
    host.admit(bo_id).await.unwrap();
    let e = until(&mut hev, "UNKNOWN_GUEST", |e| match e {
        Event::Error { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(e, ErrorCode::UnknownGuest);
    // Guests cannot address anyone.
    assert_eq!(ana.remove(1).await, Err(SendError::NotRoomHost));
    assert_eq!(
        ana.send_text_to(Target::Guest(1), "x").await,
        Err(SendError::NotRoomHost)
    );
}

/// The binary frame numbered `n` for guest `to` (0: to all).
fn numbered(to: GuestId, n: u32) -> Bytes {
    let mut b = vec![to as u8];
    b.extend_from_slice(&n.to_be_bytes());
    Bytes::from(b)
}

/// Receives data until `want` came, in order and nothing else.
async fn expect_exactly(ev: &mut Events, want: &[Bytes], who: &str) -> Vec<Event> {
    let mut others = Vec::new();
    for (i, w) in want.iter().enumerate() {
        loop {
            let e = until(ev, &format!("{who}: frame {i}"), |e| Some(e.clone())).await;
            match e {
                Event::Data(Data::Binary(b)) => {
                    assert_eq!(
                        &b, w,
                        "{who}: frame {i} wrong (lost, duplicated, misrouted)"
                    );
                    break;
                }
                Event::Data(d) => panic!("{who}: unexpected {d:?}"),
                other => others.push(other),
            }
        }
    }
    others
}

/// Receives `n` numbered frames from each guest at the host, each guest's
/// in order and tagged with it.
async fn host_gets(ev: &mut Events, guests: &[GuestId], n: u32) -> Vec<Event> {
    let mut next = vec![1u32; guests.len()];
    let mut others = Vec::new();
    while next.iter().any(|&k| k <= n) {
        let e = until(ev, "guest frames", |e| Some(e.clone())).await;
        match e {
            Event::GuestData {
                guest,
                data: Data::Binary(b),
            } => {
                let i = guests
                    .iter()
                    .position(|g| *g == guest)
                    .expect("a known guest");
                assert_eq!(b[0] as u64, guest, "tagged with another guest");
                let k = u32::from_be_bytes(b[1..5].try_into().unwrap());
                assert_eq!(k, next[i], "guest {guest}: lost, duplicated or reordered");
                next[i] += 1;
            }
            Event::GuestData { data, .. } | Event::Data(data) => panic!("unexpected {data:?}"),
            other => others.push(other),
        }
    }
    others
}

/// Sends `from..=to` numbered frames from a guest.
async fn guest_sends(g: &Client, id: GuestId, from: u32, to: u32) {
    for k in from..=to {
        g.send_binary(numbered(id, k)).await.unwrap();
    }
}

#[tokio::test]
async fn a_guest_whose_connection_drops_resumes_with_nothing_lost() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let proxy = Proxy::start(relay.addr).await;
    let (host, mut hev, code) = room_host(&url, 2, AdmitMode::Auto).await;
    let (a, mut aev, a_id) = admitted(&proxy.url(), &code, &mut hev).await;
    let (b, mut bev, b_id) = admitted(&url, &code, &mut hev).await;
    let all: Vec<Bytes> = (1..=300).map(|k| numbered(0, k)).collect();

    let host_side = async {
        for f in &all[..150] {
            host.send_binary(f.clone()).await.unwrap();
        }
        // a's network swallows what it writes, then fails.
        proxy.hold();
        guest_sends(&a, a_id, 1, 100).await;
        proxy.wait_held(100 * 9).await;
        proxy.cut();
        for f in &all[150..] {
            host.send_binary(f.clone()).await.unwrap();
        }
        guest_sends(&a, a_id, 101, 200).await;
    };
    let (_, a_others, _, host_others) = tokio::join!(
        host_side,
        expect_exactly(&mut aev, &all, "a"),
        expect_exactly(&mut bev, &all, "b"),
        async {
            guest_sends(&b, b_id, 1, 200).await;
            host_gets(&mut hev, &[a_id, b_id], 200).await
        },
    );
    assert!(
        a_others.iter().any(|e| matches!(e, Event::Resumed)),
        "{a_others:?}"
    );
    // The host heard a go and come back (or nothing, had it come back first).
    let heard: Vec<&Event> = host_others
        .iter()
        .filter(|e| matches!(e, Event::GuestAway(_) | Event::GuestBack(_)))
        .collect();
    assert!(
        heard.is_empty() || heard == [&Event::GuestAway(a_id), &Event::GuestBack(a_id)],
        "{host_others:?}"
    );
}

#[tokio::test]
async fn a_host_whose_connection_drops_sends_again_to_the_guests_it_named() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let proxy = Proxy::start(relay.addr).await;
    let (host, mut hev, code) = room_host(&proxy.url(), 2, AdmitMode::Auto).await;
    let (a, mut aev, a_id) = admitted(&url, &code, &mut hev).await;
    let (b, mut bev, b_id) = admitted(&url, &code, &mut hev).await;

    // 300 frames in blocks of 20, to a, to b or to all in turn (few target
    // changes: each `to` is a control message the relay rate-limits).
    let plan: Vec<(Target, Bytes)> = (0..300u32)
        .map(|k| {
            let (to, tag) = match (k / 20) % 3 {
                0 => (Target::Guest(a_id), a_id),
                1 => (Target::Guest(b_id), b_id),
                _ => (Target::All, 0),
            };
            (to, numbered(tag, k))
        })
        .collect();
    let for_guest = |id: GuestId, range: std::ops::Range<usize>| -> Vec<Bytes> {
        plan[range]
            .iter()
            .filter(|(to, _)| *to == Target::All || *to == Target::Guest(id))
            .map(|(_, f)| f.clone())
            .collect()
    };
    let send = |range: std::ops::Range<usize>| {
        let (host, plan) = (&host, &plan);
        async move {
            for (to, f) in &plan[range] {
                host.send_binary_to(*to, f.clone()).await.unwrap();
            }
        }
    };
    // Each guest gets exactly its frames of `range`, in order.
    let (aev, bev) = (&mut aev, &mut bev);
    let mut guests_get = async |range: std::ops::Range<usize>| {
        let (want_a, want_b) = (for_guest(a_id, range.clone()), for_guest(b_id, range));
        tokio::join!(
            expect_exactly(aev, &want_a, "a"),
            expect_exactly(bev, &want_b, "b"),
        );
    };

    // The guests send too, before and after the drop: the host's count of
    // received frames (data only, never `from`) makes its resume miss none.
    let (a, b) = (&a, &b);
    let both_send = |from, to| async move {
        tokio::join!(
            guest_sends(a, a_id, from, to),
            guest_sends(b, b_id, from, to)
        );
    };
    let ids = [a_id, b_id];
    let host_side = async {
        both_send(1, 100).await;
        send(0..120).await;
        // The relay read them all: the last target it holds is all.
        guests_get(0..120).await;
        // The host's network swallows the next frames (and their `to`s),
        // then fails: the relay never got them, the client sends them again
        // on a connection whose target starts at all. The swallowed ones
        // start and end with frames for a, so `to a` must be written again
        // although a was the last target written.
        proxy.hold();
        send(120..200).await;
        proxy.wait_held(80 * 11).await;
        proxy.cut();
        both_send(101, 200).await;
        send(200..300).await;
        guests_get(120..300).await;
    };
    let (_, mut host_others) = tokio::join!(host_side, host_gets(&mut hev, &ids, 200));
    if !host_others.iter().any(|e| matches!(e, Event::Resumed)) {
        until(&mut hev, "resumed", |e| {
            host_others.push(e.clone());
            matches!(e, Event::Resumed).then_some(())
        })
        .await;
    }
    assert!(
        !host_others.iter().any(|e| matches!(e, Event::Error { .. })),
        "{host_others:?}"
    );
}

/// A host that changes target with every frame, as a game table does
/// (one private frame per player in turn). Each `to` is a control message
/// and the relay rate-limits those (`RELAY_MESSAGE_RATE`, 20 a second): a
/// `to` it refuses must not leave the previous target in place, or the
/// frames after it reach the wrong guest.
#[tokio::test]
async fn frames_to_each_guest_in_turn_reach_only_that_guest() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (host, mut hev, code) = room_host(&url, 2, AdmitMode::Auto).await;
    let (_a, mut aev, a_id) = admitted(&url, &code, &mut hev).await;
    let (_b, mut bev, b_id) = admitted(&url, &code, &mut hev).await;
    let mut want = (Vec::new(), Vec::new());
    for k in 0..60u32 {
        for (id, w) in [(a_id, &mut want.0), (b_id, &mut want.1)] {
            let f = numbered(id, k);
            host.send_binary_to(Target::Guest(id), f.clone())
                .await
                .unwrap();
            w.push(f);
        }
    }
    tokio::join!(
        expect_exactly(&mut aev, &want.0, "a"),
        expect_exactly(&mut bev, &want.1, "b"),
    );
}
