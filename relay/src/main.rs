//! The `relay` binary: parses settings, sets up logging, runs a node.

use std::io::{IsTerminal, Write as _};

use clap::{Parser, Subcommand};
use relay::Config;
use relay::cli::{ClientArgs, HostArgs};
use relay::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// WebSocket pairing relay: a mac registers a code, a browser joins with it,
/// frames flow between them. Every flag is also a RELAY_* environment variable.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay node (the default when no command is given).
    Serve(Box<Config>),
    /// Be the mac: register, print the code and the page's address on stderr,
    /// then pipe stdin to the browser and its data to stdout. With --guests
    /// or --admit, host a room: stdin lines starting with / are commands
    /// (/help lists them).
    Host(HostArgs),
    /// Be the browser: join with CODE, then pipe stdin to the mac and its data to stdout.
    Join {
        #[command(flatten)]
        args: ClientArgs,
        /// The code shown by the mac (case, spaces and `-` do not matter).
        code: String,
        /// The name a room's host sees when this guest asks to join (at most
        /// 64 characters); a pairing ignores it. Default: none.
        #[arg(long, env = "RELAY_NAME")]
        name: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(c)) => *c,
        None => cli.serve,
        Some(Command::Host(args)) => std::process::exit(client_main(|| relay::cli::host(args))),
        Some(Command::Join { args, code, name }) => {
            std::process::exit(client_main(|| relay::cli::join(args, code, name)))
        }
    };
    if let Err(e) = config.validate() {
        complain(format_args!("{e}"));
        std::process::exit(2);
    }
    init_logging(&config);
    raise_open_files_limit();
    actix_web::rt::System::new().block_on(async move {
        let node = relay::server::start(config)?;
        node.run_until_signalled().await
    })
}

/// Writes `relay: WHAT` to stderr, ignoring failure: with stderr gone the
/// exit status still says what happened, where `eprintln!` would panic (101).
fn complain(what: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "relay: {what}");
}

/// Runs a client subcommand on its own runtime; returns its exit status.
fn client_main<F, Fut>(f: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let filter = EnvFilter::try_from_env("RELAY_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let status = rt.block_on(f());
            // Do not wait for the thread blocked reading stdin.
            rt.shutdown_background();
            status
        }
        Err(e) => {
            complain(format_args!("cannot start: {e}"));
            1
        }
    }
}

/// Raises the soft limit on open files to the hard one: every connection
/// takes two descriptors (its socket and the duplicate that can cut it), and
/// the usual soft limit of 1024 would cap a node near 500 connections.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        // The connection ceiling it allows is in the "relay listening" line.
        Ok(n) => tracing::info!(open_files = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        complain(format_args!(
            "RELAY_LOG {:?} is not a valid filter ({e}); using info",
            config.log
        ));
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
