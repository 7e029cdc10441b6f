//! `relay host` and `relay join`: the command-line client. It pipes stdin to
//! the peer and the peer's data to stdout, through the reconnecting client
//! library, and tells the person on stderr what happens. Exit status: 0 when
//! the session ends normally, 1 when the relay refused (the error code is
//! printed), 2 when the relay's address is wrong, 3 when the relay could not
//! be reached.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, ValueEnum};
use relay_protocol::client::{Client, Config, Data, Ended, Event, SendError, State};
use relay_protocol::{ErrorCode, PeerLeftReason};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Settings shared by `relay host` and `relay join`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The relay's URL (`ws://host:port` or `wss://...`; `http(s)://` means the
    /// same); repeat to give fallbacks.
    #[arg(long, env = "RELAY_URL", required = true, num_args = 1)]
    pub url: Vec<String>,
    /// Send stdin as raw binary frames (64 KiB at most each) instead of one text frame per line.
    #[arg(long)]
    pub binary: bool,
    /// Reconnect attempts in a row before giving up (default: never give up).
    #[arg(long, env = "RELAY_MAX_RETRIES")]
    pub max_retries: Option<u32>,
    /// Longest one connection attempt may take.
    #[arg(long, env = "RELAY_CONNECT_TIMEOUT", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub connect_timeout: Duration,
    /// Start each text line from the peer with `browser> ` or `mac> `: `auto`
    /// when stdout is a terminal (piped output stays verbatim).
    #[arg(long, env = "RELAY_PEER_PREFIX", value_enum, default_value_t = PeerPrefix::Auto)]
    pub peer_prefix: PeerPrefix,
}

/// When to mark the peer's lines on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerPrefix {
    /// When stdout is a terminal, where typed and received lines would look alike.
    Auto,
    /// Always (text mode only: binary data is never altered).
    Always,
    /// Never.
    Never,
}

/// Exit status when the relay refused or ended the session with an error.
pub const EXIT_REFUSED: i32 = 1;
/// Exit status when the relay's address is wrong (scheme, path, HTTP 404).
pub const EXIT_BAD_URL: i32 = 2;
/// Exit status when the relay could not be reached (retries exhausted).
pub const EXIT_UNREACHABLE: i32 = 3;

fn config(args: &ClientArgs) -> Config {
    let mut c = Config::new(args.url[0].clone());
    c.urls = args.url.clone();
    c.max_retries = args.max_retries;
    c.connect_timeout = args.connect_timeout;
    c
}

fn say(line: impl AsRef<str>) {
    eprintln!("relay: {}", line.as_ref());
}

/// Runs the mac side; returns the exit status.
pub async fn host(args: ClientArgs) -> i32 {
    let (client, events) = Client::mac(config(&args));
    run(client, events, &args, true).await
}

/// Runs the browser side with `code`; returns the exit status.
pub async fn join(args: ClientArgs, code: String) -> i32 {
    let (client, events) = Client::browser(config(&args), code);
    run(client, events, &args, false).await
}

