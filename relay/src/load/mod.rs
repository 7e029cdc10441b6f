//! The load generator behind `relay-load`: opens pairs through the protocol
//! against one or more relay URLs and measures what operators choose a relay
//! by. Every scenario is bounded in pairs and time and stops by itself; the
//! results print as a table and can be written as JSON.
//!
//! Scenarios (`--scenario`):
//! - `setup`: pairs set up a second (register, join, peer_joined).
//! - `throughput`: frames and bytes a second, each mac sending as fast as it can.
//! - `latency`: at a fixed offered rate, the delay from the moment each frame
//!   was due to be sent to its arrival (coordinated-omission aware).
//! - `idle`: relay memory per idle paired connection (from its `/metrics`).
//! - `storm`: a node killed under the pairs: time until all resumed, frames lost.
//! - `fanout`: rooms of one host and `--guests` guests; each host sends to all
//!   its guests; frames delivered a second summed over guests.
//! - `fanin`: the same rooms; every guest sends to its host, which reads the
//!   frames tagged by `from`.
//! - `hold`: idle pairs held for `--duration`, answering heartbeats, then
//!   pinged one frame each way (the 100,000-connection run).

mod fanout;
mod hold;
mod pairs;
mod report;
mod rooms;
mod scenarios;

use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use report::Report;

/// Which measurement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Pair set-up rate.
    Setup,
    /// Frames a second as fast as the relay takes them.
    Throughput,
    /// Latency quantiles at a fixed offered rate.
    Latency,
    /// Relay memory per idle paired connection.
    Idle,
    /// A node killed under the pairs: time to resume, frames lost.
    Storm,
    /// Rooms: each host sends to all its guests; frames delivered a second.
    Fanout,
    /// Rooms: every guest sends to its host; frames the hosts read a second.
    Fanin,
    /// Idle pairs held, then each pinged one frame each way.
    Hold,
}

/// Load generator for the relay: opens pairs of mac and browser connections
/// through the protocol and measures set-up rate, throughput, latency, memory
/// per connection or recovery from a killed node. Each run is bounded and
/// prints a table; `--json` also writes the results to a file.
#[derive(Debug, Clone, Parser)]
#[command(name = "relay-load", version)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::Throughput)]
    pub scenario: Scenario,
    /// Relay URL(s), `ws://host:port`. Macs use the first; browsers use the
    /// second if given (cross-node pairs when they are two nodes).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Share of pairs whose browser uses the second URL (0 to 1); the rest stay on the first.
    #[arg(long, default_value_t = 1.0)]
    pub cross_share: f64,
    /// Pairs to open.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Payload size of each frame, in bytes (16 at least: it carries a sequence number and a time).
    #[arg(long, default_value = "64", value_parser = crate::config::parse_bytes)]
    pub size: usize,
    /// How long to send (throughput, latency, storm).
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// Offered rate for `latency`, frames a second over all pairs.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Rooms to open (fanout, fanin), each a host and `--guests` guests; the
    /// hosts use the first URL, the guests every URL given in turn.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Guests in each room (fanout, fanin): 1 up to the relay's
    /// RELAY_MAX_GUESTS (16 by default).
    #[arg(long, default_value_t = 16)]
    pub guests: usize,
    /// Frames a fanout host may send ahead of its slowest guest. A room host
    /// is not paced by its guests, and a guest that falls RELAY_MAX_BUFFERED
    /// (8 MiB by default) behind is cut, so keep window x (size + 64 B) well
    /// under it. Default: 2 MiB of frames, 16 to 4,096. For fanin, what each
    /// guest may send ahead of what its host read; default: the host's
    /// window shared among its guests, 16 at least.
    #[arg(long)]
    pub window: Option<u64>,
    /// Pairs set up at once (rooms, for fanout and fanin).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Send both ways (each browser sends too), for throughput.
    #[arg(long)]
    pub both_ways: bool,
    /// Source addresses to spread connections over (to get past one
    /// address's ~28k ephemeral ports): e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<std::net::IpAddr>,
    /// `/metrics` URL of the relay (for `idle`); default from the first `--url`.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Shell command that kills the node of the first URL (for `storm`).
    #[arg(long)]
    pub kill: Option<String>,
    /// URL the macs fall back to once their node is killed (for `storm`).
    #[arg(long)]
    pub fallback: Option<String>,
    /// Hard limit on the whole run; it stops with what it measured.
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A label for the results (e.g. "relay same-node").
    #[arg(long, default_value = "")]
    pub label: String,
    /// For `hold`: after the ping, wait for the relay to close every
    /// connection (the script drains the nodes) and time it.
    #[arg(long)]
    pub wait_close: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the chosen scenario within the run's time limit.
///
/// # Errors
/// When the relay cannot be reached or the scenario cannot complete.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    if args.size < 16 {
        anyhow::bail!("--size must be at least 16 bytes (a sequence number and a timestamp)");
    }
    if args.rooms == 0 || args.guests == 0 || args.window == Some(0) {
        anyhow::bail!("--rooms, --guests and --window must be at least 1");
    }
    let limit = args.timeout;
    let work = async {
        match args.scenario {
            Scenario::Setup => scenarios::setup(&args).await,
            Scenario::Throughput => scenarios::throughput(&args).await,
            Scenario::Latency => scenarios::latency(&args).await,
            Scenario::Idle => scenarios::idle(&args).await,
            Scenario::Storm => scenarios::storm(&args).await,
            Scenario::Fanout => fanout::fanout(&args).await,
            Scenario::Fanin => fanout::fanin(&args).await,
            Scenario::Hold => hold::hold(&args).await,
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "the run took longer than --timeout {}",
            humantime::format_duration(limit)
        ),
    }
}
