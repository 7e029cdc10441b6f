//! Resume requests (`sessionId`, `resumeToken`, `lastSeq`) against a live in-memory registry, among registers, joins, frames and drops.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relay::conns::{ConnCommand, ConnId};
use relay::frame::Frame;
use relay::gate::Gate;
use relay::metrics::Metrics;
use relay::pipe::Wake;
use relay::queue::Limits;
use relay::registry::{
    Client, Departure, Gone, Join, Link, MemoryRegistry, Register, RegistryHandle,
    RegistrySettings, Resume,
};
use relay_protocol::{Role, SessionCode};

/// Longest script run per input: enough for a few sessions to pair, drop and
/// resume, short enough to keep thousands of runs a second.
const MAX_STEPS: usize = 24;

/// Which string a client puts in a field: one the relay handed out, a near
/// miss of it, or anything at all.
#[derive(Arbitrary, Debug)]
enum Guess {
    /// The one issued for this session and side.
    Issued,
    /// The one issued to the other side of the session.
    OtherSide,
    /// The issued one with one byte changed (a guess that is almost right).
    Flipped { at: u8, xor: u8 },
    /// The issued one cut short.
    Truncated { len: u8 },
    /// Whatever the client sent.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A mac registers.
    Register,
    /// A browser joins session `session`, typing its code (or `typed`).
    Join { session: u8, typed: Option<String> },
    /// Side `mac` (else the browser) of `session` sends `frames` data frames.
    Send { session: u8, mac: bool, frames: u8 },
    /// Side `mac` of `session` drops its connection without `leave`.
    Drop { session: u8, mac: bool },
    /// A new connection on the endpoint of `mac` resumes.
    Resume {
        session: u8,
        mac: bool,
        id: Guess,
        token: Guess,
        last_seq: u64,
    },
}

/// Stands in for a socket actor: the registry only ever wakes or commands it.
struct Socket;

impl Actor for Socket {
    type Context = Context<Self>;
}

impl Handler<Wake> for Socket {
    type Result = ();
    fn handle(&mut self, _: Wake, _: &mut Context<Self>) {}
}

impl Handler<ConnCommand> for Socket {
    type Result = ();
    fn handle(&mut self, _: ConnCommand, _: &mut Context<Self>) {}
}

/// One side as the client sees it: its secret and, while connected, its link.
struct Side {
    token: String,
    conn: ConnId,
    link: Option<Link>,
    gate: Arc<Gate>,
}

/// What the relay told the clients of one session.
struct Session {
    id: String,
    code: String,
    mac: Side,
    browser: Option<Side>,
}

impl Session {
    fn side(&self, mac: bool) -> Option<&Side> {
        if mac {
            Some(&self.mac)
        } else {
            self.browser.as_ref()
        }
    }

    fn side_mut(&mut self, mac: bool) -> Option<&mut Side> {
        if mac {
            Some(&mut self.mac)
        } else {
            self.browser.as_mut()
        }
    }
}

fn role(mac: bool) -> Role {
    if mac { Role::Mac } else { Role::Browser }
}

