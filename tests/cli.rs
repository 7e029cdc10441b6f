//! `relay host` and `relay join` as people run them: separate processes,
//! stdin to the peer, the peer's data to stdout, messages on stderr, and an
//! exit status that says how it ended; a relay restarted under them, wrong
//! addresses, and a real terminal (a pty from `script`).

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{Relay, WAIT, http_get};

pub(crate) fn client(args: &[&str]) -> Child {
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

/// Reads lines (stderr, or a terminal's output) until one contains `needle`; returns it.
pub(crate) async fn stderr_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
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

pub(crate) type ErrLines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// The code in a line like `relay: code 6YM9AQ: open ...` (or `new code`).
pub(crate) fn code_in(line: &str) -> String {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "code");
    words
        .next()
        .unwrap_or_else(|| panic!("no code in {line:?}"))
        .trim_end_matches(':')
        .to_owned()
}

/// Starts `relay host --url url` with `extra` flags and reads the code it
/// prints: (the process, its stderr lines after the code, the code).
pub(crate) async fn host(url: &str, extra: &[&str]) -> (Child, ErrLines, String) {
    let (host, err, line) = host_line(url, extra).await;
    (host, err, code_in(&line))
}

/// As [`host`], with the whole line that gave the code.
pub(crate) async fn host_line(url: &str, extra: &[&str]) -> (Child, ErrLines, String) {
    let args: Vec<&str> = ["host", "--url", url]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut host = client(&args);
    let mut err = BufReader::new(host.stderr.take().unwrap()).lines();
    let line = stderr_line(&mut err, "code ").await;
    (host, err, line)
}

/// Starts `relay join --url url code` and waits until it joined.
async fn joined(url: &str, code: &str, extra: &[&str]) -> (Child, ErrLines) {
    let args: Vec<&str> = ["join", "--url", url, code]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut join = client(&args);
    let mut err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut err, "joined").await;
    (join, err)
}

pub(crate) async fn next_line(
    l: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Option<String> {
    tokio::time::timeout(WAIT, l.next_line())
        .await
        .expect("a line in time")
        .expect("stdout")
}

pub(crate) async fn exit_code(child: &mut Child) -> i32 {
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
async fn with_stderr_closed_the_clients_still_pipe_and_exit_with_their_status() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, code) = host(&url, &[]).await;
    // The browser's stderr is a pipe nobody reads from the start (as under
    // a reader that went away): each line it would print fails with EPIPE.
    let mut join = client(&["join", "--url", &url, &code]);
    drop(join.stderr.take());
    stderr_line(&mut host_err, "browser joined").await;
    // The host's reader goes away too: its closing lines fail the same way.
    drop(host_err);

    let mut host_in = host.stdin.take().unwrap();
    let mut join_in = join.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in.write_all(b"from the mac\n").await.unwrap();
    join_in.write_all(b"from the browser\n").await.unwrap();
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("from the mac")
    );
    assert_eq!(
        next_line(&mut host_out).await.as_deref(),
        Some("from the browser")
    );
    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    assert_eq!(exit_code(&mut host).await, 0);

    // A refusal keeps its status (1) with stderr a dead pipe, or closed
    // outright by the shell (`2>&-`).
    let mut refused = client(&["join", "--url", &url, "333333"]);
    drop(refused.stderr.take());
    assert_eq!(exit_code(&mut refused).await, 1);
    let mut closed = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 2>&-"#)
        .arg(env!("CARGO_BIN_EXE_relay"))
        .args(["join", "--url", &url, "333333"])
        .env_remove("RELAY_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start relay client");
    assert_eq!(exit_code(&mut closed).await, 1);
}

#[tokio::test]
async fn when_stdouts_reader_goes_away_the_client_leaves_and_exits_0() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, code) = host(&url, &[]).await;
    let mut join = client(&["join", "--url", &url, &code]);
    let mut join_err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut join_err, "joined").await;
    stderr_line(&mut host_err, "browser joined").await;
    let mut host_in = host.stdin.take().unwrap();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in.write_all(b"first\n").await.unwrap();
    assert_eq!(next_line(&mut join_out).await.as_deref(), Some("first"));
    // As `relay join ... | head -1`: the reader has what it wanted and goes.
    drop(join_out);
    host_in.write_all(b"second\n").await.unwrap();
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
    let line = stderr_line(&mut err, "cannot reach the relay").await;
    // The cause, the wait before the next try and its number.
    assert!(
        line.contains("(connection refused at ws://127.0.0.1:1/browser)"),
        "{line}"
    );
    let wait = line
        .split("retrying in ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" s, attempt 1"))
        .unwrap_or_else(|| panic!("no wait in {line:?}"));
    let wait: f64 = wait.parse().unwrap_or_else(|_| panic!("{line}"));
    // The first retry waits 1 s ± 25 %.
    assert!((0.7..=1.3).contains(&wait), "{line}");
    stderr_line(&mut err, "could not reach the relay after 1 attempts").await;
    assert_eq!(exit_code(&mut join).await, 3);
}

