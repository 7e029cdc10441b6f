//! The pairing scripts (register, join, resume) against a real
//! `redis-server`, and their replies' parsing.

use super::super::testing::{TestRedis, dump};
use super::super::{Counter, EndOutcome, ExpireOutcome, Expiry, Holder};
use super::*;

fn token(n: u8) -> TokenHash {
    TokenHash::of(&format!("token-{n}"))
}

fn code(c: &str) -> SessionCode {
    SessionCode::parse(c).unwrap()
}

const TTL: Duration = Duration::from_secs(60);
const ATTACK: Duration = Duration::from_secs(600);

/// A session `s1` with code `ABCDEF`, its mac on `n1` (conn 1, token 1).
async fn registered(r: &TestRedis) -> Store {
    let n1 = r.store("n1");
    let reg = n1
        .register("s1", "ABCDEF", &token(1), ConnId(1), TTL, 5_000)
        .await
        .unwrap();
    assert_eq!(reg, Registration::Created);
    n1
}

#[actix::test]
async fn register_creates_the_session_once_per_code() {
    let r = TestRedis::start().await;
    let n1 = registered(&r).await;
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!(s["code"], "ABCDEF");
    assert_eq!(s["live"], "1");
    assert_eq!(s["m_at"], "n1");
    assert_eq!(s["m_conn"], "1");
    assert_eq!(s["m_state"], "here");
    assert_eq!(s["m_tok"], token(1).hex());
    assert_eq!(r.get("relay:code:ABCDEF").await.as_deref(), Some("s1"));
    assert_eq!(r.zscore("relay:expiries", "s1").await, Some(5_000));
    assert!(r.is_member("relay:sides:n1", "s1|mac").await);
    let ttl: i64 = r.cmd(redis::cmd("PTTL").arg("relay:code:ABCDEF")).await;
    assert!(
        ttl > 60_000 && ttl <= 61_000,
        "code key lives the code's TTL and a second: {ttl}"
    );

    // The code is taken, by a live session or by an expired one.
    assert_eq!(
        n1.register("s2", "ABCDEF", &token(2), ConnId(2), TTL, 5_000)
            .await
            .unwrap(),
        Registration::CodeTaken
    );
    let _: () = r
        .cmd(redis::cmd("SET").arg("relay:xcode:GHJKLM").arg("1"))
        .await;
    assert_eq!(
        n1.register("s3", "GHJKLM", &token(3), ConnId(3), TTL, 5_000)
            .await
            .unwrap(),
        Registration::CodeTaken
    );
    assert!(dump(&r, "relay:s:s3").await.is_empty());
}

#[actix::test]
async fn join_claims_the_browser_side_once() {
    let r = TestRedis::start().await;
    registered(&r).await;
    let n2 = r.store("n2");
    assert_eq!(
        n2.join(&code("abc-def"), &token(2), ConnId(7), 1, 0, ATTACK)
            .await
            .unwrap(),
        JoinOutcome::Joined {
            sid: Arc::from("s1"),
            mac_node: Arc::from("n1"),
            mac_state: SideState::Here,
        }
    );
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!(
        (&*s["b_at"], &*s["b_conn"], &*s["b_state"], &*s["b_acc"]),
        ("n2", "7", "here", "0")
    );
    assert_eq!(s["b_tok"], token(2).hex());
    assert!(r.is_member("relay:sides:n2", "s1|browser").await);

    assert_eq!(
        n2.join(&code("ABCDEF"), &token(3), ConnId(8), 1, 0, ATTACK)
            .await
            .unwrap(),
        JoinOutcome::Taken
    );
    assert_eq!(dump(&r, "relay:s:s1").await["b_tok"], token(2).hex());
    assert_eq!(
        r.get("relay:failedjoins:1").await,
        None,
        "taken is not a failed join"
    );
}

#[actix::test]
async fn join_reports_the_mac_away() {
    let r = TestRedis::start().await;
    let n1 = registered(&r).await;
    n1.away("s1", Role::Mac, ConnId(1), 9_000).await.unwrap();
    let JoinOutcome::Joined { mac_state, .. } = r
        .store("n2")
        .join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0, ATTACK)
        .await
        .unwrap()
    else {
        panic!("not joined")
    };
    assert_eq!(mac_state, SideState::Away);
}

