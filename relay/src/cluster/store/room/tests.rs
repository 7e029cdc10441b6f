//! The room scripts against a real `redis-server`: ids, a full room,
//! admission, removal and its races with resume, ends, and what a pairing
//! keeps (none of the room's fields).

use std::sync::Arc;

use relay_protocol::SessionCode;

use super::super::testing::{TestRedis, dump};
use super::super::{EndOutcome, ExpireOutcome, Expiry, GraceOutcome, Holder, JoinOutcome};
use super::*;
use crate::cluster::store::{AwayOutcome, ResumeOutcome};
use relay_protocol::Role;

fn token(n: u8) -> TokenHash {
    TokenHash::of(&format!("token-{n}"))
}

fn code() -> SessionCode {
    SessionCode::parse("ABCDEF").unwrap()
}

const TTL: Duration = Duration::from_secs(60);

/// Room `s1` (code `ABCDEF`) with its host on `n1` (conn 1, token 1).
async fn room(r: &TestRedis, max_guests: u32, admit: AdmitMode) -> Store {
    let n1 = r.store("n1");
    let rules = RoomRules { max_guests, admit };
    let reg = n1
        .register_room("s1", "ABCDEF", &token(1), ConnId(1), TTL, 5_000, rules)
        .await
        .unwrap();
    assert_eq!(reg, Registration::Created);
    n1
}

/// Guest with token `tok` joins on `node` (connection `conn`).
async fn join(r: &TestRedis, node: &str, tok: u8, conn: u64) -> JoinOutcome {
    r.store(node)
        .join(
            &code(),
            &token(tok),
            ConnId(conn),
            1,
            0,
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap()
}

/// Guest with token `tok` joins on `node` and must get id `id`.
async fn joined(r: &TestRedis, node: &str, tok: u8, conn: u64, id: GuestId) {
    match join(r, node, tok, conn).await {
        JoinOutcome::Guest { guest_id, .. } => assert_eq!(guest_id, id),
        other => panic!("not a guest: {other:?}"),
    }
}

fn at(node: &str, conn: u64) -> GuestAt {
    GuestAt {
        node: Some(Arc::from(node)),
        conn: Some(ConnId(conn)),
    }
}

#[actix::test]
async fn a_room_keeps_its_rules_and_a_pairing_has_none_of_them() {
    let r = TestRedis::start().await;
    room(&r, 3, AdmitMode::Ask).await;
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!(
        (
            &*s["r_max"],
            &*s["r_admit"],
            &*s["r_next"],
            &*s["r_n"],
            &*s["r_ids"]
        ),
        ("3", "ask", "1", "0", "")
    );
    r.store("n1")
        .register("s2", "GHJKLM", &token(2), ConnId(2), TTL, 5_000)
        .await
        .unwrap();
    let s = dump(&r, "relay:s:s2").await;
    assert!(
        s.keys()
            .all(|k| !k.starts_with("r_") && !k.starts_with('g')),
        "a pairing's hash is as before: {s:?}"
    );
}

#[actix::test]
async fn guests_take_fresh_ids_until_the_room_is_full() {
    let r = TestRedis::start().await;
    room(&r, 2, AdmitMode::Ask).await;
    assert_eq!(
        join(&r, "n2", 2, 7).await,
        JoinOutcome::Guest {
            sid: Arc::from("s1"),
            guest_id: 1,
            admitted: false,
            mac_node: Arc::from("n1"),
            mac_state: SideState::Here,
        }
    );
    joined(&r, "n3", 3, 8, 2).await;
    assert_eq!(join(&r, "n2", 4, 9).await, JoinOutcome::Full);
    assert_eq!(
        r.get("relay:failedjoins:1").await,
        None,
        "full is not a failed join"
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["r_n"], &*s["r_ids"]), ("2", "1 2"));
    assert_eq!(
        (&*s["g1_at"], &*s["g1_conn"], &*s["g1_state"]),
        ("n2", "7", "wait")
    );
    assert_eq!(s[&format!("gt_{}", token(3).hex())], "2");
    assert!(r.is_member("relay:sides:n2", "s1|g1").await);
    assert!(r.is_member("relay:sides:n3", "s1|g2").await);
    assert!(
        !s.contains_key("b_tok"),
        "guests are not the pairing's browser"
    );

    // A denied guest frees its place; ids are never reused.
    let n1 = r.store("n1");
    assert_eq!(
        n1.decide("s1", 1, Decision::Deny).await.unwrap(),
        GuestAnswer::Done(at("n2", 7), true)
    );
    joined(&r, "n2", 4, 9, 3).await;
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["r_n"], &*s["r_ids"]), ("2", "2 3"));
    assert!(!s.contains_key("g1_tok") && !s.contains_key(&format!("gt_{}", token(2).hex())));
    assert!(!r.is_member("relay:sides:n2", "s1|g1").await);
    assert_eq!(
        n1.resume_guest("s1", &token(2), ConnId(20)).await.unwrap(),
        GuestResume::Invalid,
        "a denied guest never had its token"
    );
}

