//! Fixtures for the cluster tests: a real `redis-server`, relay nodes sharing
//! it, and a real haproxy in front of them, each on a free 127.0.0.1 port.
//! Every process is killed and every temp dir removed on drop, also when the
//! test panics; a panicking test prints the last log lines of each process.
//!
//! Nodes are started here rather than with [`super::Relay`] because cluster
//! tests need what `Relay` keeps private: the pid (SIGKILL) and a restart.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Pair, Registered, WAIT, Ws, http_get};

/// How often a fixture polls a state it cannot be told about (a port that
/// starts answering, a process that exits).
const POLL: Duration = Duration::from_millis(20);

/// The haproxy settings shared with `make cluster`; see [`Lb`].
const HAPROXY_CFG: &str = include_str!("../../deploy/local/haproxy.cfg");

/// A port that was free a moment ago. Another process may take it before it is
/// used, so every fixture that uses one retries with a new port on failure.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A fresh, empty directory under the system temp dir; removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `relay-test-KIND-PID-N`, emptied if it was left over.
    pub(crate) fn new(kind: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("relay-test-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits (blocking) for `child` to exit; fails the test after `WAIT * 2`.
fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} did not exit");
        std::thread::sleep(POLL);
    }
}

/// Kills `child` (SIGKILL) and reaps it; nothing happens if it already exited.
fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of a log file, for a failing test's output.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The path of program `name`: from PATH, else from /usr/sbin or /sbin,
/// where Debian puts haproxy and a normal user's PATH may not look.
pub(crate) fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Waits (blocking) until `GET /readyz` on `addr` answers 200: a node that
/// logged its address may still be connecting to Redis, and a test, like a
/// load balancer, should not send it clients before then.
fn wait_ready(addr: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match readyz(addr) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("/readyz answered {status}"),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!("{what} not ready in time: {last}"));
        }
        std::thread::sleep(POLL);
    }
}

/// The status of `GET /readyz` on `addr`, over a blocking socket.
fn readyz(addr: SocketAddr) -> Result<u16, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))
}

/// Connects a WebSocket, returning the error instead of failing the test:
/// for clients that reconnect and may meet a node that just went away.
pub async fn try_connect(url: &str) -> Result<Ws, String> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((stream, _))) => Ok(Ws::from_stream(stream)),
        Ok(Err(e)) => Err(format!("connect to {url}: {e}")),
        Err(_) => Err(format!("connect to {url}: no answer in time")),
    }
}

/// Connects a mac to `url` (e.g. `node.url("/mac")`) and registers it.
pub async fn register_at(url: &str) -> Registered {
    let mut ws = Ws::connect(url).await;
    ws.json(json!({"type": "register"})).await;
    let r = ws.expect("registered").await;
    Registered {
        ws,
        code: r["code"].as_str().expect("code").to_owned(),
        session_id: r["sessionId"].as_str().expect("sessionId").to_owned(),
        token: r["resumeToken"].as_str().expect("resumeToken").to_owned(),
    }
}

/// Registers a mac at `mac_url`, joins a browser at `browser_url`, and
/// consumes `joined`/`peer_joined`.
pub async fn pair_at(mac_url: &str, browser_url: &str) -> Pair {
    let Registered {
        ws: mut mac,
        code,
        session_id,
        token,
    } = register_at(mac_url).await;
    let mut browser = Ws::connect(browser_url).await;
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

/// Whether a Redis server answers PING on `port` (RESP over a raw socket: the
/// tests need no Redis client).
fn redis_pings(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 5];
    s.read_exact(&mut answer).is_ok() && &answer == b"+PONG"
}

/// The pid of the Redis server answering on `port` (from `INFO server`), to
/// tell ours from one another test started on a port that was free a moment ago.
fn redis_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if let Some(rest) = text.split("process_id:").nth(1) {
            if let Some((pid, _)) = rest.split_once("\r\n") {
                return pid.trim().parse().ok();
            }
        }
    }
}

/// A real `redis-server` on a free 127.0.0.1 port, with no persistence: a
/// restart comes back empty, as a replaced Redis would. Its log is
/// `redis.log` in its temp dir.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn start() -> RedisServer {
        let dir = TempDir::new("redis");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_redis(port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                    };
                }
                // Most likely the port was taken meanwhile: try another.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:PORT`, the value of `RELAY_REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across [`Self::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it answers PING now.
    pub fn pings(&self) -> bool {
        redis_pings(self.port)
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        signal(child.id(), "TERM");
        wait_child(&mut child, "redis-server");
    }

    /// Stops it with `SHUTDOWN SAVE` and waits for it to exit: its data is
    /// written to disk first, so [`Self::start_again`] brings it back with
    /// every key it had (as a Redis with persistence comes back from a
    /// restart), which makes the stop an outage rather than a loss of data.
    pub fn stop_saving(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        // A successful SHUTDOWN closes the connection without a reply.
        let _ = redis_command(self.port, &["SHUTDOWN", "SAVE"]);
        wait_child(&mut child, "redis-server");
    }

    /// Starts it again on the same port after [`Self::stop`] (empty) or
    /// [`Self::stop_saving`] (with the data it saved).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        let child = spawn_redis(self.port, self.dir.path())
            .unwrap_or_else(|e| panic!("redis-server did not start again: {e}"));
        self.child = Some(child);
    }
}

