//! The `relay` binary: parses settings, sets up logging, runs a node.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use relay::Config;
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
    Serve(Config),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(c)) => c,
        None => cli.serve,
    };
    if let Err(e) = config.validate() {
        eprintln!("relay: {e}");
        std::process::exit(2);
    }
    init_logging(&config);
    actix_web::rt::System::new().block_on(async move {
        let node = relay::server::start(config)?;
        node.run_until_signalled().await
    })
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!(
            "relay: RELAY_LOG {:?} is not a valid filter ({e}); using info",
            config.log
        );
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