#[actix::test]
async fn an_automatic_room_admits_at_once() {
    let r = TestRedis::start().await;
    room(&r, 2, AdmitMode::Auto).await;
    let JoinOutcome::Guest { admitted, .. } = join(&r, "n2", 2, 7).await else {
        panic!("not a guest")
    };
    assert!(admitted);
    assert_eq!(dump(&r, "relay:s:s1").await["g1_state"], "here");
    assert_eq!(
        r.store("n1")
            .decide("s1", 1, Decision::Admit)
            .await
            .unwrap(),
        GuestAnswer::Unknown,
        "nobody is waiting"
    );
}

#[actix::test]
async fn the_host_answers_a_waiting_guest_once() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 4, AdmitMode::Ask).await;
    joined(&r, "n2", 2, 7, 1).await;
    assert_eq!(
        n1.decide("s1", 1, Decision::Admit).await.unwrap(),
        GuestAnswer::Done(at("n2", 7), true)
    );
    assert_eq!(dump(&r, "relay:s:s1").await["g1_state"], "here");
    for d in [Decision::Admit, Decision::Deny] {
        assert_eq!(n1.decide("s1", 1, d).await.unwrap(), GuestAnswer::Unknown);
        assert_eq!(n1.decide("s1", 99, d).await.unwrap(), GuestAnswer::Unknown);
        assert_eq!(n1.decide("nope", 1, d).await.unwrap(), GuestAnswer::Unknown);
    }
    assert_eq!(dump(&r, "relay:s:s1").await["r_n"], "1", "nothing changed");
}

#[actix::test]
async fn a_removed_guest_is_gone_and_its_token_says_so_on_every_node() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 2, AdmitMode::Ask).await;
    joined(&r, "n2", 2, 7, 1).await;
    joined(&r, "n3", 3, 8, 2).await;
    n1.decide("s1", 1, Decision::Admit).await.unwrap();
    assert_eq!(
        n1.remove("s1", 1).await.unwrap(),
        GuestAnswer::Done(at("n2", 7), false)
    );
    // A waiting guest can be removed too.
    assert_eq!(
        n1.remove("s1", 2).await.unwrap(),
        GuestAnswer::Done(at("n3", 8), true)
    );
    assert_eq!(n1.remove("s1", 1).await.unwrap(), GuestAnswer::Unknown);
    assert_eq!(n1.remove("s1", 9).await.unwrap(), GuestAnswer::Unknown);
    for node in ["n2", "n3"] {
        assert_eq!(
            r.store(node)
                .resume_guest("s1", &token(2), ConnId(30))
                .await
                .unwrap(),
            GuestResume::Ended(SideEnd::Removed)
        );
    }
    let ttl: i64 = r
        .cmd(redis::cmd("PTTL").arg(format!("relay:gend:s1:{}", token(2).hex())))
        .await;
    assert!(
        ttl > 590_000 && ttl <= 600_000,
        "remembered as ended sides are: {ttl}"
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["r_n"], &*s["r_ids"]), ("0", ""));
    assert!(!r.is_member("relay:sides:n2", "s1|g1").await);
    // Its place is free.
    joined(&r, "n2", 4, 9, 3).await;
}

