//! The first real error of a multi-threaded run.
//!
//! Every thread reports its error here, and recording fires the shared [`Cancel`]. The first error of the
//! highest rank wins: a [`Panicked`] thread, then any other error, then a mere [`Cancelled`] (a thread woken by the
//! cancel reports `Cancelled`, which says nothing about the cause). A panic outranks an error recorded before it
//! because it is recorded only once the thread has unwound (after the panic hook has printed the backtrace), and a
//! thread that died mid-work makes others fail for its sake meanwhile (a writer that sees a file's chunks again,
//! say): those errors are its consequences, not the cause.
//!
//! [`Failure::run_stage`] is the one panic policy of every pipeline thread: a thread's error *or panic* is recorded
//! the moment it happens, so the other threads stop at once (a panicked reader would otherwise leave a sequencer
//! waiting forever for its chunk) and the run can never report success.

use crate::lock::Locked;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::cancel::{Cancel, Cancelled};

/// The first real error of a run (a [`Cancelled`] only if nothing else failed); recording fires the cancel.
pub struct Failure {
    first: Mutex<Option<anyhow::Error>>,
    cancel: Cancel,
}

impl Failure {
    /// No failure yet; recording one fires `cancel`.
    pub fn new(cancel: Cancel) -> Failure {
        Failure { first: Mutex::new(None), cancel }
    }

    /// Records an error (kept if it is the first of the highest rank: see the module's documentation) and fires
    /// the cancel.
    pub fn record(&self, error: anyhow::Error) {
        let mut first = self.first.locked();
        let replace = match &*first {
            None => true,
            Some(previous) => rank(&error) > rank(previous),
        };
        if replace {
            *first = Some(error);
        }
        self.cancel.cancel();
    }

    /// Runs one pipeline thread's body: its error, or its panic, is recorded (firing the cancel) and `None`
    /// returned. `stage` names the thread in the message of a panic.
    pub fn run_stage<T>(&self, stage: &str, body: impl FnOnce() -> anyhow::Result<T>) -> Option<T> {
        let body = || {
            if failpoint_panics(stage) {
                panic!("failpoint {FAILPOINT_VARIABLE}=panic:{stage}");
            }
            body()
        };
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.record(error);
                None
            }
            Err(panic) => {
                self.record(Panicked(format!("the {stage} thread panicked: {}", panic_message(panic.as_ref()))).into());
                None
            }
        }
    }

    /// A thread's join result: a panic that escaped [`Failure::run_stage`] is recorded as a failure (`stage`
    /// names the thread), never ignored.
    pub fn joined<T>(&self, result: std::thread::Result<T>, stage: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(panic) => {
                self.record(Panicked(format!("a {stage} thread panicked: {}", panic_message(panic.as_ref()))).into());
                None
            }
        }
    }

    /// Starts `body` as the scoped thread `name` under [`Failure::run_stage`]: the one way a pipeline starts a
    /// stage, so every stage gets the same name in panics, failpoints and `top -H`, and the same panic policy.
    /// The handle's `None` means the stage failed (and that is recorded).
    pub fn spawn_stage<'scope, 'env, T, F>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        name: String,
        body: F,
    ) -> std::thread::ScopedJoinHandle<'scope, Option<T>>
    where
        F: FnOnce() -> anyhow::Result<T> + Send + 'scope,
        T: Send + 'scope,
    {
        let thread = std::thread::Builder::new().name(name.clone());
        // Failing to start a thread (the system's thread limit) leaves nothing to recover: as `thread::spawn`.
        thread.spawn_scoped(scope, move || self.run_stage(&name, body)).expect("cannot start a pipeline thread")
    }

    /// The outcome of a run whose threads have all been joined: a stop signal is the cause of whatever else failed
    /// (threads woken by it report [`Cancelled`]), so it comes first; then the first real error recorded.
    pub fn outcome(&self, signals: &crate::signals::Signals) -> anyhow::Result<()> {
        if let Some(error) = signals.error() {
            return Err(error);
        }
        match self.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        self.first.locked().is_some()
    }

    /// The recorded error, if any.
    pub fn take(&self) -> Option<anyhow::Error> {
        self.first.locked().take()
    }
}

