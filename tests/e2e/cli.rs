//! `relay host` and `relay join` encrypt by default: the host shows the full
//! code, its link and the link's QR code; lines go both ways sealed; a
//! wrong secret ends both with the sentence and exit status 6; `--no-e2e`
//! is the plain protocol. A room host (`--guests`) encrypts for each guest.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cli::{client, code_in, exit_code, host_line, next_line, stderr_line};
use crate::support::Relay;

#[tokio::test]
async fn host_shows_the_full_code_link_and_qr_and_lines_go_both_ways_sealed() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, line) = host_line(&url, &["--qr", "always"]).await;
    let code = code_in(&line);
    assert_eq!(code.len(), 12, "{line}");
    let link = format!("http://{}/#{code}", relay.addr);
    assert!(line.contains(&link), "{line}");
    assert!(line.contains("end-to-end encrypted"), "{line}");
    // The QR code follows: lines of block characters.
    let qr = stderr_line(&mut host_err, "█").await;
    assert!(qr.chars().count() > 20, "{qr}");

    // The person opens the link (the CLI takes it as the code too).
    let mut join = client(&["join", "--url", &url, &link]);
    let mut join_err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut join_err, "end-to-end encrypted").await;
    stderr_line(&mut join_err, "joined").await;
    stderr_line(&mut host_err, "end-to-end encrypted").await;
    stderr_line(&mut host_err, "browser joined").await;

    let mut host_in = host.stdin.take().unwrap();
    let mut join_in = join.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in.write_all("sealed é\n".as_bytes()).await.unwrap();
    join_in.write_all(b"sealed back\n").await.unwrap();
    assert_eq!(next_line(&mut join_out).await.as_deref(), Some("sealed é"));
    assert_eq!(
        next_line(&mut host_out).await.as_deref(),
        Some("sealed back")
    );
    assert!(!relay.logged("sealed"));

    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    stderr_line(&mut host_err, "session over").await;
    assert_eq!(exit_code(&mut host).await, 0);
}

#[tokio::test]
async fn a_wrong_secret_ends_both_with_the_sentence_and_status_6() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, line) = host_line(&url, &[]).await;
    let code = code_in(&line);
    let wrong = format!(
        "{}-{}",
        &code[..6],
        if code.ends_with("33333") {
            "44444"
        } else {
            "33333"
        }
    );
    let mut join = client(&["join", "--url", &url, &wrong]);
    let mut join_err = BufReader::new(join.stderr.take().unwrap()).lines();
    let said = stderr_line(&mut join_err, "mistyped").await;
    assert!(
        said.contains("the code was mistyped or someone else tried it"),
        "{said}"
    );
    stderr_line(
        &mut host_err,
        "the code was mistyped or someone else tried it",
    )
    .await;
    assert_eq!(exit_code(&mut join).await, 6);
    assert_eq!(exit_code(&mut host).await, 6);
}

#[tokio::test]
async fn no_e2e_hosts_the_plain_protocol() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, line) = host_line(&url, &["--no-e2e"]).await;
    let code = code_in(&line);
    assert_eq!(code.len(), 6, "{line}");
    // A browser written to the original protocol gets the plain text.
    let mut old = relay.browser().await;
    old.json(serde_json::json!({"type": "join", "code": code}))
        .await;
    old.expect("joined").await;
    stderr_line(&mut host_err, "browser joined").await;
    let mut host_in = host.stdin.take().unwrap();
    host_in.write_all(b"in clear\n").await.unwrap();
    assert_eq!(old.expect("data").await["payload"], "in clear");
    drop(host_in);
    assert_eq!(exit_code(&mut host).await, 0);
}

#[tokio::test]
async fn join_with_only_the_relay_code_is_told_to_type_the_whole_code() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, line) = host_line(&url, &[]).await;
    let code = code_in(&line);
    let mut join = client(&["join", "--url", &url, &code[..6]]);
    let mut join_err = BufReader::new(join.stderr.take().unwrap()).lines();
    let said = stderr_line(&mut join_err, "whole code").await;
    assert!(said.contains("end-to-end encrypted"), "{said}");
    stderr_line(&mut host_err, "first part of the code").await;
    assert_eq!(exit_code(&mut join).await, 6);
    assert_eq!(exit_code(&mut host).await, 6);
}

