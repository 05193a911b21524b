//! The command line's driver: arguments parsed ([`crate::cli`]), logging set up, stop signals installed for the
//! commands that stream, each command's settings validated and the command run, and the exit code.

use clap::Parser;

use store::Store;

use crate::cli::{Args, Command};
use crate::get::GetConfig;
use crate::put::PutConfig;
use crate::storage::StorageArgs;

/// Parses the process arguments, runs the command and returns the exit code: 0 only when everything was delivered
/// and proven, 1 on any failure (printed to stderr), 2 for bad arguments.
pub fn main() -> i32 {
    let args = Args::parse();
    let level = if args.verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .format_timestamp_secs()
        .init();
    // Stop signals become a failure of the run, with cleanup, for the commands that stream (installed first, before
    // any thread exists). `verify` and `decompress` keep the default: a signal ends them at once (decompress leaves
    // at most its staging directory, and nothing moved into place).
    runtime::limits::raise_open_file_limit();
    let streams = matches!(args.command, Command::Extract(_) | Command::Put(_) | Command::Get(_));
    let signals = if streams { runtime::signals::Signals::install() } else { runtime::signals::Signals::none() };
    let result = match &args.command {
        Command::Extract(extract) => match crate::config::ExtractConfig::from_args(extract, args.verbose, args.quiet) {
            Err(e) => {
                eprintln!("consumer: error: {e:#}");
                return 2;
            }
            Ok(config) if extract.list => crate::listing::run(&config, &signals),
            Ok(config) => crate::extract::run(&config, &signals),
        },
        Command::Verify(verify) => crate::verify::run(&verify.directory, verify.parallel.max(1)),
        Command::Decompress(args) => {
            crate::decompress::run(&args.directory, args.remove_original, args.overwrite, args.parallel)
        }
        Command::Decrypt(args) => crate::decrypt::run(&crate::decrypt::DecryptJob {
            root: &args.directory,
            keys: &args.keys,
            decompress: args.decompress,
            remove_original: args.remove_original,
            overwrite: args.overwrite,
            threads: args.parallel,
        }),
        Command::Put(put) => match configured(PutConfig::from_args(put, args.verbose, args.quiet), &put.storage) {
            Some((config, store)) => crate::put::run(&config, store.as_ref(), &signals),
            None => return 2,
        },
        Command::Get(get) => match configured(GetConfig::from_args(get, args.verbose, args.quiet), &get.storage) {
            Some((config, store)) => crate::get::run(&config, store.as_ref(), &signals),
            None => return 2,
        },
        Command::Check(check) => match crate::check::CheckConfig::from_args(check) {
            Ok(config) => check.storage.open().and_then(|store| crate::check::run(&config, store.as_ref())),
            Err(e) => {
                eprintln!("consumer: error: {e:#}");
                return 2;
            }
        },
        Command::List(list) => {
            list.storage.open().and_then(|store| crate::catalog::run_list(store.as_ref(), list.json))
        }
        Command::Delete(delete) => match delete_job(delete) {
            Ok(job) => delete.storage.open().and_then(|store| match &job {
                DeleteJob::Named { name, dry_run } => crate::catalog::delete_named(store.as_ref(), name, *dry_run),
                DeleteJob::Rules(rules) => crate::retention::run(store.as_ref(), rules),
            }),
            Err(e) => {
                eprintln!("consumer: error: {e:#}");
                return 2;
            }
        },
    };
    match result {
        Ok(summary) => {
            if !args.quiet && !summary.is_empty() {
                eprintln!("consumer: {summary}");
            }
            0
        }
        Err(e) => {
            eprintln!("consumer: error: {e:#}");
            eprintln!("consumer: {}", crate::storage::failure_kind(&e).advice());
            1
        }
    }
}

/// A command's validated settings and its opened store; `None` once the reason why not is printed (the caller
/// exits 2: bad arguments).
fn configured<C>(config: anyhow::Result<C>, storage: &StorageArgs) -> Option<(C, Box<dyn Store>)> {
    match (config, storage.open()) {
        (Ok(config), Ok(store)) => Some((config, store)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("consumer: error: {e:#}");
            None
        }
    }
}

/// What `consumer delete` was asked to do.
enum DeleteJob {
    /// One backup by name.
    Named { name: String, dry_run: bool },
    /// Every backup the rules let go.
    Rules(crate::retention::Rules),
}

/// Validates `delete`'s arguments: a NAME, or rules.
fn delete_job(args: &crate::cli::DeleteArgs) -> anyhow::Result<DeleteJob> {
    match &args.name {
        Some(name) => Ok(DeleteJob::Named { name: name.clone(), dry_run: args.dry_run }),
        None => Ok(DeleteJob::Rules(crate::retention::Rules::from_args(
            args.keep_last,
            args.older_than.as_deref(),
            args.incomplete,
            args.dry_run,
        )?)),
    }
}
