//! The virtual connections of this node by connection id (`cid`), and the
//! sweep that forgets closed ones once their last items had time to be
//! collected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::Addr;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::socket::{Socket, VirtualConn};

/// How long a closed connection's last items (and its 410) stay after the
/// close: a client polls again at once, so a minute covers a slow network.
pub const LINGER: Duration = Duration::from_secs(60);

/// How often closed connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One virtual connection as the HTTP side holds it.
#[derive(Clone)]
pub struct Entry {
    /// What the requests fill and empty.
    pub conn: Arc<VirtualConn>,
    /// Its socket actor, told when a receive arrives.
    pub actor: Addr<Socket>,
}

/// The node's virtual connections.
#[derive(Clone, Default)]
pub struct Table {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Files `entry` under a fresh cid, which it returns.
    pub fn insert(&self, entry: Entry) -> String {
        let cid = new_cid();
        self.lock().insert(cid.clone(), entry);
        cid
    }

    /// The connection named `cid`, if this node holds it.
    pub fn get(&self, cid: &str) -> Option<Entry> {
        self.lock().get(cid).cloned()
    }

    /// The cids of the connections not closed.
    pub fn live(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.conn.closed().is_none())
            .map(|(cid, _)| cid.clone())
            .collect()
    }

    /// Forgets connections closed for longer than [`LINGER`], every
    /// [`SWEEP_EVERY`], for as long as the node runs.
    pub fn sweep_forever(&self) {
        let table = self.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                table
                    .lock()
                    .retain(|_, e| e.conn.closed().is_none_or(|(_, at)| at.elapsed() < LINGER));
            }
        });
    }
}

/// 128 random bits, unpadded base64url: a bearer secret, so from the
/// thread's cryptographically secure generator.
fn new_cid() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
