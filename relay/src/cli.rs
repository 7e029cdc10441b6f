//! `relay host` and `relay join`: the command-line client. It pipes stdin to
//! the peer and the peer's data to stdout, through the reconnecting client
//! library, and tells the person on stderr what happens. Exit status: 0 when
//! the session ends normally, 1 when the relay refused (the error code is
//! printed), 2 when the relay's address is wrong, 3 when the relay could not
//! be reached, 4 when a room's host denied this guest, 5 when it removed it,
//! 6 when end-to-end encryption stopped the session. Both sides encrypt by
//! default (see `cli/e2e.rs`); `relay host --guests N` hosts a room (see [`room`]).
//!
//! Output that cannot be written: stderr carries only diagnostics, so a
//! failed write there (closed, or a pipe whose reader left) is ignored and
//! the session and its exit status go on as if it had been read; nothing
//! here may use `eprintln!`, which panics (status 101) instead. Stdout
//! carries the peer's data: once it cannot be written (e.g. `| head -1`
//! exited) the client leaves the session and exits 0, as a reader that got
//! what it wanted means a normal end.

// `eprintln!`/`println!` panic when the stream is gone; see `note`.
#![deny(clippy::print_stderr, clippy::print_stdout)]

mod e2e;
mod room;

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, ValueEnum};
use relay_protocol::client::{
    Client, Config, Data, Ended, Event, SendError, State, Target, Transport, TransportMode,
};
use relay_protocol::{AdmitMode, ErrorCode, PeerLeftReason};
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
    /// Turn end-to-end encryption off: the host's code is the relay's six
    /// characters and frames go in clear (the relay can read them). A full
    /// code given to `relay join` encrypts regardless.
    #[arg(long, env = "RELAY_NO_E2E")]
    pub no_e2e: bool,
    /// How to reach the relay: `auto` tries WebSocket and falls back to
    /// plain HTTP when the upgrade is refused or stays silent (a proxy that
    /// blocks WebSocket), going back to WebSocket when it works again;
    /// `websocket` or `http` use only that one.
    #[arg(long, env = "RELAY_TRANSPORT", value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
}

/// The transports a client may use, as the command line spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// WebSocket, with the HTTP fallback.
    Auto,
    /// WebSocket only.
    Websocket,
    /// HTTP only.
    Http,
}

/// `relay host`'s settings: the shared ones, and the room it may ask for.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// The settings `relay join` has too.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Host a room of up to N guests (1 up to the relay's RELAY_MAX_GUESTS),
    /// each shown on stderr and admitted as --admit says. Unset: a pairing
    /// with one browser.
    #[arg(long, env = "RELAY_GUESTS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub guests: Option<u32>,
    /// How a room admits guests: `ask` (you answer each, with /admit ID or
    /// /deny ID, or y/n on a terminal) or `auto` (all get in). Given alone,
    /// it makes a room of one guest. Default: ask.
    #[arg(long, env = "RELAY_ADMIT", value_enum)]
    pub admit: Option<Admit>,
    /// Show the link of an encrypted session as a QR code: `auto` when
    /// stderr is a terminal.
    #[arg(long, env = "RELAY_QR", value_enum, default_value_t = PeerPrefix::Auto)]
    pub qr: PeerPrefix,
}

/// How a room admits its guests, as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Admit {
    /// The host answers each guest.
    Ask,
    /// Every guest gets in at once.
    Auto,
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
/// Exit status of a guest the room's host did not let in (`DENIED`).
pub const EXIT_DENIED: i32 = 4;
/// Exit status of a guest the room's host removed (`REMOVED`).
pub const EXIT_REMOVED: i32 = 5;
/// Exit status when end-to-end encryption stopped the session: the code
/// was mistyped or guessed, a frame was tampered with, or one side does
/// not encrypt.
pub const EXIT_E2E: i32 = 6;

fn config(args: &ClientArgs) -> Config {
    let mut c = Config::new(args.url[0].clone());
    c.urls = args.url.clone();
    c.max_retries = args.max_retries;
    c.connect_timeout = args.connect_timeout;
    c.e2e = !args.no_e2e;
    c.transports.mode = match args.transport {
        TransportArg::Auto => TransportMode::Auto,
        TransportArg::Websocket => TransportMode::WebSocket,
        TransportArg::Http => TransportMode::Http,
    };
    c
}

