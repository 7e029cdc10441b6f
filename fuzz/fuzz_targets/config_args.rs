//! A node's whole command line, one argument per line (`--code-ttl=5m`), parsed and validated as at start-up.
#![no_main]

use std::sync::OnceLock;

use clap::{Args, Command, FromArgMatches};
use libfuzzer_sys::fuzz_target;
use relay::Config;

/// The relay's flags without their `RELAY_*` variables, so what the fuzzing
/// shell happens to export cannot change (or hide) what is parsed.
fn command() -> &'static Command {
    static CMD: OnceLock<Command> = OnceLock::new();
    CMD.get_or_init(|| {
        let mut cmd = Config::augment_args(Command::new("relay").no_binary_name(true))
            .mut_args(|a| a.env(None));
        // Built once, so each input pays for parsing, not for clap's self-checks.
        cmd.build();
        cmd
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(matches) = command().clone().try_get_matches_from(text.lines()) else {
        return;
    };
    // Every value was checked by its value parser already, so turning the
    // matches into a Config must not fail.
    let config = Config::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("{text:?} matched but is no Config: {e}"));
    let _ = config.validate();
});