/// `2.1 s`: a wait as a person reads it.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn run(
    client: Client,
    mut events: relay_protocol::client::Events,
    args: &ClientArgs,
    mac: bool,
) -> i32 {
    let binary = args.binary;
    let mut stdout = tokio::io::stdout();
    let prefix = match args.peer_prefix {
        _ if binary => "",
        PeerPrefix::Always => peer_label(mac),
        PeerPrefix::Auto if std::io::stdout().is_terminal() => peer_label(mac),
        PeerPrefix::Auto | PeerPrefix::Never => "",
    };
    let mut pump: Option<tokio::task::JoinHandle<()>> = None;
    let mut ever_connected = false;
    let mut lost_session = false;
    let status = loop {
        let Some(ev) = events.next().await else {
            break 0;
        };
        match ev {
            Event::Registered { code, page, .. } if lost_session => say(format!(
                "new code {code}: open {page} and type it there (the old code no longer works)"
            )),
            Event::Registered { code, page, .. } => say(format!(
                "code {code}: open {page} and type it there (waiting for a browser to join)"
            )),
            Event::SessionLost {
                code, unconfirmed, ..
            } => {
                lost_session = true;
                let what = match code {
                    ErrorCode::ResumeExpired => "the session expired while the connection was down",
                    _ => "the relay restarted and lost the session",
                };
                let unsent = match unconfirmed {
                    0 => String::new(),
                    n => format!("; {n} frames sent meanwhile may not have reached the browser"),
                };
                say(format!("{what} ({code}){unsent}; registering again"));
            }
            Event::CodeExpired { code } => {
                say(format!(
                    "code {code} expired before a browser joined; run again for a new one"
                ));
                client.leave().await;
                break EXIT_REFUSED;
            }
            // Start reading stdin once there is someone to send to.
            Event::Joined | Event::PeerJoined => {
                say(if mac {
                    "a browser joined; what you type goes to it"
                } else {
                    "joined; what you type goes to the mac"
                });
                if pump.is_none() {
                    pump = Some(tokio::spawn(pump_stdin(client.clone(), binary)));
                }
            }
            Event::PeerLeft(reason) => {
                let why = match reason {
                    PeerLeftReason::Left => "it left",
                    PeerLeftReason::Closed => "it closed the connection",
                    PeerLeftReason::Timeout => "it did not come back in time",
                };
                say(format!("the browser is gone ({why}); session over"));
                client.leave().await;
                break 0;
            }
            Event::PeerDisconnected => say(format!(
                "the {}'s connection dropped; waiting for it to come back",
                peer_name(mac)
            )),
            Event::PeerResumed => say(format!("the {} is back", peer_name(mac))),
            Event::Resumed => say("session resumed"),
            Event::Retrying {
                attempt,
                delay,
                cause,
            } => {
                let delay = seconds(delay);
                say(if ever_connected && attempt == 1 {
                    format!("connection lost ({cause}); reconnecting in {delay}, attempt {attempt}")
                } else {
                    format!(
                        "cannot reach the relay ({cause}); retrying in {delay}, attempt {attempt}"
                    )
                })
            }
            Event::State(State::Connected) => ever_connected = true,
            Event::State(_) => {}
            Event::Data(d) => {
                let written = match d {
                    Data::Text(t) => stdout.write_all(format!("{prefix}{t}\n").as_bytes()).await,
                    Data::Binary(b) => stdout.write_all(&b).await,
                };
                if written.is_err() || stdout.flush().await.is_err() {
                    // Nobody reads our output any more: end the session.
                    client.leave().await;
                    break 0;
                }
            }
            Event::Latency(_) => {}
            Event::Error { code, message } => say(format!("{code}: {message}")),
            Event::Lost(n) => say(format!(
                "{n} frames sent before a relay crash could not be sent again"
            )),
            Event::Ended(why) => {
                break match why {
                    Ended::Left => 0,
                    Ended::MacDisconnected => {
                        say("the mac ended the session");
                        0
                    }
                    Ended::Refused { code, message } => {
                        say(format!("{code}: {message}"));
                        if matches!(code, ErrorCode::InvalidResume | ErrorCode::ResumeExpired) {
                            // Only the mac can start over; the person needs its new code.
                            say(if mac {
                                "run relay host again for a new code"
                            } else {
                                "the relay lost the session (it may have restarted): ask the mac for its new code and join again"
                            });
                        }
                        EXIT_REFUSED
                    }
                    Ended::BadUrl(e) => {
                        say(e.to_string());
                        EXIT_BAD_URL
                    }
                    Ended::Closed(c) => {
                        say(format!("the relay closed the connection ({c})"));
                        EXIT_REFUSED
                    }
                    Ended::GaveUp(n) => {
                        say(format!("could not reach the relay after {n} attempts"));
                        EXIT_UNREACHABLE
                    }
                };
            }
        }
    };
    if let Some(p) = pump {
        p.abort();
    }
    status
}

/// The mark of the peer's lines.
fn peer_label(mac: bool) -> &'static str {
    if mac { "browser> " } else { "mac> " }
}

/// What the person calls the other side.
fn peer_name(mac: bool) -> &'static str {
    if mac { "browser" } else { "mac" }
}

async fn pump_stdin(client: Client, binary: bool) {
    let mut stdin = BufReader::new(tokio::io::stdin());
    if binary {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => send(&client, Frame::Binary(buf[..n].to_vec())).await,
            }
        }
    } else {
        let mut lines = stdin.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            send(&client, Frame::Text(line)).await;
        }
    }
    // End of input: the session is over for us.
    client.leave().await;
}

enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// Sends one frame, waiting while the outbound queue is full (the person's
/// input waits rather than being lost).
async fn send(client: &Client, f: Frame) {
    loop {
        let r = match &f {
            Frame::Text(t) => client.send_text(t).await,
            Frame::Binary(b) => client.send_binary(b.clone()).await,
        };
        match r {
            Ok(()) | Err(SendError::Ended) => return,
            Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(SendError::NotPaired) => {
                say("no peer to send to; waiting for one");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
