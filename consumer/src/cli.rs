//! Raw command-line arguments (clap derive) and the binary's entry point.

use clap::Parser;

/// Restore xbstream backups: extract one stream from STDIN or N from named pipes, with proof of completeness.
#[derive(Debug, Parser)]
#[command(name = "consumer", version, about, max_term_width = 110)]
pub struct Args {}

/// Parses the process arguments and runs the command; returns the exit code.
pub fn main() -> i32 {
    let _args = Args::parse();
    eprintln!("consumer: no command yet (extract lands with issue 4)");
    2
}
