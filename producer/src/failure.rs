//! The first real error of a multi-threaded run.
//!
//! Every thread reports its error here. The first error that is not a mere [`Cancelled`] wins (a thread woken by
//! the cancel reports `Cancelled`, which says nothing about the cause), and recording fires the shared [`Cancel`].

use std::sync::Mutex;

use proto::cancel::{Cancel, Cancelled};

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

    /// Records an error (kept if it is the first real one) and fires the cancel.
    pub fn record(&self, error: anyhow::Error) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        let replace = match &*first {
            None => true,
            Some(previous) => {
                previous.downcast_ref::<Cancelled>().is_some() && error.downcast_ref::<Cancelled>().is_none()
            }
        };
        if replace {
            *first = Some(error);
        }
        self.cancel.cancel();
    }

    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The recorded error, if any.
    pub fn take(&self) -> Option<anyhow::Error> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
