//! Who may open a WebSocket on this node: the per-node and per-address
//! (per client, as [`ClientKey`] counts one) connection ceilings (refused with HTTP 503 before the upgrade) and the
//! `Origin` allow-list for `/browser` (refused with close 1008 after it, as
//! PROTOCOL.md's close table says, so a browser client stops instead of
//! retrying a connection it can never make).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::client_key::ClientKey;

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The node holds its maximum of WebSockets.
    Node,
    /// The client's address holds its maximum of WebSockets.
    Address,
}

impl Full {
    /// The label value of `relay_connections_refused_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Full::Node => "node_full",
            Full::Address => "address_full",
        }
    }
}

/// Counts the open WebSockets of the node, in total and per client address.
#[derive(Debug)]
pub struct Admission {
    max_node: u32,
    max_per_addr: u32,
    open: AtomicU32,
    per_addr: Mutex<HashMap<ClientKey, u32>>,
}

impl Admission {
    /// Ceilings of `max_node` connections and `max_per_addr` per address; 0 is no ceiling.
    pub fn new(max_node: u32, max_per_addr: u32) -> Self {
        Admission {
            max_node,
            max_per_addr,
            open: AtomicU32::new(0),
            per_addr: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for a connection from `addr`, or says which ceiling is reached.
    ///
    /// # Errors
    /// [`Full`] naming the ceiling.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Full> {
        let key = ClientKey::of(addr);
        let node_ok = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max_node == 0 || n < self.max_node).then_some(n + 1)
            })
            .is_ok();
        if !node_ok {
            return Err(Full::Node);
        }
        if self.max_per_addr > 0 {
            let mut map = self.lock();
            let n = map.entry(key).or_insert(0);
            if *n >= self.max_per_addr {
                drop(map);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Full::Address);
            }
            *n += 1;
        }
        Ok(Slot {
            of: Arc::clone(self),
            key,
        })
    }

    /// Open WebSockets on the node.
    #[cfg(test)]
    fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Distinct client addresses with an open WebSocket (0 when the per-address ceiling is off).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, u32>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is one statement), so a poisoned lock is still usable.
        self.per_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, key: ClientKey) {
        if self.max_per_addr > 0 {
            let mut map = self.lock();
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    // Forget the client, so the map holds only open connections.
                    map.remove(&key);
                }
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's place, held by its socket actor; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    of: Arc<Admission>,
    key: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.of.release(self.key);
    }
}

/// The origins allowed to open `/browser`; empty allows every origin.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    exact: Vec<String>,
    /// `https://*.example.com` entries, kept as (`https://`, `.example.com`).
    wildcard: Vec<(String, String)>,
}

impl Origins {
    /// Parses a comma-separated list such as `https://app.example.com,https://*.example.com`.
    ///
    /// # Errors
    /// A sentence naming the entry that is not an origin.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut origins = Origins::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let entry = entry.to_ascii_lowercase();
            let Some((scheme, host)) = entry.split_once("://") else {
                return Err(format!(
                    "RELAY_ALLOWED_ORIGINS entry {entry:?} is not an origin; write one like https://app.example.com"
                ));
            };
            if host.is_empty() || host.contains('/') || scheme.is_empty() {
                return Err(format!(
                    "RELAY_ALLOWED_ORIGINS entry {entry:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
            match host.strip_prefix('*') {
                Some(rest) if rest.starts_with('.') && rest.len() > 1 && !rest.contains('*') => {
                    origins
                        .wildcard
                        .push((format!("{scheme}://"), rest.to_owned()));
                }
                Some(_) => {
                    return Err(format!(
                        "RELAY_ALLOWED_ORIGINS entry {entry:?}: a wildcard must be a whole label, like https://*.example.com"
                    ));
                }
                None if !host.contains('*') => origins.exact.push(entry),
                None => {
                    return Err(format!(
                        "RELAY_ALLOWED_ORIGINS entry {entry:?}: a wildcard can only be the first label, like https://*.example.com"
                    ));
                }
            }
        }
        Ok(origins)
    }

    /// Whether any origin is allowed (no list configured).
    pub fn allows_all(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Whether a request with this `Origin` header (None: no header) may open `/browser`.
    ///
    /// A request without `Origin` does not come from a web page (browsers
    /// always send it on WebSocket upgrades), so it cannot be a cross-site
    /// hijack and is let through; `own` is the relay's own origin (its
    /// `Host`), allowed so the page the relay serves always works.
    pub fn allows(&self, origin: Option<&str>, own: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.allows_all() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        if let Some(host) = own
            && origin
                .split_once("://")
                .is_some_and(|(_, h)| h.eq_ignore_ascii_case(host))
        {
            return true;
        }
        if self.exact.contains(&origin) {
            return true;
        }
        self.wildcard.iter().any(|(scheme, suffix)| {
            origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|label| !label.is_empty() && !label.contains(['.', '/', ':']))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_count_and_give_back() {
        let a = Arc::new(Admission::new(3, 2));
        let x: IpAddr = [10, 0, 0, 1].into();
        let y: IpAddr = [10, 0, 0, 2].into();
        let s1 = a.admit(x).unwrap();
        let s2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Full::Address);
        let s3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Full::Node);
        assert_eq!(a.open(), 3);
        drop(s1);
        assert_eq!(a.open(), 2);
        let s4 = a.admit(x).unwrap();
        drop((s2, s3, s4));
        assert_eq!(a.open(), 0);
        assert_eq!(
            a.addresses(),
            0,
            "no address kept once its connections close"
        );
    }

    #[test]
    fn zero_means_no_ceiling() {
        let a = Arc::new(Admission::new(0, 0));
        let x: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..1000).map(|_| a.admit(x).unwrap()).collect();
        assert_eq!(a.open(), 1000);
        drop(slots);
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn origins_match_exactly_or_by_one_wildcard_label() {
        let o =
            Origins::parse("https://app.example.com, https://*.example.org,http://localhost:3000")
                .unwrap();
        assert!(o.allows(Some("https://app.example.com"), None));
        assert!(o.allows(Some("HTTPS://APP.EXAMPLE.COM"), None));
        assert!(o.allows(Some("http://localhost:3000"), None));
        assert!(o.allows(Some("https://a.example.org"), None));
        assert!(!o.allows(Some("https://example.org"), None));
        assert!(!o.allows(Some("https://a.b.example.org"), None));
        assert!(!o.allows(Some("http://a.example.org"), None));
        assert!(!o.allows(Some("https://evil.example.org.attacker.net"), None));
        assert!(!o.allows(Some("https://app.example.com.attacker.net"), None));
        assert!(!o.allows(Some("null"), None));
        assert!(o.allows(None, None), "no Origin: not a browser page");
        assert!(o.allows(Some("https://relay.example.net"), Some("relay.example.net")));
        assert!(
            Origins::parse("")
                .unwrap()
                .allows(Some("https://any.where"), None)
        );
    }

    #[test]
    fn origin_lists_that_are_not_origins_are_refused() {
        for bad in [
            "example.com",
            "https://",
            "https://a.com/path",
            "https://*example.com",
            "https://a.*.com",
        ] {
            assert!(Origins::parse(bad).is_err(), "{bad}");
        }
    }
}