/// Starts `redis-server` on `port` and waits for PONG; the error says why not.
fn spawn_redis(port: u16, dir: &Path) -> Result<Child, String> {
    spawn_redis_with(port, dir, &[])
}

/// [`spawn_redis`] with `extra` arguments (e.g. `--replicaof`), which may
/// override the defaults.
fn spawn_redis_with(port: u16, dir: &Path, extra: &[String]) -> Result<Child, String> {
    let log = dir.join("redis.log");
    let child = Command::new(program("redis-server"))
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server (is it installed? `make deps`): {e}"))?;
    await_pong(child, port, &log)
}

/// Waits until `child` (a Redis server or Sentinel) answers PING on `port`;
/// kills it and says why if it exits, does not answer in time, or the answer
/// comes from another process that took the port.
fn await_pong(mut child: Child, port: u16, log: &Path) -> Result<Child, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Err(format!("exited with {status}:\n{}", tail(log, 20)));
        }
        if redis_pings(port) {
            if redis_pid(port) == Some(child.id()) {
                return Ok(child);
            }
            kill_child(&mut child);
            return Err(format!("port {port} is another Redis's"));
        }
        if Instant::now() > deadline {
            kill_child(&mut child);
            return Err(format!("no PONG in time:\n{}", tail(log, 20)));
        }
        std::thread::sleep(POLL);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_child(child);
        }
        if std::thread::panicking() {
            eprintln!("---- redis log (last lines) ----");
            eprintln!("{}", tail(&self.dir.path().join("redis.log"), 30));
        }
    }
}