#[actix::test]
async fn a_guest_resumes_by_its_token_on_another_node() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 3, AdmitMode::Ask).await;
    joined(&r, "n2", 2, 7, 1).await;
    joined(&r, "n2", 3, 8, 2).await;
    n1.decide("s1", 1, Decision::Admit).await.unwrap();
    r.lease("n1").await;
    let n3 = r.store("n3");
    // The pairing's resume sends a browser's token of a room to the guests.
    assert_eq!(
        n3.resume("s1", Role::Browser, &token(2), ConnId(11))
            .await
            .unwrap(),
        ResumeOutcome::Room
    );
    assert_eq!(dump(&r, "relay:s:s1").await["g1_at"], "n2", "nothing moved");
    let out = n3.resume_guest("s1", &token(2), ConnId(11)).await.unwrap();
    assert_eq!(
        out,
        GuestResume::Resumed {
            guest_id: 1,
            facts: ResumeFacts {
                old_node: Some(Arc::from("n2")),
                old_conn: Some(ConnId(7)),
                old_state: Some(SideState::Here),
                peer_node: Some(Arc::from("n1")),
                peer_state: Some(SideState::Here),
                acc_checkpoint: 0,
                m_rbase: 0,
                m_sbase: 0,
                old_alive: false,
                peer_alive: true,
                guests: Vec::new(),
            },
        }
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["g1_at"], &*s["g1_conn"]), ("n3", "11"));
    assert!(!r.is_member("relay:sides:n2", "s1|g1").await);
    assert!(r.is_member("relay:sides:n3", "s1|g1").await);

    // Away, then back: the grace period is the guest's own.
    assert_eq!(
        n3.away_guest("s1", 1, ConnId(99), 9_000).await.unwrap(),
        AwayOutcome::Stale,
        "another connection's away changes nothing"
    );
    assert_eq!(
        n3.away_guest("s1", 1, ConnId(11), 9_000).await.unwrap(),
        AwayOutcome::Away
    );
    assert_eq!(r.zscore("relay:grace", "s1|g1").await, Some(9_000));
    let GuestResume::Resumed { facts, .. } =
        n3.resume_guest("s1", &token(2), ConnId(12)).await.unwrap()
    else {
        panic!("not resumed")
    };
    assert!(facts.was_away());
    assert_eq!(r.zscore("relay:grace", "s1|g1").await, None);

    // A waiting guest never had its token; a wrong token is nobody's.
    for tok in [3, 9] {
        assert_eq!(
            n3.resume_guest("s1", &token(tok), ConnId(13))
                .await
                .unwrap(),
            GuestResume::Invalid
        );
    }
    // The host's own resume is a pairing's mac's, with its guests listed
    // for their nodes to hand over.
    let ResumeOutcome::Resumed(host) = n3
        .resume("s1", Role::Mac, &token(1), ConnId(14))
        .await
        .unwrap()
    else {
        panic!("host not resumed")
    };
    assert_eq!((host.peer_node.as_deref(), host.acc_checkpoint), (None, 0));
    assert_eq!(
        host.guests,
        [
            RoomGuest {
                id: 1,
                node: Some(Arc::from("n3")),
                waiting: false,
                here: true,
            },
            RoomGuest {
                id: 2,
                node: Some(Arc::from("n2")),
                waiting: true,
                here: false,
            },
        ]
    );
}

#[actix::test]
async fn remove_and_resume_racing_end_as_the_scripts_ran() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 3, AdmitMode::Auto).await;
    joined(&r, "n2", 2, 7, 1).await;
    joined(&r, "n2", 3, 8, 2).await;
    // Removed first: the resume on another node is refused.
    n1.remove("s1", 1).await.unwrap();
    assert_eq!(
        r.store("n3")
            .resume_guest("s1", &token(2), ConnId(11))
            .await
            .unwrap(),
        GuestResume::Ended(SideEnd::Removed)
    );
    // Resumed first: the removal names the guest's new node to tell.
    r.store("n3")
        .resume_guest("s1", &token(3), ConnId(12))
        .await
        .unwrap();
    assert_eq!(
        n1.remove("s1", 2).await.unwrap(),
        GuestAnswer::Done(at("n3", 12), false)
    );
    assert!(!r.is_member("relay:sides:n3", "s1|g2").await);
}

