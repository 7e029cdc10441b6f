//! A room guest's absence bounds on its host's own node in a cluster (the
//! guest elsewhere: `resume.rs`).

use relay_protocol::{AdmitMode, Role};

use super::*;
use crate::registry::Resume;

/// A guest on its host's node drops and stays away past its grace period:
/// the host hears `guest_away`, then `guest_left` (`timeout`); the token
/// resumes on no node; a guest on another node carries on.
#[actix::test]
async fn a_guest_on_its_host_s_node_away_past_its_grace_period_ends_everywhere() {
    let r = TestRedis::start().await;
    let mut short = crate::registry::testing::settings();
    short.grace = Duration::from_millis(500);
    let n1 = start_node_with(&r, "n1", short.clone()).await;
    let n2 = start_node_with(&r, "n2", short.clone()).await;
    let n3 = start_node_with(&r, "n3", short).await;
    let host = host_on(&n1, 2, AdmitMode::Auto).await;
    let g = join(&n1, &host.reg.code, "local").await.unwrap();
    let stays = join(&n2, &host.reg.code, "stays").await.unwrap();
    host.wait(4).await;
    g.gone(Departure::Dropped);
    wait_for("guest_left", || {
        events(&host.seen())
            .iter()
            .any(|e| e["type"] == "guest_left" && e["guestId"] == g.id())
    })
    .await;
    let about: Vec<serde_json::Value> = events(&host.seen())
        .into_iter()
        .filter(|e| e["guestId"] == g.id())
        .collect();
    let kinds: Vec<&str> = about.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["guest_joined", "guest_admitted", "guest_away", "guest_left"]
    );
    assert_eq!(about[3]["reason"], "timeout");
    for n in [&n1, &n2, &n3] {
        let again = TestClient::start();
        let res = n
            .send(Resume {
                client: again.client.clone(),
                deadline: Deadline::for_request(),
                role: Role::Browser,
                session_id: g.joined.link.session_id.to_string(),
                resume_token: g.joined.resume_token.clone().unwrap(),
                last_seq: 0,
                guest_seqs: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(res.err().map(|r| r.code), Some(ErrorCode::ResumeExpired));
    }
    assert_eq!(host.send(bin("h", 0), Target::All), 1);
    assert_eq!(data(&stays.wait(1).await), [(bin("h", 0), None)]);
}