/// One relay process, started with the same defaults as [`super::Relay`].
pub struct Node {
    /// `RELAY_NODE_ID`.
    pub id: String,
    /// The address it listens on (may change across [`Self::restart`]).
    pub addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Child,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl Node {
    /// Starts a node named `id` with the test defaults and `env` on top, and
    /// waits until its `/readyz` answers 200.
    pub fn start(id: &str, env: &[(&str, &str)]) -> Node {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (child, addr) = spawn_relay(id, &env, "127.0.0.1:0", &logs)
            .unwrap_or_else(|e| panic!("{id} did not start: {e}"));
        Node {
            id: id.to_owned(),
            addr,
            env,
            child,
            logs,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// A plain HTTP GET: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Polls `path` until it answers `status` (fails the test after [`WAIT`]).
    pub async fn wait_status(&self, path: &str, status: u16) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (got, body) = self.get(path).await;
            if got == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {path} stayed {got} {body:?}, expected {status}",
                self.id
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The value of a sample in /metrics, e.g. `relay_joins_total{result="ok"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in {}'s metrics", self.id))
    }

    /// Every `relay_bus_dropped_total` sample: (reason, envelopes dropped).
    /// The reasons exist at 0 from the start, so none is ever missing.
    pub async fn bus_drops(&self) -> Vec<(String, f64)> {
        let (_, body) = self.get("/metrics").await;
        let drops: Vec<(String, f64)> = body
            .lines()
            .filter_map(|l| l.strip_prefix("relay_bus_dropped_total{reason=\""))
            .filter_map(|l| {
                let (reason, value) = l.split_once("\"} ")?;
                Some((reason.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        assert!(
            !drops.is_empty(),
            "no relay_bus_dropped_total on {}",
            self.id
        );
        drops
    }

    /// Polls `sample` until `done(value)` holds (fails the test after [`WAIT`]).
    pub async fn wait_metric(&self, sample: &str, done: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(sample).await;
            if done(v) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed at {v} on {}",
                self.id
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the log holds a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until the log holds a line containing `needle` (fails after [`WAIT`]).
    pub async fn wait_logged(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.logged(needle) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?}",
                self.id
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resident memory of the process, in bytes (`VmRSS` in /proc).
    pub fn rss_bytes(&self) -> u64 {
        super::rss_of(self.pid())
    }

    /// How many file descriptors the process has open (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap_or_else(|e| panic!("read /proc fds of {}: {e}", self.id))
            .count()
    }

    /// Sends SIGTERM (the node drains, then exits).
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Sends SIGSTOP: the node answers nothing from now on, yet stays in
    /// the cluster while its lease lasts (a long pause, not a death). The
    /// process is killed as usual when the node is dropped.
    pub fn sigstop(&self) {
        signal(self.pid(), "STOP");
    }

    /// Sends SIGKILL and reaps the process: a node that dies without a word.
    pub fn sigkill(&mut self) {
        signal(self.pid(), "KILL");
        wait_child(&mut self.child, &self.id);
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits for the process to exit, serving the test's other tasks meanwhile.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.id);
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts a fresh process with the same node id and env, killing the old
    /// one if it still runs, and waits until it is ready. It takes the old
    /// address when it can (so a load balancer's config stays right), else a
    /// new port: check [`Self::addr`].
    pub fn restart(&mut self) {
        kill_child(&mut self.child);
        self.logs
            .lock()
            .unwrap()
            .push_back(format!("---- {} restarted ----", self.id));
        let (child, addr) = spawn_relay(&self.id, &self.env, &self.addr.to_string(), &self.logs)
            .or_else(|_| spawn_relay(&self.id, &self.env, "127.0.0.1:0", &self.logs))
            .unwrap_or_else(|e| panic!("{} did not start again: {e}", self.id));
        self.child = child;
        self.addr = addr;
    }
}

/// Starts the relay binary listening on `listen` and waits for its
/// "relay listening" line; its stderr lines go to `logs`.
fn spawn_relay(
    id: &str,
    env: &[(String, String)],
    listen: &str,
    logs: &Arc<Mutex<VecDeque<String>>>,
) -> Result<(Child, SocketAddr), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.env_clear()
        .env("RELAY_LISTEN", listen)
        .env("RELAY_LOG_FORMAT", "json")
        .env("RELAY_LOG", "relay=debug,info")
        .env("RELAY_NODE_ID", id)
        // Tests join often from 127.0.0.1.
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
    let rx = super::tail_logs(stderr, logs, &format!("{id}-{}", child.id()));
    match rx.recv_timeout(WAIT) {
        Ok(a) => {
            let addr = a.parse().expect("listening address");
            if let Err(e) = wait_ready(addr, id) {
                kill_child(&mut child);
                return Err(e);
            }
            Ok((child, addr))
        }
        Err(_) => {
            kill_child(&mut child);
            let l = logs.lock().unwrap();
            let last: Vec<&str> = l.iter().rev().take(20).rev().map(String::as_str).collect();
            Err(format!(
                "no \"relay listening\" line; last lines:\n{}",
                last.join("\n")
            ))
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!("---- {} log (last lines) ----", self.id);
            let logs = self.logs.lock().unwrap();
            for l in logs.iter().skip(
                logs.len().saturating_sub(
                    std::env::var("RELAY_TEST_LOG_LINES")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(80),
                ),
            ) {
                eprintln!("{l}");
            }
        }
    }
}

/// A Redis server and relay nodes `node-1` ... `node-N` sharing it. Nodes are
/// numbered from 1, like their ids: `cluster.node(1)` is `node-1`.
pub struct Cluster {
    // Nodes first: they are dropped before the Redis they use.
    nodes: Vec<Node>,
    /// The shared Redis the cluster started ([`Self::start`]).
    pub redis: OwnRedis,
}

/// The Redis a [`Cluster`] started, used as a [`RedisServer`]
/// (`cluster.redis.stop()`); there is none in a cluster made with
/// [`Cluster::start_with_redis_url`], and using it there fails the test.
pub struct OwnRedis(Option<RedisServer>);

impl std::ops::Deref for OwnRedis {
    type Target = RedisServer;

    fn deref(&self) -> &RedisServer {
        self.0
            .as_ref()
            .expect("this cluster has no Redis of its own (start_with_redis_url)")
    }
}

impl std::ops::DerefMut for OwnRedis {
    fn deref_mut(&mut self) -> &mut RedisServer {
        self.0
            .as_mut()
            .expect("this cluster has no Redis of its own (start_with_redis_url)")
    }
}

impl Cluster {
    /// Starts Redis and `n` nodes with `RELAY_REDIS_URL` set, plus `env`.
    pub fn start(n: usize, env: &[(&str, &str)]) -> Cluster {
        let redis = RedisServer::start();
        let nodes = start_nodes(n, &redis.url(), env);
        Cluster {
            nodes,
            redis: OwnRedis(Some(redis)),
        }
    }

    /// Starts `n` nodes using the Redis at `url` (e.g. a [`SentinelSet`]'s),
    /// plus `env`; the caller owns that Redis and must keep it running while
    /// the cluster lives (declare it before the cluster, so it is dropped
    /// after).
    pub fn start_with_redis_url(n: usize, url: &str, env: &[(&str, &str)]) -> Cluster {
        Cluster {
            nodes: start_nodes(n, url, env),
            redis: OwnRedis(None),
        }
    }

    /// Node `n` (from 1).
    pub fn node(&self, n: usize) -> &Node {
        assert!((1..=self.nodes.len()).contains(&n), "no node {n}");
        &self.nodes[n - 1]
    }

    /// Node `n` (from 1), to signal or restart it.
    pub fn node_mut(&mut self, n: usize) -> &mut Node {
        assert!((1..=self.nodes.len()).contains(&n), "no node {n}");
        &mut self.nodes[n - 1]
    }

    /// Every node, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node's address, in order (for [`Lb`]).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// SIGKILLs node `n` (from 1).
    pub fn kill(&mut self, n: usize) {
        self.node_mut(n).sigkill();
    }
}

/// Starts nodes `node-1` ... `node-n` with `RELAY_REDIS_URL=url` plus `env`,
/// side by side: each waits for its Redis connection.
fn start_nodes(n: usize, url: &str, env: &[(&str, &str)]) -> Vec<Node> {
    let mut all: Vec<(&str, &str)> = vec![("RELAY_REDIS_URL", url)];
    all.extend_from_slice(env);
    std::thread::scope(|scope| {
        let all = &all;
        let starting: Vec<_> = (1..=n)
            .map(|i| scope.spawn(move || Node::start(&format!("node-{i}"), all)))
            .collect();
        starting
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// A real haproxy in front of relay nodes, with the settings of
/// `deploy/local/haproxy.cfg`: round robin, no stickiness, nodes whose
/// `/readyz` fails leave the rotation within half a second. Its log is
/// `haproxy.log` in its temp dir.
pub struct Lb {
    port: u16,
    /// Extra settings (see [`Self::start_blocking_websocket`]); none for the shared config.
    extra: Extra,
    child: Child,
    /// Processes of earlier configs, finishing their open connections.
    retired: Vec<Child>,
    dir: TempDir,
}

impl Lb {
    /// Starts haproxy on a free port in front of `backends`.
    pub fn start(backends: &[SocketAddr]) -> Lb {
        Self::start_with(backends, |_| Extra::default())
    }

    fn start_with(backends: &[SocketAddr], extra: impl FnOnce(&Path) -> Extra) -> Lb {
        let dir = TempDir::new("haproxy");
        let extra = extra(dir.path());
        let (child, port) = spawn_haproxy(dir.path(), backends, &extra);
        Lb {
            port,
            extra,
            child,
            retired: Vec::new(),
            dir,
        }
    }

    /// `ws://127.0.0.1:PORT/path`. The port changes with
    /// [`Self::reconfigure`], so take the URL again after it.
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// `http://127.0.0.1:PORT`, for the HTTP transport. The port changes
    /// with [`Self::reconfigure`], as for [`Self::url`].
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether haproxy's log holds a line containing `needle`, e.g.
    /// `"node-1 is DOWN"` once a health check took a node out of the rotation.
    pub fn logged(&self, needle: &str) -> bool {
        std::fs::read_to_string(self.dir.path().join("haproxy.log"))
            .unwrap_or_default()
            .contains(needle)
    }

    /// Waits until haproxy's log holds `needle` (fails after [`WAIT`]).
    pub async fn wait_logged(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.logged(needle) {
            assert!(Instant::now() < deadline, "haproxy never logged {needle:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// A plain HTTP GET through the balancer: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr(), path).await
    }

    /// Replaces the backend list (e.g. after a node came back on a new port):
    /// a new haproxy starts on a new port and the old one stops listening but
    /// keeps forwarding the connections it has until they end, as a reload
    /// would.
    pub fn reconfigure(&mut self, backends: &[SocketAddr]) {
        let (child, port) = spawn_haproxy(self.dir.path(), backends, &self.extra);
        let old = std::mem::replace(&mut self.child, child);
        // SIGUSR1 is haproxy's soft stop.
        signal(old.id(), "USR1");
        self.retired.push(old);
        self.port = port;
    }
}

impl Lb {
    /// Replaces the backend list on the same port, as `haproxy -sf` reloads
    /// in production: the new process binds beside the old one
    /// (`SO_REUSEPORT`) and then tells it to stop listening; the old one keeps
    /// forwarding the connections it has until they end. Clients that know
    /// only the balancer's URL (a client library's config) keep working,
    /// which [`Self::reconfigure`] (a new port) cannot give them.
    pub fn reload(&mut self, backends: &[SocketAddr]) {
        let dir = self.dir.path();
        let cfg = dir.join(format!(
            "haproxy-{}-reload-{}.cfg",
            self.port,
            self.retired.len()
        ));
        std::fs::write(&cfg, haproxy_config(self.port, backends, &self.extra))
            .expect("write haproxy config");
        let mut child = haproxy(dir, &cfg)
            .arg("-sf")
            .arg(self.child.id().to_string())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run haproxy (is it installed? `make deps`): {e}"));
        // The old process listens until the new one has bound and told it
        // to stop, so a connect proves nothing: a new process that could
        // not bind exits at once, which is what is watched for.
        let settle = Instant::now() + Duration::from_millis(500);
        while Instant::now() < settle {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "haproxy reload exited with {status}:\n{}",
                    tail(&dir.join("haproxy.log"), 20)
                );
            }
            std::thread::sleep(POLL);
        }
        let old = std::mem::replace(&mut self.child, child);
        self.retired.push(old);
    }
}

/// Lines a test adds to the shared haproxy config.
#[derive(Default)]
struct Extra {
    /// After `global`.
    global: String,
    /// After the frontend's `bind`.
    frontend: String,
    /// Servers to cut in [`Lb::block_websocket`].
    servers: usize,
}

/// The shared haproxy config with its `bind` line and `server` lines
/// replaced, and `extra`'s lines added.
fn haproxy_config(port: u16, backends: &[SocketAddr], extra: &Extra) -> String {
    let mut out = String::new();
    let mut servers_written = false;
    for line in HAPROXY_CFG.lines() {
        let t = line.trim_start();
        if t == "global" {
            out.push_str("global\n");
            out.push_str(&extra.global);
        } else if t.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            out.push_str(&extra.frontend);
        } else if t.starts_with("server ") {
            if !servers_written {
                for (i, a) in backends.iter().enumerate() {
                    out.push_str(&format!("    server node-{} {a}\n", i + 1));
                }
                servers_written = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(servers_written, "haproxy.cfg has no server lines");
    out
}

/// haproxy in the foreground with config `cfg`, appending its output to `dir`/haproxy.log.
fn haproxy(dir: &Path, cfg: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("haproxy.log"))
        .expect("open haproxy log");
    let mut cmd = Command::new(program("haproxy"));
    cmd.arg("-db")
        .arg("-f")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log file"))
        .stderr(log);
    cmd
}

/// Starts haproxy in the foreground on a free port and waits until the port
/// accepts connections.
fn spawn_haproxy(dir: &Path, backends: &[SocketAddr], extra: &Extra) -> (Child, u16) {
    let mut last = String::new();
    for attempt in 0..5 {
        let port = free_port();
        let cfg = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&cfg, haproxy_config(port, backends, extra)).expect("write haproxy config");
        let mut child = haproxy(dir, &cfg)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run haproxy (is it installed? `make deps`): {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Most likely the port was taken meanwhile: try another.
                last = format!(
                    "attempt {attempt} exited with {status}:\n{}",
                    tail(&dir.join("haproxy.log"), 20)
                );
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return (child, port);
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                panic!(
                    "haproxy did not listen in time:\n{}",
                    tail(&dir.join("haproxy.log"), 20)
                );
            }
            std::thread::sleep(POLL);
        }
    }
    panic!("haproxy did not start: {last}");
}

impl Lb {
    /// The balancer of [`Self::start_blocking_websocket`] with the block
    /// already in force: every WebSocket upgrade is refused (403), plain
    /// HTTP passes. [`Self::allow_websocket`] opens it.
    pub fn start_refusing_websocket(backends: &[SocketAddr]) -> Lb {
        let lb = Self::start_blocking_websocket(backends);
        lb.block_websocket(false);
        lb
    }

    /// The balancer of [`Self::start`] holding every response until it is
    /// complete (at most a minute or its 16 KiB buffer), as a proxy that
    /// buffers whole responses does.
    pub fn start_holding_responses(backends: &[SocketAddr]) -> Lb {
        Self::start_with(backends, |_| Extra {
            frontend: "    http-response wait-for-body time 60s\n".to_owned(),
            ..Extra::default()
        })
    }

    /// The balancer of [`Self::start`], refusing the WebSocket upgrade
    /// (403, as a corporate proxy does) while [`Self::block_websocket`] is
    /// in force; plain HTTP always passes. Starts open.
    pub fn start_blocking_websocket(backends: &[SocketAddr]) -> Lb {
        Self::start_with(backends, |dir| {
            let acl = dir.join("blocked.acl");
            std::fs::write(&acl, "").expect("write the ACL file");
            Extra {
                global: format!(
                    "    stats socket {} level admin\n",
                    dir.join("admin.sock").display()
                ),
                frontend: format!(
                    "    http-request deny deny_status 403 if {{ hdr(upgrade) -i websocket }} {{ src -f {} }}\n",
                    acl.display()
                ),
                servers: backends.len(),
            }
        })
    }

    /// Refuses every WebSocket upgrade from now on; with `cut`, also cuts
    /// every connection open through the balancer (WebSockets and HTTP
    /// requests alike), as a proxy that starts filtering would.
    pub fn block_websocket(&self, cut: bool) {
        let acl = self.dir.path().join("blocked.acl");
        self.admin(&format!("add acl {} 127.0.0.1", acl.display()));
        if cut {
            for n in 1..=self.extra.servers {
                self.admin(&format!("shutdown sessions server relays/node-{n}"));
            }
        }
    }

    /// Lets WebSocket upgrades through again.
    pub fn allow_websocket(&self) {
        let acl = self.dir.path().join("blocked.acl");
        self.admin(&format!("clear acl {}", acl.display()));
    }

    /// One command on haproxy's admin socket; its answer.
    fn admin(&self, command: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock"))
            .expect("haproxy's admin socket (start_blocking_websocket)");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.write_all(format!("{command}\n").as_bytes())
            .expect("write to haproxy");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            !answer.to_ascii_lowercase().contains("unknown") && !answer.contains("denied"),
            "haproxy refused {command:?}: {answer}"
        );
        answer
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        for c in &mut self.retired {
            kill_child(c);
        }
        if std::thread::panicking() {
            eprintln!("---- haproxy log (last lines) ----");
            eprintln!("{}", tail(&self.dir.path().join("haproxy.log"), 40));
        }
    }
}

/// A Redis reply (RESP2), as far as the fixtures read them.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3\r\nfoo` (None: the null bulk string).
    Bulk(Option<String>),
    /// `*2\r\n...` (None: the null array).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a simple or bulk string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array (none for anything else).
    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(v)) => v,
            _ => &[],
        }
    }

    /// A flat array of names and values (as `SENTINEL MASTER` answers), as pairs.
    pub fn fields(&self) -> Vec<(&str, &str)> {
        self.items()
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.text()?, kv.get(1)?.text()?)))
            .collect()
    }
}

