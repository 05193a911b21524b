//! A cancellation signal every blocking wait of a pipeline also listens to.
//!
//! When any thread fails it calls [`Cancel::cancel`]; every thread blocked in [`recv`], [`send`] or a
//! [`crate::pool::BufferPool::take`] wakes at once with [`Cancelled`], so a failure anywhere stops the whole
//! pipeline promptly instead of leaving threads parked on full or empty channels.

use crate::lock::Locked;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{select, Receiver, Sender};

/// The error of a wait that was interrupted because the pipeline is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled: another part of the pipeline failed")]
pub struct Cancelled;

/// A cloneable cancellation signal. Cancelling drops the only sender of a channel nobody ever sends on, so every
/// `select!` that includes its receiver wakes with a disconnect.
#[derive(Debug, Clone)]
pub struct Cancel {
    inner: Arc<CancelInner>,
}

#[derive(Debug)]
struct CancelInner {
    flag: AtomicBool,
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    /// A signal that has not fired.
    pub fn new() -> Cancel {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Cancel {
            inner: Arc::new(CancelInner { flag: AtomicBool::new(false), sender: Mutex::new(Some(sender)), receiver }),
        }
    }

    /// Fires the signal (idempotent).
    pub fn cancel(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        self.inner.sender.locked().take();
    }

    /// Whether the signal has fired.
    pub fn is_cancelled(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Fails with [`Cancelled`] once the signal has fired.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// The receiver to put in a `select!`: it becomes ready (disconnected) when the signal fires.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.inner.receiver
    }
}

/// Receives from a bounded channel unless cancelled first. `Ok(None)` means every sender is gone (the stage
/// before has finished) *and* nothing was cancelled: a stage that closes its channel because the run failed must
/// not look like a stage that finished, so a disconnect is checked against the cancel (when both are ready,
/// `select!` picks either).
pub fn recv<T>(receiver: &Receiver<T>, cancel: &Cancel) -> Result<Option<T>, Cancelled> {
    cancel.check()?;
    select! {
        recv(receiver) -> message => match message {
            Ok(message) => Ok(Some(message)),
            Err(_) => cancel.check().map(|()| None),
        },
        recv(cancel.receiver()) -> _ => Err(Cancelled),
    }
}

/// Sends on a bounded channel unless cancelled first. A channel whose receivers are all gone also counts as
/// cancelled: the stage after has stopped, which only happens on failure.
pub fn send<T>(sender: &Sender<T>, message: T, cancel: &Cancel) -> Result<(), Cancelled> {
    cancel.check()?;
    select! {
        send(sender, message) -> result => result.map_err(|_| Cancelled),
        recv(cancel.receiver()) -> _ => Err(Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn blocked_waits_wake_on_cancel() {
        let cancel = Cancel::new();
        let (tx, rx) = crossbeam_channel::bounded::<u32>(1);
        tx.send(1).unwrap();
        let waiter = {
            let cancel = cancel.clone();
            let tx = tx.clone();
            std::thread::spawn(move || send(&tx, 2, &cancel))
        };
        let (_keep, empty) = crossbeam_channel::bounded::<u32>(1);
        let receiver = {
            let cancel = cancel.clone();
            std::thread::spawn(move || recv(&empty, &cancel))
        };
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Err(Cancelled));
        assert_eq!(receiver.join().unwrap(), Err(Cancelled));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(rx.recv().unwrap(), 1);
    }

    #[test]
    fn recv_reports_a_finished_stage_as_none() {
        let cancel = Cancel::new();
        let (tx, rx) = crossbeam_channel::bounded::<u32>(1);
        drop(tx);
        assert_eq!(recv(&rx, &cancel), Ok(None));
    }
}