#[tokio::test]
async fn the_code_comes_with_the_page_address_and_http_urls_work() {
    let relay = Relay::start(&[]);
    // http:// is what a person copies from the browser's address bar.
    let url = format!("http://{}", relay.addr);
    let (mut host, mut host_err, line) = host_line(&url, &[]).await;
    let page = format!("http://{}/", relay.addr);
    assert!(
        line.contains(&format!("open {page} and type it there")),
        "{line}"
    );
    let (status, body) = http_get(relay.addr, "/").await;
    assert_eq!(status, 200, "the page is where the host says");
    assert!(body.contains("<html"), "{body}");

    let (mut join, _join_err) = joined(&url, &code_in(&line), &[]).await;
    stderr_line(&mut host_err, "browser joined").await;
    let mut join_in = join.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    join_in.write_all(b"over http\n").await.unwrap();
    assert_eq!(next_line(&mut host_out).await.as_deref(), Some("over http"));
    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    assert_eq!(exit_code(&mut host).await, 0);
}

/// Runs `args`, which must fail at once with exit status 2; returns stderr.
async fn fails_with_a_wrong_address(args: &[&str]) -> String {
    let mut c = client(args);
    let mut err = String::new();
    let mut stderr = c.stderr.take().unwrap();
    tokio::time::timeout(WAIT, stderr.read_to_string(&mut err))
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not end"))
        .unwrap();
    assert_eq!(exit_code(&mut c).await, 2, "{args:?}: {err}");
    assert!(!err.contains("retrying"), "{args:?} retried: {err}");
    err
}

#[tokio::test]
async fn wrong_addresses_fail_at_once_saying_what_to_give_instead() {
    let relay = Relay::start(&[]);
    let root = format!("ws://{}", relay.addr);

    // The endpoint's own path, as in the protocol's examples.
    let err = fails_with_a_wrong_address(&["host", "--url", &format!("{root}/mac")]).await;
    assert!(err.contains("drop the /mac path"), "{err}");
    assert!(err.contains(&format!("e.g. {root} ")), "{err}");

    // A path the relay does not serve: its HTTP 404 is named, with the fix.
    let err =
        fails_with_a_wrong_address(&["join", "--url", &format!("{root}/relay"), "333333"]).await;
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains("the path /relay is wrong"), "{err}");
    assert!(err.contains(&format!("e.g. {root}")), "{err}");

    // Not a WebSocket scheme, and no scheme at all.
    let err =
        fails_with_a_wrong_address(&["host", "--url", &format!("ftp://{}", relay.addr)]).await;
    assert!(err.contains("not a relay address; give ws://"), "{err}");
    let bare = relay.addr.to_string();
    let err = fails_with_a_wrong_address(&["host", "--url", &bare]).await;
    assert!(
        err.contains(&format!("add the scheme: ws://{bare}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_relay_restart_gives_the_host_a_new_code_a_browser_can_join() {
    let relay = Relay::start(&[]);
    let addr = relay.addr;
    let url = format!("ws://{addr}");
    let (mut host, mut host_err, code) = host(&url, &[]).await;
    let (mut old_join, mut old_join_err) = joined(&url, &code, &[]).await;
    stderr_line(&mut host_err, "browser joined").await;

    // A single node forgets its sessions when it dies; a new one takes the port.
    drop(relay);
    let listen = addr.to_string();
    let _relay = Relay::start(&[("RELAY_LISTEN", listen.as_str())]);

    let line = stderr_line(&mut host_err, "lost the session").await;
    assert!(line.contains("INVALID_RESUME"), "{line}");
    let line = stderr_line(&mut host_err, "new code ").await;
    assert!(line.contains(&format!("open http://{addr}/")), "{line}");
    let new_code = code_in(&line);
    assert_ne!(new_code, code);

    // The old browser cannot resume either, and is told what to do.
    stderr_line(&mut old_join_err, "INVALID_RESUME").await;
    stderr_line(&mut old_join_err, "ask the mac for its new code").await;
    assert_eq!(exit_code(&mut old_join).await, 1);

    let (mut join, mut join_err) = joined(&url, &new_code, &[]).await;
    stderr_line(&mut host_err, "browser joined").await;
    let mut host_in = host.stdin.take().unwrap();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    host_in.write_all(b"after the restart\n").await.unwrap();
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("after the restart")
    );
    drop(host_in);
    stderr_line(&mut join_err, "the mac ended the session").await;
    assert_eq!(exit_code(&mut host).await, 0);
    assert_eq!(exit_code(&mut join).await, 0);
}

#[tokio::test]
async fn peer_lines_are_marked_when_asked_and_piped_output_stays_verbatim() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, code) = host(&url, &["--peer-prefix", "always"]).await;
    // The browser's output is a pipe and the default is auto: no mark.
    let (mut join, _join_err) = joined(&url, &code, &[]).await;
    stderr_line(&mut host_err, "browser joined").await;
    let mut host_in = host.stdin.take().unwrap();
    let mut join_in = join.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut join_out = BufReader::new(join.stdout.take().unwrap()).lines();
    join_in.write_all(b"from the browser\n").await.unwrap();
    host_in.write_all(b"from the mac\n").await.unwrap();
    assert_eq!(
        next_line(&mut host_out).await.as_deref(),
        Some("browser> from the browser")
    );
    assert_eq!(
        next_line(&mut join_out).await.as_deref(),
        Some("from the mac")
    );
    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    assert_eq!(exit_code(&mut host).await, 0);
}

