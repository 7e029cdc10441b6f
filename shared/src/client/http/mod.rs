//! The HTTP transport (PROTOCOL.md, "HTTP transport"): a virtual connection
//! made of requests, presented to the connection task as a [`Link`] like a
//! WebSocket. Frames the task writes go up in numbered, idempotent send
//! batches (`up`); frames from the relay come down a receive stream, or long
//! polls where a proxy buffers the stream (`down`). The protocol above is
//! untouched: resume, counts and close codes are the WebSocket's.

mod down;
mod up;
mod wire;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::{sink, stream};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::failure::Failure;
use super::link::{Link, LinkError, Transport};
use super::url::RelayUrl;
use crate::Role;

/// The header that names a virtual connection (never a URL: URLs land in
/// access logs).
const CONNECTION_HEADER: &str = "Relay-Connection";

/// Frames written by the connection task that wait for the uplink; beyond
/// this the task waits, as on a WebSocket whose socket buffer is full.
const UP_QUEUE: usize = 256;

/// Frames read from the relay that wait for the connection task; beyond
/// this the downlink stops collecting, and the relay holds the rest
/// (unacknowledged) under its slow-consumer bounds.
const DOWN_QUEUE: usize = 64;

/// The relay answers a send or a poll within its wait (25 s at most) or
/// ends a stream then; a request open longer than this is on a dead path.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// What every request of one virtual connection needs; fixed after the dial.
struct Conn {
    http: reqwest::Client,
    cid: String,
    send_url: String,
    receive_url: String,
}

impl Conn {
    /// A POST of `body` on this connection.
    fn post(&self, url: &str, body: String) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header(CONNECTION_HEADER, &self.cid)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
    }
}

/// The HTTP side of a client: one connection pool, and what it learned
/// about the path (kept across virtual connections).
#[derive(Debug, Clone)]
pub(super) struct Dialer {
    /// The connection pool, or why there is none (TLS could not start): then
    /// every dial fails with it, and the WebSocket still works.
    http: Result<reqwest::Client, String>,
    /// A receive stream did not arrive as it went: a proxy buffers
    /// responses, so receive by long polls.
    buffered: Arc<AtomicBool>,
    /// Longest wait for a stream's `: open` before taking it as buffered.
    open_within: Duration,
}

impl Dialer {
    /// A dialer whose connections time out after `connect_timeout`, and
    /// whose streams must open within `open_within`.
    pub(super) fn new(connect_timeout: Duration, open_within: Duration) -> Dialer {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // A redirect says the address is wrong, as on the WebSocket.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the HTTP transport cannot start: {e}"));
        Dialer {
            http,
            buffered: Arc::new(AtomicBool::new(false)),
            open_within,
        }
    }

    /// Opens a virtual connection of `role` at `base`: `POST /http/mac` or
    /// `/http/browser`, then the uplink and downlink tasks.
    ///
    /// # Errors
    /// [`Failure::Permanent`] for an answer that shows a wrong address
    /// (while `ever_connected` is false), else [`Failure::Transient`].
    pub(super) async fn dial(
        &self,
        base: &RelayUrl,
        role: Role,
        ever_connected: bool,
        timeout: Duration,
    ) -> Result<Link, Failure> {
        let path = match role {
            Role::Mac => "/http/mac",
            Role::Browser => "/http/browser",
        };
        let url = base.http_endpoint(path);
        let http = self
            .http
            .as_ref()
            .map_err(|e| Failure::Transient(e.clone()))?;
        let request = http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("")
            .timeout(timeout)
            .send();
        let resp = request
            .await
            .map_err(|e| Failure::Transient(describe(&url, &e)))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let body = resp.bytes().await.unwrap_or_default();
            return Err(match base.refusal(&url, status, location.as_deref()) {
                Some(mistake) if !ever_connected => Failure::Permanent(mistake),
                _ => Failure::Transient(format!("{url}: {}", wire::error_sentence(status, &body))),
            });
        }
        #[derive(Deserialize)]
        struct Opened {
            connection: String,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transient(describe(&url, &e)))?;
        let opened: Opened = serde_json::from_slice(&body)
            .map_err(|e| Failure::Transient(format!("{url}: not a relay's answer ({e})")))?;
        let conn = Arc::new(Conn {
            http: http.clone(),
            cid: opened.connection,
            send_url: base.http_endpoint("/http/send"),
            receive_url: base.http_endpoint("/http/receive"),
        });
        Ok(self.link(conn))
    }

    /// The link of an open virtual connection: its two tasks, stopped when
    /// the connection task drops the link's receiving side.
    fn link(&self, conn: Arc<Conn>) -> Link {
        let (up_tx, up_rx) = mpsc::channel::<Message>(UP_QUEUE);
        let (down_tx, down_rx) = mpsc::channel::<Result<Message, LinkError>>(DOWN_QUEUE);
        let uplink = tokio::spawn(up::run(Arc::clone(&conn), up_rx, down_tx.clone()));
        let downlink = tokio::spawn(down::run(
            conn,
            down_tx,
            Arc::clone(&self.buffered),
            self.open_within,
        ));
        let tasks = Tasks([uplink, downlink]);
        let tx = sink::unfold(up_tx, |up, m: Message| async move {
            up.send(m)
                .await
                .map_err(|_| LinkError("the HTTP connection is closed".into()))?;
            Ok::<_, LinkError>(up)
        });
        let rx = stream::unfold((down_rx, tasks), |(mut down, tasks)| async move {
            down.recv().await.map(|m| (m, (down, tasks)))
        });
        Link {
            tx: Box::pin(tx),
            rx: Box::pin(rx),
            transport: Transport::Http,
        }
    }
}

/// A virtual connection's tasks, aborted when the link is dropped (a long
/// poll would otherwise keep going up to its wait).
struct Tasks([JoinHandle<()>; 2]);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A failed request, for a person: "connection refused at URL" as the
/// WebSocket says it, else the innermost cause.
fn describe(url: &str, e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return format!("connection refused at {url}");
            }
        }
        last = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        return format!("no answer from {url} in time");
    }
    format!("{url}: {last}")
}

/// How a request on a virtual connection ended, when not with 200.
enum Refused {
    /// Worth the same request again (a network error, 5xx, 408, 429).
    Retry(String),
    /// The connection is over: the frame to hand the task (a close, or an
    /// error that reads as a dropped connection).
    Over(Result<Message, LinkError>),
}

/// What an answer other than 200 means on an open virtual connection.
async fn refused(resp: reqwest::Response) -> Refused {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let said = wire::error_sentence(status, &body);
    // 410 (closed), or 403 (an origin refused: 1008): the close code to act on.
    if let Some((code, reason)) = wire::gone(&body) {
        return Refused::Over(Ok(close(code, reason)));
    }
    match status {
        408 | 429 | 500..=599 => Refused::Retry(said),
        // 404: the relay forgot the connection (a dropped connection, 1006);
        // 400, 409: this client and the relay disagree: start afresh.
        _ => Refused::Over(Err(LinkError(said))),
    }
}

/// A close frame with `code`, as the relay's WebSocket would send it.
fn close(code: u16, reason: String) -> Message {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Tries of one request in a row before the link is taken as dropped.
const TRIES: u32 = 4;

/// The wait before try `n` (1-based) of a request again: 250 ms, doubling.
fn retry_delay(n: u32) -> Duration {
    Duration::from_millis(250u64 << n.min(4).saturating_sub(1))
}
