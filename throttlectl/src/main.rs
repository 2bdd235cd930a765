//! throttlectl: the command-line client of chadthrottled's D-Bus API.
//! The API and the full command set arrive with the D-Bus issue; today it
//! validates rates with the daemon's own parser.
use clap::{Parser, Subcommand};
use throttle_common::rate::Rate;

#[derive(Parser)]
#[command(name = "throttlectl", version, about = "Control chadthrottled")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse a rate the way the daemon does and print it in bytes per second.
    Rate { rate: String },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().cmd {
        Cmd::Rate { rate } => match rate.parse::<Rate>() {
            Ok(r) => {
                println!("{} B/s ({r})", r.bytes_per_sec());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("throttlectl: invalid rate '{rate}': {e}");
                std::process::ExitCode::from(2)
            }
        },
    }
}
