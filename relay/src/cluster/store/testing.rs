//! A throwaway `redis-server` for the store's tests, and the cluster
//! registry's: a free 127.0.0.1 port, no persistence, killed when the test
//! ends. Without `redis-server` on the
//! machine these tests fail and say so (`make deps` installs it); they never
//! skip.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::FromRedisValue;

use super::Store;
use crate::cluster::{Redis, RedisTarget};
use crate::metrics::Metrics;

/// Longest wait for the server to answer, and for the store's connection.
const START_WAIT: Duration = Duration::from_secs(10);

/// How often the start-up is checked.
const POLL: Duration = Duration::from_millis(10);

/// A running `redis-server` and a connection to it.
pub(crate) struct TestRedis {
    child: Child,
    redis: Arc<Redis>,
}

impl TestRedis {
    /// Starts a server and connects to it.
    pub(crate) async fn start() -> TestRedis {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(port).await {
                Ok(child) => {
                    let url = format!("redis://127.0.0.1:{port}");
                    let metrics = Arc::new(Metrics::new("store-test").expect("metrics"));
                    let target = RedisTarget::Direct(url, None);
                    let redis = Redis::start(target, Duration::from_secs(2), metrics);
                    let me = TestRedis { child, redis };
                    let deadline = Instant::now() + START_WAIT;
                    while !me.redis.is_up() {
                        assert!(Instant::now() < deadline, "no connection to redis-server");
                        tokio::time::sleep(POLL).await;
                    }
                    return me;
                }
                // Most likely another process took the port meanwhile.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// The connection, for a cluster registry under test.
    pub(crate) fn redis(&self) -> Arc<Redis> {
        Arc::clone(&self.redis)
    }

    /// The store of `node` on this server.
    pub(crate) fn store(&self, node: &str) -> Store {
        Store::new(Arc::clone(&self.redis), Arc::from(node))
    }

    /// Runs `cmd`, which must succeed.
    pub(crate) async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        self.redis
            .query("test", cmd)
            .await
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    /// The string at `key`, if any.
    pub(crate) async fn get(&self, key: &str) -> Option<String> {
        self.cmd(redis::cmd("GET").arg(key)).await
    }

    /// The score of `member` in the sorted set `key`, if it is in it.
    pub(crate) async fn zscore(&self, key: &str, member: &str) -> Option<i64> {
        self.cmd(redis::cmd("ZSCORE").arg(key).arg(member)).await
    }

    /// Whether `member` is in the set `key`.
    pub(crate) async fn is_member(&self, key: &str, member: &str) -> bool {
        self.cmd(redis::cmd("SISMEMBER").arg(key).arg(member)).await
    }

    /// Gives `node` a live lease.
    pub(crate) async fn lease(&self, node: &str) {
        let key = format!("relay:lease:{node}");
        self.cmd::<()>(redis::cmd("SET").arg(key).arg(1)).await;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hash at `key` (empty if there is none).
pub(crate) async fn dump(r: &TestRedis, key: &str) -> HashMap<String, String> {
    r.cmd(redis::cmd("HGETALL").arg(key)).await
}

/// A port that was free a moment ago (see [`TestRedis::start`] for the race).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Starts `redis-server` on `port` and waits until it answers PING. A missing
/// program is a panic (no point trying other ports); anything else an error.
async fn spawn(port: u16) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server, which the store's tests need (install it: `make deps`): {e}")
        });
    let deadline = Instant::now() + START_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("redis-server on {port} exited with {status}")),
            Ok(None) => {}
            Err(e) => return Err(format!("redis-server on {port}: {e}")),
        }
        if pings(port) {
            // Another test's server may hold the port (ours then exits).
            if pid(port) == Some(child.id()) {
                return Ok(child);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("port {port} is another Redis's"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server on {port} did not answer PING"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a Redis on `port` answers PING.
fn pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The process id of the Redis on `port`, from `INFO server`.
fn pid(port: u16) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(rest) = text.split("process_id:").nth(1) {
            if let Some((pid, _)) = rest.split_once("\r\n") {
                return pid.trim().parse().ok();
            }
        }
        let n = s.read(&mut buf).ok().filter(|n| *n > 0)?;
        got.extend_from_slice(&buf[..n]);
    }
}
