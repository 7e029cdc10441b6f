//! Fixtures for the integration tests: a real `relay` process on a free port
//! and real WebSocket clients over real sockets. Every wait has a timeout so a
//! broken relay fails a test instead of hanging it; no test asserts a timing.

#![allow(dead_code)]

pub mod buffering;
pub mod certs;
pub mod cluster;
pub mod traffic;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A relay's last stderr lines, newest last.
pub type Logs = Arc<Mutex<VecDeque<String>>>;

/// Keeps the last lines of a relay's stderr in `logs` and sends the address
/// from its "relay listening" line; the sender drops if the relay dies first.
/// With `RELAY_TEST_LOG_DIR` set, every line is also appended to
/// `<dir>/<name>.log`, for runs too long for the last lines to explain.
pub fn tail_logs(
    stderr: std::process::ChildStderr,
    logs: &Logs,
    name: &str,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = Arc::clone(logs);
    let mut file = std::env::var_os("RELAY_TEST_LOG_DIR").map(|d| {
        let path = std::path::Path::new(&d).join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    });
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = &mut file {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            // Kept before the start is announced, so start_fields() always finds it.
            {
                let mut l = keep.lock().unwrap_or_else(|e| e.into_inner());
                if l.len() > 2000 {
                    l.pop_front();
                }
                l.push_back(line.clone());
            }
            if let Some(t) = &tx {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "relay listening" {
                        let addr = v["fields"]["addr"].as_str().unwrap_or("").to_owned();
                        let _ = t.send(addr);
                        tx = None;
                    }
                }
            }
        }
        // The process closed its stderr: every line it wrote is above.
        keep.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(END_OF_LOG.to_owned());
    });
    rx
}

/// The line the log keeper adds once a relay's stderr ended.
pub const END_OF_LOG: &str = "-- end of the relay's log --";

/// A plain HTTP/1.0 GET to `addr` (so no chunked answer): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("HTTP answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A duration from the environment variable `var` (humantime: `45s`, `10m`,
/// `1h`), or `default` when it is unset: how long the chaos and soak tests
/// run (`make chaos`, `make soak` set them; `make test` takes the defaults).
pub fn duration_from_env(var: &str, default: Duration) -> Duration {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
            .unwrap_or_else(|e| panic!("{var}={v:?} is not a duration like 45s or 10m: {e}")),
        _ => default,
    }
}

/// Resident memory of process `pid`, in bytes (`VmRSS` in /proc).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc status of {pid}: {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Longest any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A relay process started for one test; killed when dropped.
pub struct Relay {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Relay {
    /// Starts a relay with the test defaults and `env` on top.
    pub fn start(env: &[(&str, &str)]) -> Relay {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.env_clear()
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_LOG_FORMAT", "json")
            .env("RELAY_LOG", "relay=debug,info")
            .env("RELAY_NODE_ID", "test")
            // Most tests join often from 127.0.0.1; the rate-limit test sets its own.
            .env("RELAY_JOIN_RATE", "0")
            // One address, many connections and joins: the abuse limits get
            // their own tests (tests/limits.rs), which set them.
            .env("RELAY_MAX_CONNECTIONS_PER_ADDR", "0")
            .env("RELAY_FAILED_JOIN_LIMIT", "0")
            .env("RELAY_WORKERS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the relay binary");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let rx = tail_logs(stderr, &logs, &format!("relay-{}", child.id()));
        let addr = match rx.recv_timeout(WAIT) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("relay did not start: {:?}", logs.lock().unwrap());
            }
        };
        Relay { child, addr, logs }
    }

    /// `ws://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connects a mac.
    pub async fn mac(&self) -> Ws {
        Ws::connect(&self.url("/mac")).await
    }

    /// Connects a browser.
    pub async fn browser(&self) -> Ws {
        Ws::connect(&self.url("/browser")).await
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Its last lines may still be on their way to `logs`.
                while !self.logged(END_OF_LOG) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return s;
            }
            assert!(Instant::now() < deadline, "relay did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the process, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// A plain HTTP GET: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// The value of an unlabelled or labelled sample in /metrics, e.g.
    /// `relay_joins_total{result="ok"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in metrics"))
    }

    /// Polls `sample` until `done(value)` holds (fails the test after [`WAIT`]).
    pub async fn wait_metric(&self, sample: &str, done: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(sample).await;
            if done(v) {
                return;
            }
            assert!(Instant::now() < deadline, "{sample} stayed at {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The fields of the start line ("relay listening").
    pub fn start_fields(&self) -> Value {
        self.log_line("relay listening")
            .map(|v| v["fields"].clone())
            .expect("a start line")
    }

    /// The first log line whose message is `message`, whole (`timestamp`,
    /// `level`, `fields`).
    pub fn log_line(&self, message: &str) -> Option<Value> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"] == message)
    }

    /// Waits until the log holds a line containing `needle` (fails after [`WAIT`]).
    pub async fn wait_logged(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.logged(needle) {
            assert!(Instant::now() < deadline, "never logged {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the log holds a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- relay log (last lines) ----");
            let logs = self.logs.lock().unwrap();
            for l in logs.iter().skip(logs.len().saturating_sub(80)) {
                eprintln!("{l}");
            }
        }
    }
}

