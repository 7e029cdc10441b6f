//! `relay host` and `relay join` as people run them: separate processes,
//! stdin to the peer, the peer's data to stdout, messages on stderr, and an
//! exit status that says how it ended.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{Relay, WAIT};

fn client(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .env_remove("RELAY_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start relay client")
}

/// Reads stderr lines until one contains `needle`; returns it.
async fn stderr_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.expect("stderr") {
            if l.contains(needle) {
                return l;
            }
        }
        panic!("stderr ended before {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} on stderr in time"))
}

/// Starts `relay host --url url` with `extra` flags and reads the code it
/// prints: (the process, its stderr lines after the code, the code).
async fn host(
    url: &str,
    extra: &[&str],
) -> (
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    String,
) {
    let args: Vec<&str> = ["host", "--url", url]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut host = client(&args);
    let mut err = BufReader::new(host.stderr.take().unwrap()).lines();
    let line = stderr_line(&mut err, "code ").await;
    let code = line
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    (host, err, code)
}

async fn next_line(
    l: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Option<String> {
    tokio::time::timeout(WAIT, l.next_line())
        .await
        .expect("a line in time")
        .expect("stdout")
}

async fn exit_code(child: &mut Child) -> i32 {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exit in time")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[tokio::test]
async fn host_and_join_pipe_lines_both_ways_and_exit_cleanly() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, code) = host(&url, &[]).await;

    // A person types the code as they read it: lower case, with a hyphen.
    let typed = format!("{}-{}", &code[..3], &code[3..]).to_lowercase();
    let mut join = client(&["join", "--url", &url, &typed]);
    let mut join_err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut join_err, "joined").await;
    stderr_line(&mut host_err, "browser joined").await;

    let mut host_in = host.stdin.take().unwrap();
    let mut join_in = join.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in
        .write_all("from the mac\nsecond line é\n".as_bytes())
        .await
        .unwrap();
    join_in.write_all(b"from the browser\n").await.unwrap();
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("from the mac")
    );
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("second line é")
    );
    assert_eq!(
        next_line(&mut host_out).await.as_deref(),
        Some("from the browser")
    );

    // The browser's input ends: it leaves; the host sees the session end.
    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    stderr_line(&mut host_err, "session over").await;
    assert_eq!(exit_code(&mut host).await, 0);
}

#[tokio::test]
async fn binary_mode_relays_bytes_verbatim() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, code) = host(&url, &["--binary"]).await;
    let mut join = client(&["join", "--url", &url, &code, "--binary"]);
    let mut join_err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut join_err, "joined").await;
    stderr_line(&mut host_err, "browser joined").await;
    let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let mut host_in = host.stdin.take().unwrap();
    host_in.write_all(&bytes).await.unwrap();
    drop(host_in); // the mac leaves after sending
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, join.stdout.take().unwrap().read_to_end(&mut out))
        .await
        .expect("output in time")
        .unwrap();
    assert_eq!(out, bytes);
    stderr_line(&mut join_err, "the mac ended the session").await;
    assert_eq!(exit_code(&mut join).await, 0);
    assert_eq!(exit_code(&mut host).await, 0);
}

#[tokio::test]
async fn a_refused_join_exits_1_with_the_error_code() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let mut join = client(&["join", "--url", &url, "333333"]);
    let mut err = BufReader::new(join.stderr.take().unwrap()).lines();
    let line = stderr_line(&mut err, "INVALID_CODE").await;
    assert!(line.contains("Check the code"), "{line}");
    assert_eq!(exit_code(&mut join).await, 1);
}

#[tokio::test]
async fn an_unreachable_relay_exits_3_after_the_retries() {
    let mut join = client(&[
        "join",
        "--url",
        "ws://127.0.0.1:1",
        "333333",
        "--max-retries",
        "1",
        "--connect-timeout",
        "1s",
    ]);
    let mut err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut err, "cannot reach the relay").await;
    stderr_line(&mut err, "could not reach the relay after 1 attempts").await;
    assert_eq!(exit_code(&mut join).await, 3);
}
