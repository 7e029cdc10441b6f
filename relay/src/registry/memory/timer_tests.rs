//! The in-memory registry's timers, in process with tokio's clock paused
//! (the way tokio-rs/mini-redis tests its server): code expiry, grace
//! periods, and how long ended things are remembered. Each deadline is
//! checked a moment before and a moment after it passes, exactly, however
//! busy the machine is.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use relay_protocol::{ErrorCode, Role};
use serde_json::Value;

use super::MemoryRegistry;
use crate::metrics::Metrics;
use crate::queue::{Drained, Item};
use crate::registry::testing::{TestClient, settings};
use crate::registry::{
    Deadline, Departure, Gone, Join, Link, Refusal, Register, RegistryHandle, RegistrySettings,
    Resume,
};

const CODE_TTL: Duration = Duration::from_secs(300);
const GRACE: Duration = Duration::from_secs(60);
/// How long ended sides and expired codes are remembered (`REMEMBER_FOR`).
const REMEMBERED: Duration = Duration::from_secs(600);
/// Well over the timer wheel's 1 ms granularity, which each sleep may round up by.
const MOMENT: Duration = Duration::from_millis(100);

/// One connection as the registry sees it, and what it was told.
struct Conn {
    test: TestClient,
    link: Option<Link>,
    written: u64,
}

impl Conn {
    fn new() -> Self {
        Conn {
            test: TestClient::start(),
            link: None,
            written: 0,
        }
    }

    fn linked(&mut self, link: Link) {
        self.written = link.written;
        self.link = Some(link);
    }

    /// The `type`s (and error codes) of the control messages queued for it since last asked.
    fn told(&mut self) -> Vec<String> {
        let Some(link) = &self.link else {
            return Vec::new();
        };
        let mut d = Drained::default();
        link.inbound.drain(self.test.conn(), self.written, &mut d);
        let mut out = Vec::new();
        for (pos, item, _) in d.items {
            self.written = pos;
            if let Item::Event { text, .. } = item {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                let ty = v["type"].as_str().unwrap_or_default().to_owned();
                // The error code or peer_left's reason; code_expired's code varies.
                let detail = match ty.as_str() {
                    "code_expired" => None,
                    _ => v["code"].as_str().or(v["reason"].as_str()),
                };
                out.push(match detail {
                    Some(detail) => format!("{ty}:{detail}"),
                    None => ty,
                });
            }
        }
        out
    }

    fn gone(&self, registry: &RegistryHandle, role: Role, how: Departure) {
        let session_id = Arc::clone(&self.link.as_ref().expect("in a session").session_id);
        registry.gone(Gone {
            session_id,
            member: role.into(),
            conn: self.test.conn(),
            how,
        });
    }
}

/// A registry with paused time.
struct Registry {
    handle: RegistryHandle,
}

impl Registry {
    fn start() -> Self {
        tokio::time::pause();
        let settings = RegistrySettings {
            code_ttl: CODE_TTL,
            grace: GRACE,
            ..settings()
        };
        let metrics = Arc::new(Metrics::new("test").expect("metrics"));
        let addr = MemoryRegistry::new(settings, metrics).start();
        Registry {
            handle: RegistryHandle::new(&addr),
        }
    }

    /// Lets time pass, then lets the registry act on what came due.
    async fn after(&self, d: Duration) {
        tokio::time::sleep(d).await;
        // A reply proves the registry ran after its timer fired.
        let _ = self.handle.stats().await;
    }

    /// A registered mac, its code and token.
    async fn mac(&self) -> (Conn, String, String) {
        let mut c = Conn::new();
        let r = self
            .handle
            .register(Register {
                client: c.test.client.clone(),
                deadline: Deadline::for_request(),
                client_id: None,
                room: None,
            })
            .await
            .expect("registered");
        c.linked(r.link);
        (c, r.code, r.resume_token)
    }

    async fn join(&self, code: &str) -> Result<(Conn, String), Refusal> {
        let mut c = Conn::new();
        let j = self
            .handle
            .join(Join {
                client: c.test.client.clone(),
                deadline: Deadline::for_request(),
                code: code.to_owned(),
                name: None,
            })
            .await?;
        c.linked(j.link);
        Ok((
            c,
            j.resume_token.expect("a pairing's browser gets its token"),
        ))
    }

    async fn resume(&self, was: &Conn, role: Role, token: &str) -> Result<Conn, Refusal> {
        let mut c = Conn::new();
        let session_id = was
            .link
            .as_ref()
            .expect("in a session")
            .session_id
            .to_string();
        let r = self
            .handle
            .resume(Resume {
                client: c.test.client.clone(),
                deadline: Deadline::for_request(),
                role,
                session_id,
                resume_token: token.to_owned(),
                last_seq: 0,
                guest_seqs: Default::default(),
            })
            .await?;
        c.linked(r.link);
        Ok(c)
    }
}