/// The stream type of a test client.
pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame (code, reason).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Ended,
}

/// A WebSocket client over a real TCP socket.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects, failing the test if it takes longer than [`WAIT`].
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        Ws { stream }
    }

    /// The underlying stream, e.g. to split it into halves.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Ws {
        Ws { stream }
    }

    /// Sends a text frame.
    pub async fn text(&mut self, text: impl Into<String>) {
        let t: String = text.into();
        self.stream.send(Message::text(t)).await.expect("send text");
    }

    /// Sends a JSON control message.
    pub async fn json(&mut self, v: Value) {
        self.text(v.to_string()).await;
    }

    /// Sends a binary frame.
    pub async fn binary(&mut self, data: impl Into<Vec<u8>>) {
        self.stream
            .send(Message::binary(data.into()))
            .await
            .expect("send binary");
    }

    /// Sends a raw frame (for malformed input).
    pub async fn frame(&mut self, frame: Frame) {
        self.stream
            .send(Message::Frame(frame))
            .await
            .expect("send frame");
    }

    /// Sends a `data` text frame with `payload`.
    pub async fn data(&mut self, payload: &str) {
        self.json(json!({"type": "data", "payload": payload})).await;
    }

    /// The next text, binary or close (pings are answered on the way).
    pub async fn recv(&mut self) -> Got {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame in time");
            return match next {
                None => Got::Ended,
                Some(Err(_)) => Got::Ended,
                Some(Ok(Message::Text(t))) => Got::Text(t.to_string()),
                Some(Ok(Message::Binary(b))) => Got::Binary(b.to_vec()),
                Some(Ok(Message::Close(c))) => Got::Close(
                    c.map(|CloseFrame { code, reason }| (code.into(), reason.to_string())),
                ),
                Some(Ok(_)) => continue,
            };
        }
    }

    /// The next message, which must be a JSON text frame.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Got::Text(t) => {
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next message, which must be a control message of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv_json().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// The next message, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "got {v}");
        let msg = v["message"].as_str().expect("message is a string");
        assert!(
            msg.len() > 20,
            "error message should tell what to do: {msg}"
        );
        v
    }

    /// The next message, which must be a close with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        match self.recv().await {
            Got::Close(Some((c, _))) => assert_eq!(c, code, "close code"),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    /// Reads until the connection ends; returns the close code, if a close frame came.
    pub async fn until_closed(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Got::Close(c) => return c.map(|(code, _)| code),
                Got::Ended => return None,
                _ => {}
            }
        }
    }

    /// Closes with `code` (politely, waiting for the echo).
    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = self.stream.close(Some(frame)).await;
        let _ =
            tokio::time::timeout(WAIT, async { while self.stream.next().await.is_some() {} }).await;
    }

    /// Drops the TCP connection without a close frame (a network failure).
    pub fn drop_connection(self) {
        let stream = self.stream.into_inner();
        if let MaybeTlsStream::Plain(tcp) = stream {
            let std = tcp.into_std().expect("into std");
            let _ = std.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A registered mac and what `registered` said.
pub struct Registered {
    /// The mac's connection.
    pub ws: Ws,
    /// The code.
    pub code: String,
    /// `sessionId`.
    pub session_id: String,
    /// `resumeToken`.
    pub token: String,
}

/// Connects a mac and registers it.
pub async fn register(relay: &Relay) -> Registered {
    let mut ws = relay.mac().await;
    ws.json(json!({"type": "register"})).await;
    let r = ws.expect("registered").await;
    Registered {
        ws,
        code: r["code"].as_str().expect("code").to_owned(),
        session_id: r["sessionId"].as_str().expect("sessionId").to_owned(),
        token: r["resumeToken"].as_str().expect("resumeToken").to_owned(),
    }
}

/// A paired mac and browser.
pub struct Pair {
    /// The mac.
    pub mac: Ws,
    /// The browser.
    pub browser: Ws,
    /// The code.
    pub code: String,
    /// The session id (same for both).
    pub session_id: String,
    /// The mac's resume token.
    pub mac_token: String,
    /// The browser's resume token.
    pub browser_token: String,
}

/// Registers a mac, joins a browser, and consumes `joined`/`peer_joined`.
pub async fn pair(relay: &Relay) -> Pair {
    let Registered {
        ws: mut mac,
        code,
        session_id,
        token,
    } = register(relay).await;
    let mut browser = relay.browser().await;
    browser.json(json!({"type": "join", "code": code})).await;
    let j = browser.expect("joined").await;
    assert_eq!(j["sessionId"], session_id.as_str());
    mac.expect("peer_joined").await;
    Pair {
        mac,
        browser,
        code,
        session_id,
        mac_token: token,
        browser_token: j["resumeToken"].as_str().expect("token").to_owned(),
    }
}

/// A `resume` message.
pub fn resume_msg(session_id: &str, token: &str, last_seq: u64) -> Value {
    json!({"type": "resume", "sessionId": session_id, "resumeToken": token, "lastSeq": last_seq})
}