#[actix::test]
async fn failed_joins_past_the_limit_set_the_attack_flag_and_refuse_nothing() {
    let r = TestRedis::start().await;
    let n1 = registered(&r).await;
    let n2 = r.store("n2");
    let join = |c: &'static str, limit| {
        let n2 = &n2;
        async move {
            n2.join(&code(c), &token(9), ConnId(9), 42, limit, ATTACK)
                .await
                .unwrap()
        }
    };
    assert_eq!(join("GHJKLM", 3).await, JoinOutcome::Invalid);
    // The code's timer fired: it is remembered as expired.
    assert_eq!(
        n1.expire_code("s1", Expiry::Due).await.unwrap(),
        ExpireOutcome::Ended {
            mac_node: Some(Arc::from("n1")),
            code: "ABCDEF".into(),
        }
    );
    assert_eq!(join("ABCDEF", 3).await, JoinOutcome::Expired);
    assert_eq!(r.get("relay:failedjoins:42").await.as_deref(), Some("2"));
    assert!(!n2.under_attack().await.unwrap());
    assert_eq!(join("GHJKLM", 3).await, JoinOutcome::Invalid);
    assert!(
        n2.under_attack().await.unwrap(),
        "the third failure is an attack"
    );
    let ttl: i64 = r.cmd(redis::cmd("PTTL").arg("relay:attack")).await;
    assert!(ttl > 590_000 && ttl <= 600_000, "{ttl}");
    // Past the limit joins are still answered, and counted.
    assert_eq!(join("GHJKLM", 3).await, JoinOutcome::Invalid);
    assert_eq!(join("ABCDEF", 3).await, JoinOutcome::Expired);
    assert_eq!(r.get("relay:failedjoins:42").await.as_deref(), Some("5"));
    let ttl: i64 = r.cmd(redis::cmd("PTTL").arg("relay:failedjoins:42")).await;
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
    // A good code joins during the attack.
    r.store("n1")
        .register("s2", "KLMNPQRT", &token(2), ConnId(2), TTL, 5_000)
        .await
        .unwrap();
    assert!(matches!(
        join("klmn-pqrt", 3).await,
        JoinOutcome::Joined { .. }
    ));
}

#[actix::test]
async fn no_limit_is_never_an_attack() {
    let r = TestRedis::start().await;
    let n2 = r.store("n2");
    for _ in 0..5 {
        let out = n2
            .join(&code("GHJKLM"), &token(9), ConnId(9), 42, 0, ATTACK)
            .await;
        assert_eq!(out.unwrap(), JoinOutcome::Invalid);
    }
    assert_eq!(r.get("relay:failedjoins:42").await.as_deref(), Some("5"));
    assert!(!n2.under_attack().await.unwrap());
}

#[actix::test]
async fn a_code_whose_session_is_no_longer_live_is_expired() {
    let r = TestRedis::start().await;
    registered(&r).await;
    let _: () = r
        .cmd(redis::cmd("HSET").arg("relay:s:s1").arg("live").arg("0"))
        .await;
    assert_eq!(
        r.store("n2")
            .join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0, ATTACK)
            .await
            .unwrap(),
        JoinOutcome::Expired
    );
}

#[actix::test]
async fn resume_moves_the_side_and_says_where_it_was() {
    let r = TestRedis::start().await;
    registered(&r).await;
    let n2 = r.store("n2");
    n2.join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0, ATTACK)
        .await
        .unwrap();
    r.lease("n2").await;
    let n3 = r.store("n3");
    let out = n3
        .resume("s1", Role::Mac, &token(1), ConnId(11))
        .await
        .unwrap();
    let ResumeOutcome::Resumed(facts) = out else {
        panic!("not resumed: {out:?}")
    };
    assert_eq!(
        facts,
        ResumeFacts {
            old_node: Some(Arc::from("n1")),
            old_conn: Some(ConnId(1)),
            old_state: Some(SideState::Here),
            peer_node: Some(Arc::from("n2")),
            peer_state: Some(SideState::Here),
            acc_checkpoint: 0,
            m_rbase: 0,
            m_sbase: 0,
            old_alive: false,
            peer_alive: true,
            guests: Vec::new(),
        }
    );
    assert!(!facts.was_away() && !facts.peer_away());
    let s = dump(&r, "relay:s:s1").await;
    assert_eq!((&*s["m_at"], &*s["m_conn"]), ("n3", "11"));
    assert!(!r.is_member("relay:sides:n1", "s1|mac").await);
    assert!(r.is_member("relay:sides:n3", "s1|mac").await);

    // The counts written by checkpoints come back.
    n3.checkpoint(
        "s1",
        &[(Counter::MacReceiveBase, 5), (Counter::MacSendBase, 8)],
    )
    .await
    .unwrap();
    n3.away("s1", Role::Mac, ConnId(11), 9_000).await.unwrap();
    let out = n3
        .resume("s1", Role::Mac, &token(1), ConnId(12))
        .await
        .unwrap();
    let ResumeOutcome::Resumed(facts) = out else {
        panic!("not resumed: {out:?}")
    };
    assert_eq!((facts.m_rbase, facts.m_sbase), (5, 8));
    assert_eq!(facts.old_state, Some(SideState::Away));
    assert!(facts.was_away());
    assert_eq!(
        r.zscore("relay:grace", "s1|mac").await,
        None,
        "resume ends the grace period"
    );
}