#[actix::test]
async fn guests_end_on_their_own_and_all_with_their_host() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 4, AdmitMode::Auto).await;
    joined(&r, "n2", 2, 7, 1).await;
    joined(&r, "n3", 3, 8, 2).await;
    joined(&r, "n2", 4, 9, 3).await;
    joined(&r, "n3", 5, 10, 4).await;

    // Guest 1 leaves: its place is free, its token ended.
    let n2 = r.store("n2");
    assert_eq!(
        n2.end_guest("s1", 1, Holder::Conn(ConnId(99)))
            .await
            .unwrap(),
        EndOutcome::Stale
    );
    let EndOutcome::Ended(facts) = n2
        .end_guest("s1", 1, Holder::Conn(ConnId(7)))
        .await
        .unwrap()
    else {
        panic!("not ended")
    };
    assert_eq!(
        (facts.node.as_deref(), facts.peer_node.as_deref()),
        (Some("n2"), Some("n1"))
    );
    assert!(facts.guest_nodes.is_empty());
    assert_eq!(
        n2.end_guest("s1", 1, Holder::Any).await.unwrap(),
        EndOutcome::Gone
    );
    assert_eq!(
        n2.resume_guest("s1", &token(2), ConnId(20)).await.unwrap(),
        GuestResume::Ended(SideEnd::ResumeExpired)
    );

    // Guest 2's grace period runs out, once.
    let n3 = r.store("n3");
    n3.away_guest("s1", 2, ConnId(8), 9_000).await.unwrap();
    assert!(matches!(
        n3.grace_end_guest("s1", 2).await.unwrap(),
        GraceOutcome::Ended(_)
    ));
    assert_eq!(
        n3.grace_end_guest("s1", 2).await.unwrap(),
        GraceOutcome::Skipped
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["r_n"], &*s["r_ids"]), ("2", "3 4"));

    // The host ends: every guest left is told, on its node.
    let EndOutcome::Ended(facts) = n1.end_side("s1", Role::Mac, Holder::Any).await.unwrap() else {
        panic!("not ended")
    };
    let mut nodes: Vec<_> = facts.guest_nodes.iter().map(|n| n.to_string()).collect();
    nodes.sort();
    assert_eq!(nodes, ["n2", "n3"]);
    for tok in [4, 5] {
        assert_eq!(
            n2.resume_guest("s1", &token(tok), ConnId(21))
                .await
                .unwrap(),
            GuestResume::Ended(SideEnd::MacDisconnected)
        );
    }
    assert!(dump(&r, "relay:s:s1").await.is_empty());
    assert!(!r.is_member("relay:sides:n2", "s1|g3").await);
    assert!(!r.is_member("relay:sides:n3", "s1|g4").await);
}

#[actix::test]
async fn an_expired_code_ends_an_empty_room_and_keeps_one_with_guests() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 2, AdmitMode::Ask).await;
    joined(&r, "n2", 2, 7, 1).await;
    assert_eq!(
        n1.expire_code("s1", Expiry::Due).await.unwrap(),
        ExpireOutcome::Paired
    );
    assert_eq!(join(&r, "n2", 3, 8).await, JoinOutcome::Expired);
    n1.decide("s1", 1, Decision::Deny).await.unwrap();
    assert_eq!(
        n1.expire_code("s1", Expiry::Unjoinable).await.unwrap(),
        ExpireOutcome::Ended {
            mac_node: Some(Arc::from("n1")),
            code: "ABCDEF".into(),
        }
    );
}

#[actix::test]
async fn a_dead_node_s_guests_are_away_or_gone_and_their_graces_come_due() {
    let r = TestRedis::start().await;
    let n1 = room(&r, 3, AdmitMode::Ask).await;
    joined(&r, "n2", 2, 7, 1).await;
    joined(&r, "n2", 3, 8, 2).await;
    joined(&r, "n3", 4, 9, 3).await;
    n1.decide("s1", 1, Decision::Admit).await.unwrap();
    let _: () = r.cmd(redis::cmd("SADD").arg("relay:nodes").arg("n2")).await;

    let mut dead = r.store("n3").dead_node("n2", 7_000).await.unwrap();
    dead.sort_by_key(|d| d.guest);
    let seen: Vec<_> = dead
        .iter()
        .map(|d| (d.role, d.guest, d.gone, d.peer_node.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (Role::Browser, Some(1), false, Some("n1")),
            (Role::Browser, Some(2), true, Some("n1")),
        ]
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!(s["g1_state"], "away");
    assert!(!s.contains_key("g2_tok"), "a waiting guest is gone");
    assert_eq!((&*s["r_n"], &*s["r_ids"]), ("2", "1 3"));

    let due = n1.due(8_000, 10).await.unwrap();
    assert_eq!(due.guest_graces, [(Arc::from("s1"), 1)]);
    assert!(due.graces.is_empty());
}

/// A dead host's guests on other nodes must hear that it is away, as a
/// pairing's browser does: the host's side comes once per such node.
#[actix::test]
async fn a_dead_host_node_names_each_other_node_holding_its_guests() {
    let r = TestRedis::start().await;
    room(&r, 4, AdmitMode::Auto).await;
    joined(&r, "n2", 2, 7, 1).await;
    joined(&r, "n2", 3, 8, 2).await;
    joined(&r, "n3", 4, 9, 3).await;
    joined(&r, "n1", 5, 10, 4).await;
    let _: () = r.cmd(redis::cmd("SADD").arg("relay:nodes").arg("n1")).await;

    let mut dead = r.store("n2").dead_node("n1", 7_000).await.unwrap();
    dead.sort_by(|a, b| (a.guest, &a.peer_node).cmp(&(b.guest, &b.peer_node)));
    let seen: Vec<_> = dead
        .iter()
        .map(|d| (d.role, d.guest, d.gone, d.peer_node.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (Role::Mac, None, false, Some("n2")),
            (Role::Mac, None, false, Some("n3")),
            // Its guest on the dead node, whose peer (the host) died with it.
            (Role::Browser, Some(4), false, Some("n1")),
        ]
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["m_state"], &*s["g4_state"]), ("away", "away"));
    assert_eq!(s["g1_state"], "here", "guests elsewhere are not touched");
}

