//! `relay-load`: the load generator (see `relay::load`).

use clap::Parser;

fn main() {
    let args = relay::load::Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-load: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let json = args.json.clone();
    match rt.block_on(relay::load::run(args)) {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report.json()).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("relay-load: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("relay-load: {e:#}");
            std::process::exit(1);
        }
    }
}