#[actix::test]
async fn resume_of_a_mac_alone_has_no_peer() {
    let r = TestRedis::start().await;
    registered(&r).await;
    let out = r
        .store("n1")
        .resume("s1", Role::Mac, &token(1), ConnId(2))
        .await;
    let ResumeOutcome::Resumed(facts) = out.unwrap() else {
        panic!("not resumed")
    };
    assert_eq!((&facts.peer_node, facts.peer_state), (&None, None));
    assert!(facts.peer_away() && !facts.peer_alive);
}

#[actix::test]
async fn resume_with_a_wrong_token_is_invalid() {
    let r = TestRedis::start().await;
    registered(&r).await;
    let n2 = r.store("n2");
    let out = n2.resume("s1", Role::Mac, &token(2), ConnId(2)).await;
    assert_eq!(out.unwrap(), ResumeOutcome::Invalid);
    let out = n2.resume("nope", Role::Mac, &token(1), ConnId(2)).await;
    assert_eq!(out.unwrap(), ResumeOutcome::Invalid);
    assert_eq!(dump(&r, "relay:s:s1").await["m_at"], "n1", "nothing moved");
}

#[actix::test]
async fn resume_of_an_ended_side_says_how_it_ended() {
    let r = TestRedis::start().await;
    let n1 = registered(&r).await;
    let n2 = r.store("n2");
    n2.join(&code("ABCDEF"), &token(2), ConnId(7), 1, 0, ATTACK)
        .await
        .unwrap();
    // The mac leaves: the browser's session is over.
    let ended = n1.end_side("s1", Role::Mac, Holder::Conn(ConnId(1)));
    assert!(matches!(ended.await.unwrap(), EndOutcome::Ended(_)));
    let out = n2.resume("s1", Role::Browser, &token(2), ConnId(8)).await;
    assert_eq!(out.unwrap(), ResumeOutcome::Ended(SideEnd::MacDisconnected));
    let out = n2.resume("s1", Role::Mac, &token(1), ConnId(8)).await;
    assert_eq!(out.unwrap(), ResumeOutcome::Ended(SideEnd::ResumeExpired));
    // Another token for an ended side is just invalid.
    let out = n2.resume("s1", Role::Mac, &token(2), ConnId(8)).await;
    assert_eq!(out.unwrap(), ResumeOutcome::Invalid);
}

#[test]
fn malformed_replies_are_errors() {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let arr = |f: &[&str]| Value::Array(f.iter().map(|s| bulk(s)).collect());
    assert!(parse_register(&Value::Int(2)).is_err());
    assert!(parse_register(&bulk("1")).is_err());
    assert!(parse_join(&arr(&["maybe"])).is_err());
    assert!(
        parse_join(&arr(&["ok", "s1", "", "here"])).is_err(),
        "no mac node"
    );
    assert!(parse_join(&arr(&["ok", "s1", "n1", "there"])).is_err());
    assert!(parse_join(&arr(&["taken", "x"])).is_err(), "extra field");
    assert!(parse_resume(&arr(&["ended", "INVALID_CODE"])).is_err());
    let mut ok = vec![
        "ok", "n1", "1", "here", "", "", "ABCDEF", "1", "0", "0", "0", "1", "0",
    ];
    assert!(parse_resume(&arr(&ok)).is_ok());
    ok[8] = "-1";
    assert!(parse_resume(&arr(&ok)).is_err(), "a negative count");
    ok.truncate(12);
    assert!(parse_resume(&arr(&ok)).is_err(), "a field short");
}
