//! Pub/sub failing silently: the node's subscription stops delivering while
//! its commands (publishes included) still succeed, as after some failovers.
//! The node's probe of its own channel must notice, mark it not ready, and
//! resubscribe by itself. The silence is made with nftables, dropping what
//! Redis sends to the subscription's socket only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use crate::support::cluster::Cluster;

/// Sends one RESP command to Redis on `port`; returns the raw reply.
fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Drops packets from Redis to one local port until dropped itself.
struct Blackhole {
    table: String,
}

impl Blackhole {
    fn new(redis_port: u16, to_port: u16) -> Blackhole {
        let table = format!("relay_probe_{to_port}");
        let rules = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0;\n  \
             ip saddr 127.0.0.1 tcp sport {redis_port} tcp dport {to_port} drop\n }}\n}}\n"
        );
        let out = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn();
        let mut child =
            out.expect("nft (Debian package nftables; `make deps` installs it) must run as root");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "nft refused the rule (run the tests as root)"
        );
        Blackhole { table }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

#[tokio::test]
async fn a_silent_subscription_is_noticed_and_replaced() {
    let c = Cluster::start(1, &[]);
    let node = c.node(1);
    node.wait_status("/readyz", 200).await;
    // One node: the only pub/sub client of this Redis is its subscription.
    let list = redis_cmd(c.redis.port(), &["CLIENT", "LIST", "TYPE", "pubsub"]);
    let port: u16 = list
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr=127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pub/sub client in {list:?}"));
    let hole = Blackhole::new(c.redis.port(), port);

    // Publishes still succeed; only the probes stop coming back.
    node.wait_status("/readyz", 503).await;
    let (_, why) = node.get("/readyz").await;
    assert_eq!(why.trim(), "pub/sub not delivering");
    // It resubscribes on a new connection (not blackholed) and is ready again.
    node.wait_status("/readyz", 200).await;
    assert!(node.metric("relay_pubsub_probe_failures_total").await >= 1.0);
    drop(hole);
    // And it works: a session can be made.
    let mut m = node.mac().await;
    m.json(serde_json::json!({"type": "register"})).await;
    m.expect("registered").await;
}