/// A pipeline thread panicked (a bug): the message names the thread and says what the panic said.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(String);

/// How much an error says about why a run failed: a cancel nothing, a thread's panic the most (see the module's
/// documentation).
fn rank(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Panicked>().is_some() {
        2
    } else if error.downcast_ref::<Cancelled>().is_some() {
        0
    } else {
        1
    }
}

/// What kind of failure ended a run: whether running it again may help. Every error above the format says it
/// through [`kind_of`], so the last line an operator reads says whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Something outside was unavailable or too slow (a service after its retries, a stalled or vanished peer):
    /// running it again may succeed.
    Retryable,
    /// Running it again fails the same way until the cause is fixed (damaged data, a full disk, a permission,
    /// a refused request).
    Permanent,
    /// The run was stopped (a signal), not failed.
    Cancelled,
}

impl FailureKind {
    /// One line of advice, for the end of a failed run.
    pub fn advice(self) -> &'static str {
        match self {
            FailureKind::Retryable => {
                "retryable: something outside was unavailable or too slow; running it again may succeed"
            }
            FailureKind::Permanent => "permanent: running it again fails the same way until the cause above is fixed",
            FailureKind::Cancelled => {
                "stopped by a signal: only what the line above says was completed is complete; run it again when ready"
            }
        }
    }
}