#[tokio::test]
async fn a_room_host_encrypts_for_each_of_its_guests() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, line) = host_line(
        &url,
        &[
            "--guests",
            "2",
            "--admit",
            "auto",
            "--peer-prefix",
            "always",
        ],
    )
    .await;
    let code = code_in(&line);
    assert_eq!(code.len(), 12, "{line}");
    assert!(line.contains("end-to-end encrypted per guest"), "{line}");
    assert!(line.contains(&format!("#{code}")), "{line}");

    let mut guests = Vec::new();
    for id in 1..=2 {
        let mut join = client(&["join", "--url", &url, &code]);
        let mut err = BufReader::new(join.stderr.take().unwrap()).lines();
        stderr_line(&mut err, "end-to-end encrypted: the host and you").await;
        stderr_line(&mut err, &format!("joined as guest {id}")).await;
        stderr_line(&mut host_err, &format!("guest {id}: end-to-end encrypted")).await;
        stderr_line(&mut host_err, &format!("guest {id} is in")).await;
        // Kept open: a guest whose stderr is closed cannot print its last
        // lines, and `eprintln!` then ends it with status 101.
        guests.push((join, err));
    }
    let mut host_in = host.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    host_in
        .write_all(b"sealed for all\n/to 2\nsealed for 2\n/to all\nagain all\n")
        .await
        .unwrap();
    let mut outs: Vec<_> = guests
        .iter_mut()
        .map(|(g, _)| BufReader::new(g.stdout.take().unwrap()).lines())
        .collect();
    for want in ["sealed for all", "again all"] {
        assert_eq!(next_line(&mut outs[0]).await.as_deref(), Some(want));
    }
    for want in ["sealed for all", "sealed for 2", "again all"] {
        assert_eq!(next_line(&mut outs[1]).await.as_deref(), Some(want));
    }
    for (i, (g, _)) in guests.iter_mut().enumerate() {
        let mut input = g.stdin.take().unwrap();
        input
            .write_all(format!("sealed from {}\n", i + 1).as_bytes())
            .await
            .unwrap();
        let want = format!("guest {}> sealed from {}", i + 1, i + 1);
        assert_eq!(next_line(&mut host_out).await, Some(want));
    }
    assert!(!relay.logged("sealed"));

    // The host's input ends: each guest gets its end frame, then the end.
    drop(host_in);
    assert_eq!(exit_code(&mut host).await, 0);
    for (g, _) in &mut guests {
        assert_eq!(exit_code(g).await, 0);
    }
}

#[tokio::test]
async fn a_room_guest_with_a_wrong_secret_exits_6_and_the_room_goes_on() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, line) =
        host_line(&url, &["--guests", "2", "--admit", "auto"]).await;
    let code = code_in(&line);
    let wrong = format!(
        "{}-{}",
        &code[..6],
        if code.ends_with("33333") {
            "44444"
        } else {
            "33333"
        }
    );
    let mut bad = client(&["join", "--url", &url, &wrong]);
    let mut bad_err = BufReader::new(bad.stderr.take().unwrap()).lines();
    stderr_line(
        &mut bad_err,
        "the code was mistyped or someone else tried it",
    )
    .await;
    assert_eq!(exit_code(&mut bad).await, 6);
    let said = stderr_line(&mut host_err, "guest 1: the code was mistyped").await;
    assert!(said.contains("removed, the room goes on"), "{said}");

    let mut good = client(&["join", "--url", &url, &code]);
    let mut good_err = BufReader::new(good.stderr.take().unwrap()).lines();
    stderr_line(&mut good_err, "joined as guest 2").await;
    stderr_line(&mut host_err, "guest 2 is in").await;
    let mut host_in = host.stdin.take().unwrap();
    let mut good_out = BufReader::new(good.stdout.take().unwrap()).lines();
    host_in.write_all(b"still on\n").await.unwrap();
    assert_eq!(next_line(&mut good_out).await.as_deref(), Some("still on"));
    drop(host_in);
    assert_eq!(exit_code(&mut host).await, 0);
}