/// `relay ARGS` on a real pty (util-linux `script`), with the settings
/// the tests pass by flag cleared from the environment; its stdout is what
/// the terminal shows, its stdin what a person types.
fn on_a_terminal(args: &str) -> Child {
    let cmd = format!("'{}' {args}", env!("CARGO_BIN_EXE_relay"));
    Command::new("script")
        .args([
            "--quiet",
            "--flush",
            "--return",
            "--command",
            &cmd,
            "/dev/null",
        ])
        .env_remove("RELAY_URL")
        .env_remove("RELAY_PEER_PREFIX")
        .env_remove("RELAY_GUESTS")
        .env_remove("RELAY_ADMIT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start script (util-linux)")
}
#[tokio::test]
async fn on_a_terminal_the_peers_lines_are_marked() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    // Its output is what the terminal shows.
    let mut term = on_a_terminal(&format!("host --url {url}"));
    let mut screen = BufReader::new(term.stdout.take().unwrap()).lines();
    let code = code_in(&stderr_line(&mut screen, "code ").await);
    let (mut join, _join_err) = joined(&url, &code, &[]).await;
    let mut join_in = join.stdin.take().unwrap();
    join_in.write_all(b"hello terminal\n").await.unwrap();
    let line = stderr_line(&mut screen, "hello terminal").await;
    assert_eq!(line.trim_end_matches('\r'), "browser> hello terminal");
    drop(join_in);
    assert_eq!(exit_code(&mut join).await, 0);
    stderr_line(&mut screen, "session over").await;
    let _ = term.kill().await;
}

/// Starts `relay join --name name` for a room that asks; waits until it is told to wait.
async fn waiting_guest(url: &str, code: &str, name: &str) -> (Child, ErrLines) {
    let mut join = client(&["join", "--url", url, code, "--name", name]);
    let mut err = BufReader::new(join.stderr.take().unwrap()).lines();
    stderr_line(&mut err, "waiting for the host to let you in").await;
    (join, err)
}

