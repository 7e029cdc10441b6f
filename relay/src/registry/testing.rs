//! For the registry's tests: the registry's settings, a client whose actor
//! stands where a socket would (it is woken and may be told it was replaced,
//! and counts that), and what waits in a link's inbound pipe.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;

use super::{Client, Link, RegistrySettings};
use crate::conns::{ConnCommand, ConnId};
use crate::pipe::Wake;
use crate::queue::{Drained, Item, Limits, Status};

/// Settings with generous limits, no join rate and long timers.
pub(crate) fn settings() -> RegistrySettings {
    RegistrySettings {
        code_ttl: Duration::from_secs(60),
        grace: Duration::from_secs(60),
        join_rate: 0,
        failed_join_limit: 0,
        under_attack_for: std::time::Duration::from_secs(600),
        admit_timeout: std::time::Duration::from_secs(120),
        limits: Limits {
            max_buffered: 1 << 20,
            stall: Duration::from_secs(3600),
            away_frames: 1000,
            away_bytes: 1 << 20,
            paced: true,
        },
    }
}

/// Where a socket actor would be: takes wake-ups (and reads nothing),
/// counts `Replaced` and keeps the codes it was ended with.
struct Stand(
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<relay_protocol::ErrorCode>>>,
);

impl Actor for Stand {
    type Context = Context<Self>;
}

impl Handler<Wake> for Stand {
    type Result = ();

    fn handle(&mut self, _: Wake, _: &mut Context<Self>) {}
}

impl Handler<ConnCommand> for Stand {
    type Result = ();

    fn handle(&mut self, cmd: ConnCommand, _: &mut Context<Self>) {
        match cmd {
            ConnCommand::Replaced => {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            ConnCommand::Ended(code) => self.1.lock().unwrap().push(code),
            ConnCommand::Drain => self
                .1
                .lock()
                .unwrap()
                .push(relay_protocol::ErrorCode::ShuttingDown),
        }
    }
}

/// A connection asking the registry, as a test holds it.
pub(crate) struct TestClient {
    /// What goes into the requests.
    pub(crate) client: Client,
    replaced: Arc<AtomicUsize>,
    ended: Arc<std::sync::Mutex<Vec<relay_protocol::ErrorCode>>>,
}

impl TestClient {
    /// A new connection (its actor runs in the test's actix system).
    pub(crate) fn start() -> Self {
        let replaced = Arc::new(AtomicUsize::new(0));
        let ended = Arc::default();
        let addr = Stand(Arc::clone(&replaced), Arc::clone(&ended)).start();
        TestClient {
            client: Client {
                conn: ConnId::next(),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                wake: addr.clone().recipient(),
                commands: addr.recipient(),
                killer: None,
            },
            replaced,
            ended,
        }
    }

    /// The codes the registry ended this connection with (`ConnCommand::Ended`;
    /// `SHUTTING_DOWN` for `Drain`).
    pub(crate) fn ended(&self) -> Vec<relay_protocol::ErrorCode> {
        self.ended.lock().unwrap().clone()
    }

    /// The connection's id.
    pub(crate) fn conn(&self) -> ConnId {
        self.client.conn
    }

    /// How often the registry told it another connection replaced it.
    pub(crate) fn replaced(&self) -> usize {
        self.replaced.load(Ordering::SeqCst)
    }
}

/// What `conn` would write from `link` so far: each control message's
/// `type`, and `"data"` for each data frame. `None` when the link's inbound
/// pipe no longer delivers to `conn`.
pub(crate) fn written(link: &Link, conn: ConnId) -> Option<Vec<String>> {
    let mut d = Drained::default();
    if let Status::NotMine | Status::Cut = link.inbound.drain(conn, link.written, &mut d) {
        return None;
    }
    let seen = d
        .items
        .drain(..)
        .map(|(_, item, _)| match item {
            Item::Data { .. } => "data".to_owned(),
            Item::Event { text, .. } => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("not JSON: {text}")),
        })
        .collect();
    Some(seen)
}