/// Writes one line to stderr, ignoring failure: diagnostics nobody can
/// read must not end the session (see the module's comment).
fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Tells the person `relay: LINE` on stderr.
fn say(line: impl AsRef<str>) {
    note(&format!("relay: {}", line.as_ref()));
}

/// Runs the mac side (a room host with `--guests` or `--admit`); returns the exit status.
pub async fn host(args: HostArgs) -> i32 {
    let mut c = config(&args.client);
    let room = match (args.guests, args.admit) {
        (None, None) => None,
        (n, admit) => {
            let admit = match admit {
                Some(Admit::Auto) => AdmitMode::Auto,
                Some(Admit::Ask) | None => AdmitMode::Ask,
            };
            if admit == AdmitMode::Ask && args.client.binary {
                say("--binary reads no commands, so nobody could be admitted: use --admit auto");
                return EXIT_USAGE;
            }
            c = c.with_room(n.unwrap_or(1), admit);
            Some(admit)
        }
    };
    let qr = match args.qr {
        PeerPrefix::Always => true,
        PeerPrefix::Auto => std::io::stderr().is_terminal(),
        PeerPrefix::Never => false,
    };
    let (client, events) = Client::mac(c);
    run(client, events, &args.client, Side::Host(room, qr)).await
}

/// Runs the browser side with `code` (giving `name` to a room's host);
/// returns the exit status.
pub async fn join(args: ClientArgs, code: String, name: Option<String>) -> i32 {
    let mut c = config(&args);
    c.name = name;
    let (client, events) = Client::browser(c, code);
    run(client, events, &args, Side::Join).await
}

/// Exit status of a command line that cannot work (the sentence says why).
pub const EXIT_USAGE: i32 = 2;

/// Which side this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The mac; in a room, admitting as it says; `true`: show the link's QR code.
    Host(Option<AdmitMode>, bool),
    /// The browser, or a room's guest.
    Join,
}