#[tokio::test]
async fn a_room_host_admits_denies_addresses_and_removes_guests_from_stdin() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (mut host, mut host_err, code) = host(
        &url,
        &["--guests", "2", "--admit", "ask", "--peer-prefix", "always"],
    )
    .await;
    let mut host_in = host.stdin.take().unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap()).lines();

    // Ana asks and is let in; piped input answers with commands.
    let (mut ana, mut ana_err) = waiting_guest(&url, &code, "Ana").await;
    let ask = stderr_line(&mut host_err, "asks to join").await;
    assert_eq!(
        ask,
        "relay: guest 1 (Ana) asks to join: /admit 1 or /deny 1"
    );
    host_in.write_all(b"/admit 1\n").await.unwrap();
    stderr_line(&mut ana_err, "joined as guest 1").await;
    stderr_line(&mut host_err, "guest 1 (Ana) is in").await;

    // Bo asks and is turned away: a clear message and exit status 4.
    let (mut bo, mut bo_err) = waiting_guest(&url, &code, "Bo").await;
    stderr_line(&mut host_err, "guest 2 (Bo) asks to join").await;
    host_in.write_all(b"/deny 2\n").await.unwrap();
    let line = stderr_line(&mut bo_err, "DENIED").await;
    assert!(line.contains("did not let you in"), "{line}");
    assert_eq!(exit_code(&mut bo).await, 4);
    stderr_line(&mut host_err, "guest 2 (Bo) was turned away").await;

    let (mut cy, mut cy_err) = waiting_guest(&url, &code, "Cy").await;
    stderr_line(&mut host_err, "guest 3 (Cy) asks to join").await;
    host_in.write_all(b"/admit 3\n").await.unwrap();
    stderr_line(&mut cy_err, "joined as guest 3").await;
    stderr_line(&mut host_err, "guest 3 (Cy) is in").await;

    // To all, to Cy only, to all again; a line starting with / sent as //.
    let mut ana_out = BufReader::new(ana.stdout.take().unwrap()).lines();
    let mut cy_out = BufReader::new(cy.stdout.take().unwrap()).lines();
    host_in
        .write_all(b"hello all\n/to 3\nonly Cy\n/to all\n//not a command\n")
        .await
        .unwrap();
    for want in ["hello all", "/not a command"] {
        assert_eq!(next_line(&mut ana_out).await.as_deref(), Some(want));
    }
    for want in ["hello all", "only Cy", "/not a command"] {
        assert_eq!(next_line(&mut cy_out).await.as_deref(), Some(want));
    }
    // Each guest's lines are marked with who sent them.
    let mut ana_in = ana.stdin.take().unwrap();
    let mut cy_in = cy.stdin.take().unwrap();
    ana_in.write_all(b"from Ana\n").await.unwrap();
    assert_eq!(
        next_line(&mut host_out).await.as_deref(),
        Some("guest 1> from Ana")
    );
    cy_in.write_all(b"from Cy\n").await.unwrap();
    assert_eq!(
        next_line(&mut host_out).await.as_deref(),
        Some("guest 3> from Cy")
    );

    // Cy is removed: told so, exit status 5; what follows reaches Ana only.
    host_in.write_all(b"/remove 3\nafter Cy\n").await.unwrap();
    let line = stderr_line(&mut cy_err, "REMOVED").await;
    assert!(line.contains("removed you"), "{line}");
    assert_eq!(exit_code(&mut cy).await, 5);
    stderr_line(&mut host_err, "guest 3 (Cy) was removed").await;
    assert_eq!(next_line(&mut ana_out).await.as_deref(), Some("after Cy"));
    assert_eq!(
        next_line(&mut cy_out).await,
        None,
        "Cy got a line after its removal"
    );

    // A mistyped command is named, and nothing is sent.
    host_in.write_all(b"/kick 1\n").await.unwrap();
    let line = stderr_line(&mut host_err, "unknown command").await;
    assert!(line.contains("/admit ID"), "{line}");

    // The host's input ends: the room is over for everyone.
    drop(host_in);
    assert_eq!(exit_code(&mut host).await, 0);
    stderr_line(&mut ana_err, "the mac ended the session").await;
    assert_eq!(exit_code(&mut ana).await, 0);
}

#[tokio::test]
async fn a_full_room_turns_a_join_away_with_its_own_message() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    let (_host, mut host_err, code) = host(&url, &["--guests", "1", "--admit", "auto"]).await;
    let (_first, mut first_err) = joined(&url, &code, &[]).await;
    stderr_line(&mut host_err, "guest 1 is in").await;
    let mut late = client(&["join", "--url", &url, &code]);
    let mut err = BufReader::new(late.stderr.take().unwrap()).lines();
    let line = stderr_line(&mut err, "ROOM_FULL").await;
    assert!(line.contains("as many guests as the host allows"), "{line}");
    assert_eq!(exit_code(&mut late).await, 1);
    // An asking room cannot read answers from binary input: said at once.
    let err =
        fails_with_a_wrong_address(&["host", "--url", &url, "--guests", "2", "--binary"]).await;
    assert!(err.contains("use --admit auto"), "{err}");
    let _ = &mut first_err;
}

#[tokio::test]
async fn on_a_terminal_y_answers_the_guest_that_asks() {
    let relay = Relay::start(&[]);
    let url = format!("ws://{}", relay.addr);
    // On a terminal a person answers y or n.
    let mut term = on_a_terminal(&format!("host --url {url} --guests 2"));
    let mut screen = BufReader::new(term.stdout.take().unwrap()).lines();
    let mut typed = term.stdin.take().unwrap();
    let code = code_in(&stderr_line(&mut screen, "code ").await);

    let (mut no, mut no_err) = waiting_guest(&url, &code, "No").await;
    let ask = stderr_line(&mut screen, "asks to join").await;
    assert_eq!(
        ask.trim_end_matches('\r'),
        "relay: guest 1 (No) asks to join: admit? [y/n]"
    );
    typed.write_all(b"n\n").await.unwrap();
    stderr_line(&mut no_err, "DENIED").await;
    assert_eq!(exit_code(&mut no).await, 4);

    let (mut yes, mut yes_err) = waiting_guest(&url, &code, "Yes").await;
    stderr_line(&mut screen, "guest 2 (Yes) asks to join").await;
    typed.write_all(b"y\n").await.unwrap();
    stderr_line(&mut yes_err, "joined as guest 2").await;
    // With no one asking, y is data like any line.
    stderr_line(&mut screen, "guest 2 (Yes) is in").await;
    typed.write_all(b"y\n").await.unwrap();
    let mut yes_out = BufReader::new(yes.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut yes_out).await.as_deref(), Some("y"));
    let _ = term.kill().await;
}
