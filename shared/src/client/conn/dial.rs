//! Which transport a connection takes, and when it moves to the other:
//! `websocket` and `http` are fixed; `auto` tries the WebSocket first,
//! falls back to HTTP when the upgrade is refused or the WebSocket stays
//! silent, and while on HTTP keeps trying the WebSocket, moving back by
//! resuming on it. A move is a resume on the new link (PROTOCOL.md, "Resume
//! and switching transport"), so it loses nothing.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::super::failure::{self, DROPPED, Failure};
use super::super::link::{Link, Transport, TransportMode, Ws};
use super::super::url::{RelayUrl, UrlError};
use super::{AfterClose, Event, Outcome, Task};

/// A WebSocket attempt that failed, and whether nothing listens at all
/// (then HTTP at the same address is not worth a try).
struct WsFailed {
    failure: Failure,
    no_listener: bool,
}

type Dialing = Pin<Box<dyn Future<Output = Result<Ws, WsError>> + Send>>;

/// Dials `url` as a WebSocket within `timeout`.
fn dial_ws(url: String, timeout: Duration) -> Dialing {
    Box::pin(async move {
        let attempt = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true);
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r.map(|(ws, _)| ws),
            Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
        }
    })
}

impl Task {
    /// The next address in turn.
    fn next_base(&mut self) -> RelayUrl {
        self.current = self.next_url % self.urls.len();
        self.next_url += 1;
        self.urls[self.current].clone()
    }

    /// Connects to the next address over the transport the mode, and what
    /// the last attempts showed, call for.
    pub(super) async fn connect(&mut self) -> Result<Link, Failure> {
        let base = self.next_base();
        let timeout = self.config.connect_timeout;
        match self.config.transports.mode {
            TransportMode::WebSocket => self
                .websocket(&base, timeout)
                .await
                .map(Link::websocket)
                .map_err(|f| f.failure),
            TransportMode::Http => self.over_http(&base, timeout).await,
            TransportMode::Auto if self.prefer_http => {
                let r = self.over_http(&base, timeout).await;
                // HTTP failing too says nothing against the WebSocket: try
                // it first again next time.
                self.prefer_http = r.is_ok();
                r
            }
            TransportMode::Auto => {
                let quick = timeout.min(self.config.transports.fallback_after);
                let failed = match self.websocket(&base, quick).await {
                    Ok(ws) => return Ok(Link::websocket(ws)),
                    Err(f) if f.no_listener => return Err(f.failure),
                    Err(f) => f,
                };
                // The attempt as a whole keeps to about the connect timeout.
                let rest = timeout
                    .saturating_sub(quick)
                    .max(self.config.transports.fallback_after);
                match self.over_http(&base, rest).await {
                    Ok(link) => {
                        self.prefer_http = true;
                        self.transport_cause = Some(why_not(failed.failure));
                        Ok(link)
                    }
                    // A proxy's refusal of the upgrade is no wrong address
                    // when the relay behind it is only down.
                    Err(f @ Failure::Transient(_))
                        if matches!(failed.failure, Failure::Permanent(_)) =>
                    {
                        Err(f)
                    }
                    Err(_) => Err(failed.failure),
                }
            }
        }
    }