/// `2.1 s`: a wait as a person reads it.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn run(
    client: Client,
    mut events: relay_protocol::client::Events,
    args: &ClientArgs,
    side: Side,
) -> i32 {
    let mac = side != Side::Join;
    let (admit, qr) = match side {
        Side::Host(admit, qr) => (admit, qr),
        Side::Join => (None, false),
    };
    let binary = args.binary;
    let mut stdout = tokio::io::stdout();
    let marking = match args.peer_prefix {
        _ if binary => false,
        PeerPrefix::Always => true,
        PeerPrefix::Auto => std::io::stdout().is_terminal(),
        PeerPrefix::Never => false,
    };
    let prefix = if marking { peer_label(mac) } else { "" };
    let view = room::Shared::default();
    let typing = std::io::stdin().is_terminal();
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
            Event::Registered { code, page, .. } if code.contains('-') && admit.is_none() => {
                // A full code: the part after the dash never goes to the relay.
                let link = e2e::link(&page, &code);
                say(format!(
                    "code {code}: open {page} and type it there, or open {link} (end-to-end encrypted; waiting for a browser to join)"
                ));
                if let Some(q) = e2e::qr(&link).filter(|_| qr) {
                    note(&q);
                }
            }
            Event::Registered { code, page, .. } => match admit {
                None => say(format!(
                    "code {code}: open {page} and type it there (waiting for a browser to join)"
                )),
                Some(mode) => {
                    let how = match mode {
                        AdmitMode::Ask => "each guest waits for your answer",
                        AdmitMode::Auto => "guests get in at once",
                    };
                    if code.contains('-') {
                        // Each guest gets its own key exchange with this code's secret.
                        let link = e2e::link(&page, &code);
                        say(format!(
                            "code {code}: open {page} and type it there, or open {link} (a room, end-to-end encrypted per guest: {how}; /help for the commands)"
                        ));
                        if let Some(q) = e2e::qr(&link).filter(|_| qr) {
                            note(&q);
                        }
                    } else {
                        say(format!(
                            "code {code}: open {page} and type it there (a room: {how}; /help for the commands)"
                        ));
                    }
                    // Commands come from stdin, so read it from now on.
                    if pump.is_none() {
                        let input = Input::Room(view.clone(), typing);
                        pump = Some(tokio::spawn(pump_stdin(client.clone(), binary, input)));
                    }
                }
            },
            ref ev
                if admit.is_some()
                    && room::on_event(&view, ev, admit == Some(AdmitMode::Ask), typing) => {}
            Event::Waiting { guest } => say(format!(
                "waiting for the host to let you in (you are guest {guest})"
            )),
            Event::Joined if client.guest_id().is_some() => {
                let g = client.guest_id().unwrap_or_default();
                say(format!(
                    "joined as guest {g}; what you type goes to the host"
                ));
                if pump.is_none() {
                    pump = Some(tokio::spawn(pump_stdin(
                        client.clone(),
                        binary,
                        Input::Plain,
                    )));
                }
            }
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
                    pump = Some(tokio::spawn(pump_stdin(
                        client.clone(),
                        binary,
                        Input::Plain,
                    )));
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
            Event::Transport { transport, cause } => say(match transport {
                Transport::Http if args.transport == TransportArg::Http => {
                    "over HTTP (--transport http)".to_owned()
                }
                Transport::Http => format!(
                    "on the HTTP fallback ({cause}); slower than WebSocket, but nothing is lost"
                ),
                Transport::WebSocket => format!("back on WebSocket ({cause})"),
            }),
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
            Event::Data(_) | Event::GuestData { .. } => {
                let (mark, d) = match ev {
                    Event::GuestData { guest, data } if marking => (room::mark(guest), data),
                    Event::GuestData { data, .. } => (String::new(), data),
                    Event::Data(data) => (prefix.to_owned(), data),
                    _ => continue,
                };
                let written = match d {
                    Data::Text(t) => stdout.write_all(format!("{mark}{t}\n").as_bytes()).await,
                    Data::Binary(b) => stdout.write_all(&b).await,
                };
                if written.is_err() || stdout.flush().await.is_err() {
                    // Nobody reads our output any more: end the session.
                    client.leave().await;
                    break 0;
                }
            }
            Event::Latency(_) => {}
            Event::Encrypted if client.guest_id().is_some() => {
                say("end-to-end encrypted: the host and you share a key the relay never saw")
            }
            Event::Encrypted => say(format!(
                "end-to-end encrypted: the {} and you share a key the relay never saw",
                peer_name(mac)
            )),
            Event::Unfinished => say(format!(
                "the {} left without its end-of-session frame: its last lines may be missing",
                peer_name(mac)
            )),
            // Room events come only to a room host, which told them above.
            Event::GuestJoined { .. }
            | Event::GuestAdmitted(_)
            | Event::GuestLeft { .. }
            | Event::GuestAway(_)
            | Event::GuestBack(_)
            | Event::GuestEncrypted(_)
            | Event::GuestFailed { .. }
            | Event::GuestUnfinished(_) => {}
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
                        match code {
                            ErrorCode::Denied => break EXIT_DENIED,
                            ErrorCode::Removed => break EXIT_REMOVED,
                            _ => {}
                        }
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
                    Ended::CodeMismatch => {
                        say(format!("{why}; session not continued"));
                        if mac {
                            say("run relay host again for a new code");
                        }
                        EXIT_E2E
                    }
                    Ended::Tampered(_) | Ended::NotEncrypted(_) => {
                        say(why.to_string());
                        EXIT_E2E
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

/// How stdin's lines are read.
enum Input {
    /// Every line is data for the peer.
    Plain,
    /// A room host's: lines may be commands; `true` when a person types
    /// at a terminal (then `y`/`n` answer a request).
    Room(room::Shared, bool),
}

async fn pump_stdin(client: Client, binary: bool, input: Input) {
    let mut stdin = BufReader::new(tokio::io::stdin());
    if binary {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => send(&client, Target::All, Frame::Binary(buf[..n].to_vec())).await,
            }
        }
    } else {
        let mut lines = stdin.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let (to, line) = match &input {
                Input::Plain => (Target::All, line),
                Input::Room(view, typing) => {
                    let answers = *typing && room::someone_asks(view);
                    match room::on_line(view, &client, room::parse(&line, answers)).await {
                        Some(data) => data,
                        None => continue,
                    }
                }
            };
            send(&client, to, Frame::Text(line)).await;
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
async fn send(client: &Client, to: Target, f: Frame) {
    loop {
        let r = match &f {
            Frame::Text(t) => client.send_text_to(to, t).await,
            Frame::Binary(b) => client.send_binary_to(to, b.clone()).await,
        };
        match r {
            Ok(()) | Err(SendError::Ended) => return,
            Err(e @ (SendError::NotRoomHost | SendError::TooManyCommands)) => {
                say(e.to_string());
                return;
            }
            Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(SendError::NotPaired) => {
                say("no peer to send to; waiting for one");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