fn guess(g: &Guess, issued: &str, other: &str) -> String {
    match g {
        Guess::Issued => issued.to_owned(),
        Guess::OtherSide => other.to_owned(),
        Guess::Flipped { at, xor } => {
            let mut b = issued.as_bytes().to_vec();
            if let Some(c) = b.get_mut(usize::from(*at) % issued.len().max(1)) {
                *c ^= xor;
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        Guess::Truncated { len } => issued.chars().take(usize::from(*len)).collect(),
        Guess::Raw(s) => s.clone(),
    }
}

fn client(socket: &Addr<Socket>) -> Client {
    Client {
        conn: ConnId::next(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        wake: socket.clone().recipient(),
        commands: socket.clone().recipient(),
        killer: None,
    }
}

fn metrics() -> Arc<Metrics> {
    thread_local! {
        // Registering every metric costs more than a whole script; counters
        // shared between runs change nothing the registry decides.
        static METRICS: Arc<Metrics> =
            Arc::new(Metrics::new("fuzz").expect("metrics register once"));
    }
    METRICS.with(Arc::clone)
}

async fn run(steps: Vec<Step>) {
    let settings = RegistrySettings {
        code_ttl: Duration::from_secs(300),
        grace: Duration::from_secs(60),
        join_rate: 0,
        failed_join_limit: 0,
        limits: Limits {
            max_buffered: 8 << 20,
            stall: Duration::from_secs(10),
            away_frames: 16,
            away_bytes: 1 << 20,
        },
    };
    let registry = RegistryHandle::new(&MemoryRegistry::new(settings, metrics()).start());
    let socket = Socket.start();
    // Lets the registry start (and set its timers) inside the runtime: an
    // actor first polled while the runtime shuts down cannot.
    registry.stats().await;
    let mut sessions: Vec<Session> = Vec::new();

    for step in steps.into_iter().take(MAX_STEPS) {
        match step {
            Step::Register => {
                let c = client(&socket);
                let conn = c.conn;
                let Ok(r) = registry
                    .register(Register {
                        client: c,
                        client_id: None,
                    })
                    .await
                else {
                    continue;
                };
                sessions.push(Session {
                    id: r.link.session_id.to_string(),
                    code: r.code,
                    mac: Side {
                        token: r.resume_token,
                        conn,
                        link: Some(r.link),
                        gate: Gate::new(),
                    },
                    browser: None,
                });
            }
            Step::Join { session, typed } => {
                let Some(i) = pick(&sessions, session) else {
                    continue;
                };
                // People type codes in lower case with a dash in the middle.
                let code = typed.unwrap_or_else(|| {
                    let c = sessions[i].code.to_ascii_lowercase();
                    format!("{}-{}", &c[..3], &c[3..])
                });
                let c = client(&socket);
                let conn = c.conn;
                let Ok(j) = registry
                    .join(Join {
                        client: c,
                        code: code.clone(),
                    })
                    .await
                else {
                    continue;
                };
                // A join only ever lands on the session whose code was typed.
                let joined = j.link.session_id.to_string();
                let s = sessions
                    .iter_mut()
                    .find(|s| s.id == joined)
                    .expect("joined a session nobody registered");
                assert_eq!(
                    SessionCode::parse(&code).map(|c| c.to_string()).as_deref(),
                    Ok(s.code.as_str()),
                    "{code:?} joined the session of {}",
                    s.code
                );
                s.browser = Some(Side {
                    token: j.resume_token,
                    conn,
                    link: Some(j.link),
                    gate: Gate::new(),
                });
            }
            Step::Send {
                session,
                mac,
                frames,
            } => {
                let Some(side) = pick(&sessions, session).and_then(|i| sessions[i].side(mac))
                else {
                    continue;
                };
                let Some(link) = &side.link else { continue };
                for n in 0..frames % 8 {
                    link.outbound
                        .push(Frame::Binary(Bytes::from(vec![n; 3])), &side.gate);
                }
            }
            Step::Drop { session, mac } => {
                let Some(i) = pick(&sessions, session) else {
                    continue;
                };
                let id = sessions[i].id.clone();
                let Some(side) = sessions[i].side_mut(mac) else {
                    continue;
                };
                if side.link.take().is_some() {
                    registry.gone(Gone {
                        session_id: Arc::from(id.as_str()),
                        role: role(mac),
                        conn: side.conn,
                        how: Departure::Dropped,
                    });
                }
            }
            Step::Resume {
                session,
                mac,
                id,
                token,
                last_seq,
            } => {
                let Some(i) = pick(&sessions, session) else {
                    continue;
                };
                let s = &sessions[i];
                let issued = s.side(mac).map_or("", |side| side.token.as_str());
                let other = s.side(!mac).map_or("", |side| side.token.as_str());
                let other_id = sessions
                    .get(i + 1)
                    .or(sessions.first())
                    .map_or("", |o| o.id.as_str());
                let session_id = guess(&id, &s.id, other_id);
                let resume_token = guess(&token, issued, other);
                let c = client(&socket);
                let conn = c.conn;
                let Ok(r) = registry
                    .resume(Resume {
                        client: c,
                        role: role(mac),
                        session_id: session_id.clone(),
                        resume_token: resume_token.clone(),
                        last_seq,
                    })
                    .await
                else {
                    continue;
                };
                // Only the holder of a side's token gets that side back.
                let owner = sessions
                    .iter_mut()
                    .find(|s| s.id == session_id)
                    .expect("resumed a session nobody registered");
                assert_eq!(r.link.session_id.as_ref(), session_id);
                let side = owner
                    .side_mut(mac)
                    .expect("resumed a side that never joined");
                assert_eq!(
                    resume_token, side.token,
                    "a wrong token resumed {session_id:?}"
                );
                side.conn = conn;
                side.link = Some(r.link);
            }
        }
    }
}

fn pick(sessions: &[Session], n: u8) -> Option<usize> {
    (!sessions.is_empty()).then(|| usize::from(n) % sessions.len())
}

fuzz_target!(|steps: Vec<Step>| {
    // A fresh system per input: no session, timer or mailbox survives into the next.
    System::new().block_on(run(steps));
});
