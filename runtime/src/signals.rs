//! SIGINT, SIGTERM, SIGHUP and SIGPIPE end a run as a failure, never as a silent stop between two chunks.
//!
//! [`Signals::install`] blocks the four signals in the calling thread before any other thread exists (threads
//! inherit the mask), and one thread takes them with `sigwait(2)`: no async-signal handler, no `unsafe`. The first
//! signal fires every [`Cancel`] a run has registered ([`Signals::watch`]), so the run stops the way it stops on any
//! other failure — every stream ends with a deliberately broken chunk, pipes and staging directories are removed —
//! and the run reports [`Signals::received`] as its error. A second signal ends the process at once (exit 128 + the
//! signal number), for when a stop is stuck.
//!
//! SIGPIPE is normally ignored by Rust programs (a write to a closed pipe fails with `EPIPE`, which is already an
//! error naming the stream); blocking it keeps that behaviour and makes a SIGPIPE sent with `kill` a failure too.
//! Both binaries use this module.

use crate::lock::Locked;
use std::sync::{Arc, Mutex};

use crate::cancel::Cancel;
use nix::sys::signal::{SigSet, Signal};

/// The signals that end a run.
pub const STOP_SIGNALS: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGPIPE];

/// A run ended by a stop signal (its kind is [`crate::failure::FailureKind::Cancelled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped by {0}: the run did not complete")]
pub struct Stopped(pub Signal);

/// The signal watcher of a process; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    received: Option<Signal>,
    cancels: Vec<Cancel>,
}

impl Signals {
    /// Blocks [`STOP_SIGNALS`] in this thread (call it first in `main`, before any thread is spawned) and starts the
    /// thread that waits for them. If the signals cannot be blocked the watcher is inert and says so in the log.
    pub fn install() -> Signals {
        let signals = Signals::default();
        let mut set = SigSet::empty();
        for signal in STOP_SIGNALS {
            set.add(signal);
        }
        // SIGXFSZ too, though no one waits for it: a write past RLIMIT_FSIZE then fails with EFBIG ("File too
        // large", an error naming the file) instead of the signal killing the process without a word.
        let mut blocked = set;
        blocked.add(Signal::SIGXFSZ);
        if let Err(e) = blocked.thread_block() {
            log::warn!("cannot block stop signals ({e}); SIGINT/SIGTERM will end the process without cleanup");
            return signals;
        }
        let watcher = signals.clone();
        let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
            match set.wait() {
                Ok(signal) => watcher.arrived(signal),
                Err(e) => {
                    log::warn!("sigwait failed: {e}");
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the signal thread: {e}");
        }
        signals
    }

    /// A watcher that never fires (for library callers and tests).
    pub fn none() -> Signals {
        Signals::default()
    }

    /// Fires `cancel` when a stop signal arrives (at once if one already has).
    pub fn watch(&self, cancel: &Cancel) {
        let mut state = self.inner.locked();
        if state.received.is_some() {
            cancel.cancel();
        }
        state.cancels.push(cancel.clone());
    }

    /// Runs `body` with a fresh cancel that a stop signal fires: the one wrapper of every command. A stop signal
    /// is the cause of whatever else failed, wherever the run was when it came (threads woken by it report
    /// `Cancelled`, a pipe open reports that it was stopped), so it replaces the body's result.
    pub fn run<T>(&self, body: impl FnOnce(&Cancel) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let cancel = Cancel::new();
        self.watch(&cancel);
        let result = body(&cancel);
        match self.error() {
            Some(error) => Err(error),
            None => result,
        }
    }

    /// The first stop signal received, if any.
    pub fn received(&self) -> Option<Signal> {
        self.inner.locked().received
    }

    /// The error a run reports after a stop signal: names the signal and says that nothing is complete.
    pub fn error(&self) -> Option<anyhow::Error> {
        self.received().map(|signal| anyhow::Error::new(Stopped(signal)))
    }

    fn arrived(&self, signal: Signal) {
        let mut state = self.inner.locked();
        if let Some(first) = state.received {
            eprintln!("second stop signal ({signal} after {first}): exiting at once");
            std::process::exit(128 + signal as i32);
        }
        log::warn!("{signal} received: stopping; the run will exit with an error");
        state.received = Some(signal);
        for cancel in &state.cancels {
            cancel.cancel();
        }
    }
}
