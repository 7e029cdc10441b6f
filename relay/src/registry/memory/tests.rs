//! The in-memory registry's answers to requests past their deadline.

use tokio::time::Instant;

use super::super::*;
use super::*;
use crate::registry::testing::{TestClient, settings, written};
use crate::registry::{Deadline, Stats};

/// A deadline that passed while the request waited in the mailbox.
fn passed() -> Deadline {
    Deadline::at(Instant::now())
}

#[actix::test]
async fn requests_past_their_deadline_are_refused_and_change_nothing() {
    let metrics = Arc::new(Metrics::new("memory-test").unwrap());
    let registry = MemoryRegistry::new(settings(), metrics).start();
    let mac = TestClient::start();
    let register = |deadline| Register {
        client: mac.client.clone(),
        deadline,
        client_id: None,
        room: None,
    };

    let late = registry.send(register(passed())).await.unwrap();
    assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
    assert_eq!(
        registry.send(Stats).await.unwrap().waiting,
        0,
        "no session made"
    );
    let r = registry
        .send(register(Deadline::for_request()))
        .await
        .unwrap()
        .unwrap();

    // A late join leaves the code to be joined in time.
    let browser = TestClient::start();
    let join = |deadline| Join {
        client: browser.client.clone(),
        deadline,
        code: r.code.clone(),
        name: None,
    };
    let late = registry.send(join(passed())).await.unwrap();
    assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
    let j = registry
        .send(join(Deadline::for_request()))
        .await
        .unwrap()
        .unwrap();

    // A late resume takes nothing over: the browser's pipe still delivers
    // to its connection, and the mac hears of no resume.
    let again = TestClient::start();
    let late = registry
        .send(Resume {
            client: again.client.clone(),
            deadline: passed(),
            role: Role::Browser,
            session_id: r.link.session_id.to_string(),
            resume_token: j.resume_token.clone().expect("a pairing's token"),
            last_seq: 0,
            guest_seqs: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(late.err().map(|r| r.code), Some(ErrorCode::Unavailable));
    assert_eq!(written(&j.link, browser.conn()), Some(vec![]));
    assert_eq!(written(&r.link, mac.conn()).unwrap(), ["peer_joined"]);
    let stats = registry.send(Stats).await.unwrap();
    assert_eq!((stats.waiting, stats.paired, stats.away), (0, 1, 0));
    assert_eq!(browser.replaced(), 0);
}
