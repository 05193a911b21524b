//! The command line's driver: arguments parsed ([`crate::cli`]), logging set up, stop signals installed,
//! settings validated ([`crate::config`]), the backup run ([`crate::pipeline`]), and the exit code.

use clap::Parser;

use crate::cli::Args;

/// Parses the process arguments, runs the backup and returns the exit code: 0 when every byte was delivered and
/// the manifest written, 1 on any failure (printed to stderr), 2 for bad arguments.
pub fn main() -> i32 {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet);
    // First, before any thread exists: stop signals become a failure of the run, with cleanup.
    runtime::limits::raise_open_file_limit();
    let signals = runtime::signals::Signals::install();
    let config = match crate::config::Config::from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("producer: error: {e:#}");
            return 2;
        }
    };
    match crate::pipeline::run(&config, &signals) {
        Ok(summary) => {
            if !args.quiet {
                eprintln!("producer: {summary}");
            }
            0
        }
        Err(e) => {
            eprintln!("producer: error: {e:#}");
            eprintln!("producer: {}", runtime::failure::kind_of(&e, transport::failure_kind).advice());
            1
        }
    }
}

fn init_logging(verbose: bool, quiet: bool) {
    // Warnings always show (--quiet hides only progress); --verbose adds the periodic lines and detail.
    let _ = quiet;
    let level = if verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .format_timestamp_secs()
        .init();
}
