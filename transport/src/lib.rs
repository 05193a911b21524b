/*!
How streams travel between the producer and the consumer, for every command that moves one: STDIN/STDOUT, or N named
pipes (`<fifo-dir>/thread_<i>`). Sockets arrive as an inherited STDIN/STDOUT (`nc -e`, `socat`, a systemd socket
unit) and are handled by the same wrapper.

Modules, one concept each:
- [`args`]: the pipe options both command lines take (`--fifo-streams`, `--fifo-dir`, `--fifo-timeout`,
  `--idle-timeout`);
- [`endpoint`]: those options validated once into an [`Endpoint`], and the one way to open it;
- [`fifo`]: the named pipes themselves, created private, opened with a deadline on both sides, removed when done;
- [`idle`]: an idle deadline (and a cancel) on every read and write, so a stalled peer cannot hang a run;
- [`preamble`]: the control byte Percona's FIFO datasink sends before its xbstream, skipped.

The format carried (chunks, manifest, marker) lives in `proto`; the cancel signal in `runtime`.
*/

pub mod args;
pub mod endpoint;
pub mod fifo;
pub mod idle;
pub mod preamble;

pub use args::FifoArgs;
pub use endpoint::{Endpoint, EndpointError, OpenError, Opened, OpenedStream};
pub use fifo::{End, FifoError, FifoSet};
pub use idle::{Activity, IdlePipe};
pub use preamble::SkipControlByte;

/// The kind of a transport failure, for [`runtime::failure::kind_of`]: a peer that never opened its end of a pipe
/// (`--fifo-timeout`) may come on a later run.
pub fn failure_kind(cause: &(dyn std::error::Error + 'static)) -> Option<runtime::failure::FailureKind> {
    // An endpoint's open error is transparent: its pipe error is not a cause of its own in the chain.
    let fifo = match cause.downcast_ref::<OpenError>() {
        Some(OpenError::Fifo(fifo)) => Some(fifo),
        _ => cause.downcast_ref::<FifoError>(),
    };
    match fifo {
        Some(FifoError::Timeout { .. }) => Some(runtime::failure::FailureKind::Retryable),
        _ => None,
    }
}