/// A room host on a dead node with no guest elsewhere is still reported
/// once, as a pairing's mac without a browser is.
#[actix::test]
async fn a_dead_host_node_with_no_guests_elsewhere_reports_the_host_once() {
    let r = TestRedis::start().await;
    room(&r, 4, AdmitMode::Auto).await;
    let _: () = r.cmd(redis::cmd("SADD").arg("relay:nodes").arg("n1")).await;
    let dead = r.store("n2").dead_node("n1", 7_000).await.unwrap();
    let seen: Vec<_> = dead
        .iter()
        .map(|d| (d.role, d.guest, d.peer_node.as_deref()))
        .collect();
    assert_eq!(seen, [(Role::Mac, None, None)]);
}

#[test]
fn malformed_replies_are_errors() {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let arr = |f: &[&str]| Value::Array(f.iter().map(|s| bulk(s)).collect());
    assert!(
        parse_answer(&arr(&["ok", "n1", "1"]), true).is_err(),
        "no state"
    );
    assert!(parse_answer(&arr(&["ok", "n1", "1", "gone"]), true).is_err());
    assert!(parse_answer(&arr(&["ok", "n1", "x"]), false).is_err());
    assert!(parse_answer(&arr(&["unknown", "x"]), false).is_err());
    assert!(parse_answer(&arr(&["maybe"]), false).is_err());
    assert!(parse_resume_guest(&arr(&["ended", "DENIED"])).is_err());
    let mut ok = vec!["ok", "1", "n2", "7", "here", "n1", "here", "0", "1", "1"];
    assert!(parse_resume_guest(&arr(&ok)).is_ok());
    ok[1] = "one";
    assert!(
        parse_resume_guest(&arr(&ok)).is_err(),
        "a guest id that is no number"
    );
    ok[1] = "1";
    ok.pop();
    assert!(parse_resume_guest(&arr(&ok)).is_err(), "a field short");
    assert_eq!(guest_side(12), "g12");
    let guests = |fields: &[&str]| {
        let reply = arr(fields);
        room_guests(&mut Fields::of(&reply).unwrap())
    };
    assert_eq!(guests(&[]).unwrap(), []);
    assert!(guests(&["1", "n1", "away"]).unwrap()[0].node.is_some());
    assert!(guests(&["1", "n1"]).is_err(), "a field short");
    assert!(guests(&["1", "n1", "gone"]).is_err());
    let join = |fields: &[&str]| {
        let reply = arr(fields);
        guest_joined(&mut Fields::of(&reply).unwrap()).map(drop)
    };
    assert!(join(&["s1", "1", "wait", "n1", "here"]).is_ok());
    assert!(
        join(&["s1", "1", "away", "n1", "here"]).is_err(),
        "not joining"
    );
    assert!(
        join(&["", "1", "wait", "n1", "here"]).is_err(),
        "no session"
    );
    assert!(
        join(&["s1", "1", "wait", "", "here"]).is_err(),
        "no host node"
    );
    assert!(
        join(&["s1", "-1", "wait", "n1", "here"]).is_err(),
        "no guest id"
    );
}