fn in_paused_time(test: impl AsyncFnOnce(Registry)) {
    actix::System::new().block_on(async {
        test(Registry::start()).await;
    });
}

fn code_of(r: Result<impl Sized, Refusal>) -> Option<ErrorCode> {
    r.err().map(|e| e.code)
}

#[test]
fn a_code_nobody_joins_expires_at_its_ttl_and_not_before() {
    in_paused_time(async |reg| {
        let (mut mac, code, _) = reg.mac().await;
        reg.after(CODE_TTL - MOMENT).await;
        assert_eq!(mac.told(), Vec::<String>::new());
        reg.after(2 * MOMENT).await;
        assert_eq!(mac.told(), ["code_expired"]);
        assert_eq!(code_of(reg.join(&code).await), Some(ErrorCode::ExpiredCode));
        // Remembered as expired for ten minutes, then unknown.
        reg.after(REMEMBERED).await;
        assert_eq!(code_of(reg.join(&code).await), Some(ErrorCode::InvalidCode));
    });
}

#[test]
fn a_joined_session_outlives_its_code_which_stops_taking_browsers() {
    in_paused_time(async |reg| {
        let (mut mac, code, _) = reg.mac().await;
        let (first, _) = reg.join(&code).await.expect("joined");
        assert_eq!(mac.told(), ["peer_joined"]);
        first.gone(&reg.handle, Role::Browser, Departure::Left);
        reg.after(MOMENT).await;
        assert_eq!(mac.told(), ["peer_left:left"]);
        // Within the ttl another browser may join; after it, nobody.
        reg.after(CODE_TTL - 2 * MOMENT).await;
        let (second, _) = reg.join(&code).await.expect("joined before the ttl");
        reg.after(2 * MOMENT).await;
        assert_eq!(mac.told(), ["peer_joined"]);
        assert_eq!(code_of(reg.join(&code).await), Some(ErrorCode::ExpiredCode));
        // The pair goes on; when its browser leaves, the mac needs a new code.
        second.gone(&reg.handle, Role::Browser, Departure::Left);
        reg.after(MOMENT).await;
        assert_eq!(mac.told(), ["peer_left:left", "code_expired"]);
    });
}

#[test]
fn a_dropped_browser_may_resume_within_the_grace_period_and_not_after() {
    in_paused_time(async |reg| {
        let (mut mac, code, _) = reg.mac().await;
        let (browser, token) = reg.join(&code).await.expect("joined");
        browser.gone(&reg.handle, Role::Browser, Departure::Dropped);
        reg.after(GRACE - MOMENT).await;
        assert_eq!(mac.told(), ["peer_joined", "peer_disconnected"]);
        let back = reg
            .resume(&browser, Role::Browser, &token)
            .await
            .expect("resumed in time");
        reg.after(MOMENT).await;
        assert_eq!(mac.told(), ["peer_resumed"]);

        // A fresh grace period for each drop, from the drop.
        back.gone(&reg.handle, Role::Browser, Departure::Dropped);
        reg.after(GRACE - MOMENT).await;
        assert_eq!(mac.told(), ["peer_disconnected"]);
        reg.after(2 * MOMENT).await;
        assert_eq!(mac.told(), ["peer_left:timeout"]);
        assert_eq!(
            code_of(reg.resume(&back, Role::Browser, &token).await),
            Some(ErrorCode::ResumeExpired)
        );
    });
}

#[test]
fn a_mac_that_does_not_come_back_in_time_ends_the_session() {
    in_paused_time(async |reg| {
        let (mac, code, mac_token) = reg.mac().await;
        let (mut browser, browser_token) = reg.join(&code).await.expect("joined");
        mac.gone(&reg.handle, Role::Mac, Departure::Dropped);
        reg.after(GRACE - MOMENT).await;
        assert_eq!(browser.told(), ["peer_disconnected"]);
        reg.after(2 * MOMENT).await;
        assert_eq!(browser.told(), ["error:MAC_DISCONNECTED"]);
        assert_eq!(
            code_of(reg.resume(&mac, Role::Mac, &mac_token).await),
            Some(ErrorCode::ResumeExpired)
        );
        // The browser, had it dropped meanwhile, learns why on resuming,
        // for as long as the session is remembered.
        assert_eq!(
            code_of(reg.resume(&browser, Role::Browser, &browser_token).await),
            Some(ErrorCode::MacDisconnected)
        );
        reg.after(REMEMBERED).await;
        assert_eq!(
            code_of(reg.resume(&browser, Role::Browser, &browser_token).await),
            Some(ErrorCode::InvalidResume)
        );
    });
}