    async fn websocket(&mut self, base: &RelayUrl, timeout: Duration) -> Result<Ws, WsFailed> {
        let url = base.endpoint(self.role);
        match dial_ws(url.clone(), timeout).await {
            Ok(ws) => {
                self.ever_connected = true;
                Ok(ws)
            }
            Err(WsError::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => Err(WsFailed {
                failure: Failure::Transient(format!("no answer from {url} within {timeout:?}")),
                no_listener: false,
            }),
            Err(e) => {
                let no_listener = matches!(&e, WsError::Io(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused);
                Err(WsFailed {
                    failure: failure::classify(base, &url, self.ever_connected, e),
                    no_listener,
                })
            }
        }
    }

    async fn over_http(&mut self, base: &RelayUrl, timeout: Duration) -> Result<Link, Failure> {
        let link = self
            .http
            .dial(base, self.role, self.ever_connected, timeout)
            .await?;
        self.ever_connected = true;
        Ok(link)
    }

    /// Tells the application when the transport changed (a client that
    /// stays on WebSocket never hears of transports).
    pub(super) async fn on_transport(&mut self, now: Transport) {
        let before = *self.watches.transport.borrow();
        let cause = self.transport_cause.take();
        if before == now {
            return;
        }
        // `send_replace`: nobody may be watching, and the value must change anyway.
        self.watches.transport.send_replace(now);
        let cause = match (now, cause) {
            (_, Some(c)) => c,
            (Transport::Http, None) => "set to use HTTP".to_owned(),
            (Transport::WebSocket, None) => "the WebSocket works again".to_owned(),
        };
        self.emit(Event::Transport {
            transport: now,
            cause,
        })
        .await;
    }

    /// What watches a new connection on `transport`: in auto mode, a
    /// WebSocket that says nothing back to `hello` fails over, and an HTTP
    /// connection keeps trying the WebSocket.
    pub(super) fn switch(&self, transport: Transport, hello: bool) -> Switch {
        let mut s = Switch {
            silence: None,
            probe: None,
            probing: None,
            url: self.urls[self.current].endpoint(self.role),
            timeout: self
                .config
                .connect_timeout
                .min(self.config.transports.fallback_after),
            every: self.config.transports.websocket_retry,
        };
        if self.config.transports.mode == TransportMode::Auto {
            match transport {
                Transport::WebSocket if hello => {
                    s.silence = Some(Box::pin(tokio::time::sleep(
                        self.config.transports.fallback_after,
                    )));
                }
                Transport::WebSocket => {}
                Transport::Http => s.probe = Some(Box::pin(tokio::time::sleep(s.every))),
            }
        }
        s
    }

    /// The WebSocket said nothing within the fallback delay: HTTP next.
    pub(super) fn silent(&mut self) -> Outcome {
        self.prefer_http = true;
        self.transport_cause = Some(format!(
            "the WebSocket stayed silent for {:?}",
            self.config.transports.fallback_after
        ));
        Outcome::Reconnect
    }

    /// The connection ended as `o`; a WebSocket that dropped before the
    /// relay said anything (`silent`) is as good as refused, in auto mode.
    pub(super) fn dropped(&mut self, o: Outcome, silent: bool) -> Outcome {
        if silent
            && self.config.transports.mode == TransportMode::Auto
            && *self.watches.transport.borrow() == Transport::WebSocket
            && matches!(&o, Outcome::Closed(AfterClose::Reconnect, c) if *c == DROPPED)
        {
            self.prefer_http = true;
            self.transport_cause = Some("the WebSocket closed before the relay answered".into());
        }
        o
    }

    /// A WebSocket probe from an HTTP connection worked: resume on it.
    pub(super) fn upgraded(&mut self, ws: Box<Ws>) -> Outcome {
        self.prefer_http = false;
        Outcome::Switch(Link::websocket(*ws))
    }
}

/// Why the WebSocket did not work, for a person.
fn why_not(f: Failure) -> String {
    match f {
        Failure::Transient(why) => why,
        Failure::Permanent(
            UrlError::NotARelay { endpoint, status }
            | UrlError::NotFound {
                endpoint, status, ..
            }
            | UrlError::Redirect {
                endpoint, status, ..
            },
        ) => format!("the WebSocket upgrade at {endpoint} was refused with HTTP {status}"),
        Failure::Permanent(e) => e.to_string(),
    }
}

/// The watch of one connection (auto mode only): a silence deadline on a
/// WebSocket until the relay says something, and on HTTP a WebSocket probe
/// every `every`. Its state lives here, so [`Switch::next`] can be dropped
/// and called again (a `select!` arm) without losing anything.
pub(super) struct Switch {
    silence: Option<Pin<Box<Sleep>>>,
    probe: Option<Pin<Box<Sleep>>>,
    probing: Option<Dialing>,
    url: String,
    timeout: Duration,
    every: Duration,
}

/// What the watch saw.
pub(super) enum Switched {
    /// The WebSocket said nothing in time.
    Silent,
    /// A WebSocket probe opened: move the session onto it.
    Upgraded(Box<Ws>),
}

impl Switch {
    /// The relay said something: the WebSocket works. Returns whether it
    /// was the first thing (the silence deadline was still running).
    pub(super) fn heard(&mut self) -> bool {
        self.silence.take().is_some()
    }

    /// The probe opened at a bad time: try again after the interval.
    pub(super) fn later(&mut self) {
        self.probe = Some(Box::pin(tokio::time::sleep(self.every)));
    }

    /// Waits for the next thing worth acting on (forever when there is none).
    pub(super) async fn next(&mut self) -> Switched {
        loop {
            tokio::select! {
                () = fired(&mut self.silence) => return Switched::Silent,
                () = fired(&mut self.probe) => {
                    self.probe = None;
                    self.probing = Some(dial_ws(self.url.clone(), self.timeout));
                }
                r = dialed(&mut self.probing) => {
                    self.probing = None;
                    match r {
                        Ok(ws) => return Switched::Upgraded(Box::new(ws)),
                        Err(e) => {
                            tracing::debug!(error = %e, url = %self.url, "WebSocket still refused");
                            self.probe = Some(Box::pin(tokio::time::sleep(self.every)));
                        }
                    }
                }
            }
        }
    }
}

async fn fired(s: &mut Option<Pin<Box<Sleep>>>) {
    match s {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn dialed(d: &mut Option<Dialing>) -> Result<Ws, WsError> {
    match d {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}
