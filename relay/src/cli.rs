//! `relay host` and `relay join`: the command-line client. It pipes stdin to
//! the peer and the peer's data to stdout, through the reconnecting client
//! library, and tells the person on stderr what happens. Exit status: 0 when
//! the session ends normally, 1 when the relay refused (the error code is
//! printed), 3 when the relay could not be reached.

use std::time::Duration;

use clap::Args;
use relay_protocol::PeerLeftReason;
use relay_protocol::client::{Client, Config, Data, Ended, Event, SendError, State};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Settings shared by `relay host` and `relay join`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The relay's URL (`ws://host:port` or `wss://...`); repeat to give fallbacks.
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
}

/// Exit status when the relay refused or ended the session with an error.
pub const EXIT_REFUSED: i32 = 1;
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
    run(client, events, args.binary, true).await
}

/// Runs the browser side with `code`; returns the exit status.
pub async fn join(args: ClientArgs, code: String) -> i32 {
    let (client, events) = Client::browser(config(&args), code);
    run(client, events, args.binary, false).await
}

async fn run(
    client: Client,
    mut events: relay_protocol::client::Events,
    binary: bool,
    mac: bool,
) -> i32 {
    let mut stdout = tokio::io::stdout();
    let mut pump: Option<tokio::task::JoinHandle<()>> = None;
    let mut ever_connected = false;
    let status = loop {
        let Some(ev) = events.next().await else {
            break 0;
        };
        match ev {
            Event::Registered { code, .. } => say(format!(
                "code {code}: type it in the browser (waiting for it to join)"
            )),
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
            Event::PeerDisconnected => {
                say("the peer's connection dropped; waiting for it to come back")
            }
            Event::PeerResumed => say("the peer is back"),
            Event::Resumed => say("session resumed"),
            Event::State(State::Reconnecting { attempt }) if ever_connected => {
                say(format!("connection lost; reconnecting (attempt {attempt})"))
            }
            Event::State(State::Reconnecting { attempt }) => say(format!(
                "cannot reach the relay; retrying (attempt {attempt})"
            )),
            Event::State(State::Connected) => ever_connected = true,
            Event::State(_) => {}
            Event::Data(d) => {
                let written = match d {
                    Data::Text(t) => stdout.write_all(format!("{t}\n").as_bytes()).await,
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
                        EXIT_REFUSED
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