/// The kind of `error`: that of the first cause in its chain that tells (a stop signal or a cancel; whatever
/// `known` recognises, such as a store's errors or a pipe nobody opened; an I/O timeout, or a peer that reset or
/// closed the connection, bare or inside the format's reader and writer errors), else [`FailureKind::Permanent`].
pub fn kind_of(
    error: &anyhow::Error,
    known: impl Fn(&(dyn std::error::Error + 'static)) -> Option<FailureKind>,
) -> FailureKind {
    for cause in error.chain() {
        if cause.downcast_ref::<Cancelled>().is_some() || cause.downcast_ref::<crate::signals::Stopped>().is_some() {
            return FailureKind::Cancelled;
        }
        if let Some(kind) = known(cause) {
            return kind;
        }
        // The format's reader and writer carry their I/O error in their message rather than as a source.
        let io = match (cause.downcast_ref::<proto::ReadError>(), cause.downcast_ref::<proto::WriteError>()) {
            (Some(proto::ReadError::Io { cause, .. }), _) | (_, Some(proto::WriteError::Io { cause, .. })) => {
                Some(cause)
            }
            _ => cause.downcast_ref::<std::io::Error>(),
        };
        if let Some(io) = io {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut | ConnectionReset | ConnectionAborted | ConnectionRefused | BrokenPipe | Interrupted => {
                    return FailureKind::Retryable
                }
                _ => {}
            }
        }
    }
    FailureKind::Permanent
}

/// The environment variable of the one fault-injection point, for tests: `panic:<stage>` (e.g. `panic:reader-0`,
/// `panic:writer-1`) makes that thread panic as it starts, so tests can prove that a panicked thread is a failure.
pub const FAILPOINT_VARIABLE: &str = "XBKIT_FAILPOINT";

fn failpoint_panics(stage: &str) -> bool {
    static FAILPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FAILPOINT
        .get_or_init(|| std::env::var(FAILPOINT_VARIABLE).ok())
        .as_deref()
        .and_then(|value| value.strip_prefix("panic:"))
        .is_some_and(|target| target == stage)
}

/// The message of a panic payload (`panic!` with a string or a format), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_stage_is_a_recorded_failure_that_fires_the_cancel() {
        let cancel = Cancel::new();
        let failure = Failure::new(cancel.clone());
        let result: Option<()> = failure.run_stage("reader-1", || panic!("boom {}", 42));
        assert!(result.is_none());
        assert!(cancel.is_cancelled());
        let error = failure.take().expect("recorded");
        assert_eq!(error.to_string(), "the reader-1 thread panicked: boom 42");
    }

    /// A thread's panic is recorded after it has unwound; what other threads failed with meanwhile (its
    /// consequences) does not hide it, and a cancel never replaces a real error.
    #[test]
    fn a_panic_outranks_the_errors_recorded_while_it_unwound() {
        let failure = Failure::new(Cancel::new());
        failure.record(Cancelled.into());
        failure.record(anyhow::anyhow!("t5.ibd appears twice in the stream"));
        failure.record(Cancelled.into());
        let _: Option<()> = failure.run_stage("decompress-0", || panic!("boom"));
        failure.record(anyhow::anyhow!("a later error"));
        let _: Option<()> = failure.run_stage("writer-1", || panic!("second"));
        assert_eq!(failure.take().expect("recorded").to_string(), "the decompress-0 thread panicked: boom");

        let failure = Failure::new(Cancel::new());
        failure.record(anyhow::anyhow!("disk full"));
        failure.record(Cancelled.into());
        assert_eq!(failure.take().expect("recorded").to_string(), "disk full");
    }

    #[test]
    fn the_first_real_error_wins_over_cancelled() {
        let failure = Failure::new(Cancel::new());
        failure.record(Cancelled.into());
        failure.record(anyhow::anyhow!("disk full"));
        failure.record(anyhow::anyhow!("later"));
        assert_eq!(failure.take().unwrap().to_string(), "disk full");
        assert_eq!(failure.run_stage("x", || Ok(5)), Some(5));
    }

    #[test]
    fn a_failure_says_its_kind_from_its_causes() {
        let none = |_: &(dyn std::error::Error + 'static)| None;
        let timeout = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::TimedOut)).context("stream 2");
        assert_eq!(kind_of(&timeout, none), FailureKind::Retryable);
        let full = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::StorageFull)).context("out/ibdata1");
        assert_eq!(kind_of(&full, none), FailureKind::Permanent);
        assert_eq!(kind_of(&anyhow::Error::new(Cancelled).context("reader"), none), FailureKind::Cancelled);
        let stopped = anyhow::Error::new(crate::signals::Stopped(nix::sys::signal::Signal::SIGTERM));
        assert_eq!(kind_of(&stopped, none), FailureKind::Cancelled);
        assert_eq!(stopped.to_string(), "stopped by SIGTERM: the run did not complete");
        let stalled = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let read = anyhow::Error::new(proto::ReadError::Io { stream_offset: 7, cause: stalled }).context("stream 0");
        assert_eq!(kind_of(&read, none), FailureKind::Retryable, "a stalled producer, as extract reports it");
        let gone = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let write = proto::WriteError::Io { path: "db/t.ibd".into(), stream_offset: 9, cause: gone };
        assert_eq!(kind_of(&anyhow::Error::new(write), none), FailureKind::Retryable, "a consumer that went away");
        let known = |_: &(dyn std::error::Error + 'static)| Some(FailureKind::Retryable);
        assert_eq!(kind_of(&anyhow::anyhow!("a service said no"), known), FailureKind::Retryable);
        assert!(FailureKind::Retryable.advice().starts_with("retryable"));
    }

    #[test]
    fn a_spawned_stage_is_named_and_its_error_is_the_outcome() {
        let failure = Failure::new(Cancel::new());
        let (name, failed) = std::thread::scope(|scope| {
            let named =
                failure.spawn_stage(scope, "reader-7".into(), || Ok(std::thread::current().name().map(str::to_string)));
            let failed =
                failure.spawn_stage(scope, "writer-0".into(), || -> anyhow::Result<()> { anyhow::bail!("disk full") });
            (named.join().unwrap(), failed.join().unwrap())
        });
        assert_eq!(name, Some(Some("reader-7".to_string())));
        assert!(failed.is_none());
        let signals = crate::signals::Signals::none();
        assert_eq!(failure.outcome(&signals).unwrap_err().to_string(), "disk full");
        assert!(failure.outcome(&signals).is_ok(), "taken once");
    }
}