/// Sends one command to the Redis server or Sentinel on 127.0.0.1:`port` over
/// a fresh raw socket and reads its reply: the fixtures need no Redis client,
/// and a fresh connection never reads a stale answer.
pub fn redis_command(port: u16, args: &[&str]) -> Result<Resp, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect to {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&s).write_all(req.as_bytes())
        .map_err(|e| format!("write to {port}: {e}"))?;
    read_resp(&mut BufReader::new(s)).map_err(|e| format!("{args:?} to {port}: {e}"))
}

/// Reads one RESP2 reply.
fn read_resp(r: &mut impl BufRead) -> Result<Resp, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| format!("cut reply {line:?}"))?;
    let Some(kind) = line.chars().next() else {
        return Err("empty reply line".into());
    };
    let rest = &line[1..];
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad number in {line:?}"))
    };
    Ok(match kind {
        '+' => Resp::Simple(rest.to_owned()),
        '-' => Resp::Error(rest.to_owned()),
        ':' => Resp::Int(number()?),
        '$' => match usize::try_from(number()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut buf = vec![0u8; len + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                buf.truncate(len);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        '*' => match usize::try_from(number()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some(
                (0..n).map(|_| read_resp(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(format!("not RESP: {line:?}")),
    })
}

/// The value of `field` in an `INFO` answer (`role:master` -> "master").
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// `INFO <section>` of the server on `port`.
fn redis_info(port: u16, section: &str) -> Result<String, String> {
    match redis_command(port, &["INFO", section])? {
        Resp::Bulk(Some(text)) => Ok(text),
        other => Err(format!("INFO {section} on {port} answered {other:?}")),
    }
}

/// Polls `check` until it holds; fails the test after `bound` with the last
/// reason it gave. For states a fixture cannot be told about, such as what
/// the sentinels have concluded.
fn wait_until(what: &str, bound: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + bound;
    loop {
        let why = match check() {
            Ok(()) => return,
            Err(why) => why,
        };
        assert!(Instant::now() < deadline, "{what}: not in time: {why}");
        std::thread::sleep(POLL);
    }
}

/// The name under which the sentinels of a [`SentinelSet`] monitor its master.
pub const SENTINEL_SERVICE: &str = "relaymaster";

/// One process of a [`SentinelSet`].
struct Member {
    /// Running until killed; None once killed.
    child: Option<Child>,
    port: u16,
    /// Its log, in its own directory (with a sentinel's config).
    log: PathBuf,
}

impl Member {
    /// SIGKILLs and reaps it (nothing if it was killed before).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

/// A Sentinel-managed Redis, all on free 127.0.0.1 ports: a master, one
/// replica of it, and three `redis-sentinel`s monitoring it as
/// [`SENTINEL_SERVICE`] with quorum 2, so a failover works as in production,
/// just faster (the master counts as down after 1 s). Nothing persists. Every
/// process is killed on drop, the sentinels first so they do not react to the
/// servers going; a panicking test prints the end of each log.
pub struct SentinelSet {
    servers: Vec<Member>,
    sentinels: Vec<Member>,
    dir: TempDir,
}

impl SentinelSet {
    /// Starts the master, then the replica, and once it is in sync the
    /// sentinels; returns when the set is whole: the replica in sync and
    /// every sentinel naming the master and knowing the replica and the two
    /// other sentinels (which a failover needs: a quorum to agree the master
    /// is down and a majority to elect the sentinel that fails it over).
    pub fn start() -> SentinelSet {
        // Built up in place, so whatever started is killed if a later step panics.
        let mut set = SentinelSet {
            servers: Vec::new(),
            sentinels: Vec::new(),
            dir: TempDir::new("sentinel"),
        };
        set.start_server(None);
        let master = set.servers[0].port;
        set.start_server(Some(master));
        // A sentinel finds replicas in the master's INFO, which it reads at
        // once and then only every 10 s: start it after the replica is there.
        wait_until("replica in sync", WAIT, || set.replica_in_sync(master));
        for _ in 0..3 {
            set.start_sentinel(master);
        }
        wait_until("sentinels agree", WAIT, || set.whole(master));
        set
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/relaymaster`,
    /// the value of `RELAY_REDIS_URL`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_SERVICE}", hosts.join(","))
    }

    /// The master's port, as the first sentinel that answers names it.
    pub fn master_port(&self) -> u16 {
        let mut last = String::new();
        for s in &self.sentinels {
            match sentinel_master(s.port) {
                Ok(port) => return port,
                Err(e) => last = e,
            }
        }
        panic!("no sentinel names the master: {last}");
    }

    /// The ports of the two servers (the master's and the replica's, in
    /// either order).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// Waits until the replica has everything the master had when called.
    /// Redis replicates asynchronously, so a test that wants what it wrote
    /// before a failover to outlive it waits for this first: a write lost
    /// with a killed master is Redis's doing, not the relay's.
    pub fn wait_replicated(&self) {
        let master = self.master_port();
        let info = redis_info(master, "replication").expect("INFO replication of the master");
        let written: u64 = info_field(&info, "master_repl_offset")
            .and_then(|o| o.parse().ok())
            .expect("master_repl_offset");
        wait_until("replica caught up", WAIT, || {
            let replica = self.other_server(master);
            let info = redis_info(replica, "replication")?;
            let has: u64 = info_field(&info, "slave_repl_offset")
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| format!("no slave_repl_offset from {replica}"))?;
            if has >= written {
                Ok(())
            } else {
                Err(format!("replica at {has} of {written}"))
            }
        });
    }

    /// A planned failover (`SENTINEL FAILOVER`): the replica becomes the
    /// master and the old master its replica. Returns when the set is whole
    /// again around the new master. That takes about ten seconds: the
    /// sentinels name the new master within one, but demote the old one only
    /// once it has claimed to be master for 8 s (checked every 10 s), and
    /// until then it still takes writes from whoever is connected to it.
    /// Redis closes every client connection of a master it demotes; clients
    /// then ask the sentinels again.
    pub fn failover(&mut self) {
        let old = self.master_port();
        let new = self.other_server(old);
        let s = self.sentinels[0].port;
        match redis_command(s, &["SENTINEL", "FAILOVER", SENTINEL_SERVICE]) {
            Ok(Resp::Simple(ok)) if ok == "OK" => {}
            other => panic!("SENTINEL FAILOVER answered {other:?}"),
        }
        wait_until("sentinels name the new master", WAIT, || {
            self.sentinels_name(new)
        });
        wait_until("the old master demoted and in sync", WAIT * 2, || {
            self.whole(new)
        });
    }

    /// An unplanned failover: SIGKILLs the master and returns when the
    /// sentinels have promoted the replica (a few seconds: 1 s to count the
    /// master as down, then agreement, election and promotion). The set has
    /// no replica afterwards.
    pub fn kill_master(&mut self) {
        let old = self.master_port();
        let new = self.other_server(old);
        let i = self.server_index(old);
        assert!(
            self.servers[i].child.is_some(),
            "the master was killed before"
        );
        self.servers[i].kill();
        wait_until("sentinels promote the replica", WAIT * 2, || {
            self.sentinels_name(new)?;
            let info = redis_info(new, "replication")?;
            match info_field(&info, "role") {
                Some("master") => Ok(()),
                role => Err(format!("{new} is still {role:?}")),
            }
        });
    }

    /// The index in `servers` of the one on `port`.
    fn server_index(&self, port: u16) -> usize {
        self.servers
            .iter()
            .position(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server of the set on port {port}"))
    }

    /// The port of the server that is not on `port`.
    fn other_server(&self, port: u16) -> u16 {
        let _ = self.server_index(port);
        self.servers
            .iter()
            .map(|s| s.port)
            .find(|&p| p != port)
            .expect("two servers")
    }

    /// Starts a server (a replica of `master`, if given) on a free port.
    fn start_server(&mut self, master: Option<u16>) {
        let dir = self
            .dir
            .path()
            .join(format!("server-{}", self.servers.len() + 1));
        std::fs::create_dir_all(&dir).expect("create server dir");
        // Diskless full syncs start at once rather than after 5 s, for both
        // servers: either may be the master after a failover.
        let mut extra: Vec<String> = vec!["--repl-diskless-sync-delay".into(), "0".into()];
        if let Some(m) = master {
            extra.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_redis_with(port, &dir, &extra) {
                Ok(child) => {
                    self.servers.push(Member {
                        child: Some(child),
                        port,
                        log: dir.join("redis.log"),
                    });
                    return;
                }
                // Most likely the port was taken meanwhile: try another.
                Err(e) => last = e,
            }
        }
        panic!("redis-server for the sentinel set did not start: {last}");
    }

    /// Starts a sentinel monitoring `master` on a free port.
    fn start_sentinel(&mut self, master: u16) {
        let dir = self
            .dir
            .path()
            .join(format!("sentinel-{}", self.sentinels.len() + 1));
        std::fs::create_dir_all(&dir).expect("create sentinel dir");
        let conf = dir.join("sentinel.conf");
        let log = dir.join("sentinel.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            // Written afresh for each try: the sentinel rewrites its config
            // file (its state: epochs, known replicas and sentinels), so the
            // file must be its own and writable.
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir {dir}\n\
                 logfile {log}\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
                 sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                dir = dir.display(),
                log = log.display(),
            );
            std::fs::write(&conf, text).expect("write sentinel config");
            let spawned = Command::new(program("redis-sentinel"))
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!("cannot run redis-sentinel (is it installed? `make deps`): {e}")
                })
                .and_then(|child| await_pong(child, port, &log));
            match spawned {
                Ok(child) => {
                    self.sentinels.push(Member {
                        child: Some(child),
                        port,
                        log,
                    });
                    return;
                }
                // Most likely the port was taken meanwhile: try another.
                Err(e) => last = e,
            }
        }
        panic!("redis-sentinel did not start: {last}");
    }

    /// Whether the server on `master` is a master with one replica, and the
    /// other server of the set (if alive) is that replica with its link up.
    fn replica_in_sync(&self, master: u16) -> Result<(), String> {
        let info = redis_info(master, "replication")?;
        let role = info_field(&info, "role");
        let connected = info_field(&info, "connected_slaves");
        if role != Some("master") || connected != Some("1") {
            return Err(format!(
                "{master}: role {role:?}, connected_slaves {connected:?}"
            ));
        }
        for s in self.servers.iter().filter(|s| s.port != master) {
            if s.child.is_none() {
                continue;
            }
            let info = redis_info(s.port, "replication")?;
            let state = (
                info_field(&info, "role"),
                info_field(&info, "master_port"),
                info_field(&info, "master_link_status"),
            );
            if state != (Some("slave"), Some(master.to_string().as_str()), Some("up")) {
                return Err(format!(
                    "{}: (role, master_port, master_link_status) {state:?}",
                    s.port
                ));
            }
        }
        Ok(())
    }

    /// Whether every sentinel's get-master-addr-by-name says `master`.
    fn sentinels_name(&self, master: u16) -> Result<(), String> {
        for s in &self.sentinels {
            let named = sentinel_master(s.port)?;
            if named != master {
                return Err(format!("sentinel {} names {named}", s.port));
            }
        }
        Ok(())
    }

    /// Whether the set is whole around `master`: the replica in sync, and
    /// every sentinel naming `master`, seeing it healthy, and knowing the
    /// replica and both other sentinels.
    fn whole(&self, master: u16) -> Result<(), String> {
        self.replica_in_sync(master)?;
        let port = master.to_string();
        let want = [Some(port.as_str()), Some("master"), Some("1"), Some("2")];
        for s in &self.sentinels {
            let answer = redis_command(s.port, &["SENTINEL", "MASTER", SENTINEL_SERVICE])?;
            let fields = answer.fields();
            let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
            let view = [
                get("port"),
                get("flags"),
                get("num-slaves"),
                get("num-other-sentinels"),
            ];
            if view != want {
                return Err(format!(
                    "sentinel {}: [port, flags, num-slaves, num-other-sentinels] {view:?}",
                    s.port
                ));
            }
        }
        Ok(())
    }
}

/// The master's port as the sentinel on `port` names it
/// (`SENTINEL get-master-addr-by-name`).
fn sentinel_master(port: u16) -> Result<u16, String> {
    let answer = redis_command(
        port,
        &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE],
    )?;
    answer
        .items()
        .get(1)
        .and_then(Resp::text)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("sentinel {port} answered {answer:?}"))
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        // Sentinels first: they would otherwise see the master go and react.
        for m in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            m.kill();
        }
        if std::thread::panicking() {
            for (kind, members) in [("redis", &self.servers), ("sentinel", &self.sentinels)] {
                for m in members {
                    eprintln!("---- {kind} {} log (last lines) ----", m.port);
                    eprintln!("{}", tail(&m.log, 30));
                }
            }
        }
    }
}
