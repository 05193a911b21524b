//! One side of a transfer: STDIN/STDOUT, or N named pipes in a directory.
//!
//! Every command that moves a stream (`producer`, `consumer extract`, `put`, `get`) turns its pipe options into an
//! [`Endpoint`] with [`Endpoint::new`] (one validation: at least one stream, more than one needs a directory, no
//! binary stream to or from a terminal) and opens it with [`Endpoint::open`] (one way: pipes created private and
//! awaited in parallel, each stream wrapped in an [`IdlePipe`] that shares one idle clock and listens to the run's
//! cancel).

use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runtime::cancel::Cancel;

use crate::args::FifoArgs;
use crate::fifo::{fifo_path, End, FifoError, FifoSet};
use crate::idle::{Activity, IdlePipe};

/// Where a side's streams are: validated, not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One stream on STDIN (reading) or STDOUT (writing).
    Stdio,
    /// N streams on `dir/thread_<i>`.
    Fifos {
        /// The pipes' directory.
        dir: PathBuf,
        /// How many pipes.
        count: usize,
        /// How long to wait for the peer to open each (`--fifo-timeout`).
        timeout: Duration,
    },
}

/// Pipe options that cannot work, said in the options' own words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// `--fifo-streams 0`.
    #[error("--fifo-streams must be at least 1")]
    NoStreams,
    /// More than one stream, and nowhere to put the pipes.
    #[error("--fifo-streams {0} needs --fifo-dir")]
    NeedsDirectory(usize),
    /// STDIN is a terminal: nothing was piped in.
    #[error("STDIN is a terminal: pipe a stream in, or use --fifo-dir")]
    TerminalIn,
    /// STDOUT is a terminal: a binary stream would garble it.
    #[error("refusing to write a binary stream to a terminal: redirect STDOUT, or use --fifo-dir")]
    TerminalOut,
}

/// One opened stream: its name for messages, and its bytes behind the idle deadline.
#[derive(Debug)]
pub struct OpenedStream {
    /// `STDIN`, `STDOUT`, or the pipe's path.
    pub name: String,
    /// The stream, with `--idle-timeout` on every call and the run's cancel.
    pub pipe: IdlePipe,
}

/// An opened endpoint: its streams in order, and the pipes (removed when this is dropped) if there are any.
#[derive(Debug)]
pub struct Opened {
    /// Stream `i` is `streams[i]`.
    pub streams: Vec<OpenedStream>,
    /// The named pipes, kept so that dropping them removes them once the run is over.
    pub fifos: Option<FifoSet>,
}

impl Endpoint {
    /// Validates `--fifo-streams` (`count`) and `--fifo-dir` (`dir`) for the side that uses `end` of the streams;
    /// without a directory the stream is STDIN (reading) or STDOUT (writing), which must not be a terminal.
    pub fn new(dir: Option<PathBuf>, count: usize, timeout: Duration, end: End) -> Result<Endpoint, EndpointError> {
        if count == 0 {
            return Err(EndpointError::NoStreams);
        }
        match dir {
            Some(dir) => Ok(Endpoint::Fifos { dir, count, timeout }),
            None if count > 1 => Err(EndpointError::NeedsDirectory(count)),
            None if end == End::Read && io::stdin().is_terminal() => Err(EndpointError::TerminalIn),
            None if end == End::Write && io::stdout().is_terminal() => Err(EndpointError::TerminalOut),
            None => Ok(Endpoint::Stdio),
        }
    }

    /// [`Endpoint::new`] from the command line's pipe options.
    pub fn from_args(args: &FifoArgs, end: End) -> Result<Endpoint, EndpointError> {
        Endpoint::new(args.fifo_dir.clone(), args.fifo_streams, Duration::from_secs(args.fifo_timeout), end)
    }

    /// Number of streams.
    pub fn stream_count(&self) -> usize {
        match self {
            Endpoint::Stdio => 1,
            Endpoint::Fifos { count, .. } => *count,
        }
    }

    /// The name of stream `index` in messages: `STDIN`/`STDOUT` for `end`, or the pipe's path.
    pub fn stream_name(&self, index: usize, end: End) -> String {
        match (self, end) {
            (Endpoint::Stdio, End::Read) => "STDIN".into(),
            (Endpoint::Stdio, End::Write) => "STDOUT".into(),
            (Endpoint::Fifos { dir, .. }, _) => fifo_path(dir, index).display().to_string(),
        }
    }

    /// Opens every stream for `end`. Pipes are created if missing (either side may start first) and awaited in
    /// parallel, each up to the endpoint's timeout, listening to `cancel`. Every stream then fails a read or write
    /// after `idle` without progress on any stream of the endpoint (one shared clock: a pipe that is quiet while
    /// the others work is not a stalled peer), and promptly once `cancel` fires.
    pub fn open(&self, end: End, idle: Option<Duration>, cancel: &Cancel) -> Result<Opened, OpenError> {
        let activity = Arc::new(Activity::new());
        let wrap = |pipe: IdlePipe| pipe.with_cancel(cancel.clone()).with_activity(Arc::clone(&activity));
        match self {
            Endpoint::Stdio => {
                let name = self.stream_name(0, end);
                let fd = match end {
                    End::Read => std::os::fd::AsFd::as_fd(&io::stdin()).try_clone_to_owned(),
                    End::Write => std::os::fd::AsFd::as_fd(&io::stdout()).try_clone_to_owned(),
                };
                let pipe = fd
                    .and_then(|fd| IdlePipe::stdio(File::from(fd), idle, end))
                    .map_err(|source| OpenError::Wrap { name: name.clone(), source })?;
                Ok(Opened { streams: vec![OpenedStream { name, pipe: wrap(pipe) }], fifos: None })
            }
            Endpoint::Fifos { dir, count, timeout } => {
                let set = FifoSet::create(dir, *count)?;
                let files = set.open_all(end, *timeout, cancel)?;
                let mut streams = Vec::with_capacity(*count);
                for (path, file) in set.paths().iter().zip(files) {
                    let name = path.display().to_string();
                    let pipe =
                        IdlePipe::new(file, idle).map_err(|source| OpenError::Wrap { name: name.clone(), source })?;
                    streams.push(OpenedStream { name, pipe: wrap(pipe) });
                }
                Ok(Opened { streams, fifos: Some(set) })
            }
        }
    }
}

/// Why an endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A pipe could not be made, was not ours, or its peer never came.
    #[error(transparent)]
    Fifo(#[from] FifoError),
    /// A stream could not be set up for deadlines (`fstat`, reopening, `fcntl`).
    #[error("cannot use {name}")]
    Wrap {
        /// The stream.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_options_are_validated_once_in_their_own_words() {
        let second = Duration::from_secs(1);
        let dir = Some(PathBuf::from("/tmp/x"));
        assert!(matches!(Endpoint::new(dir.clone(), 0, second, End::Read), Err(EndpointError::NoStreams)));
        assert!(matches!(Endpoint::new(None, 0, second, End::Write), Err(EndpointError::NoStreams)));
        let error = Endpoint::new(None, 4, second, End::Write).unwrap_err();
        assert_eq!(error.to_string(), "--fifo-streams 4 needs --fifo-dir");
        let endpoint = Endpoint::new(dir, 3, second, End::Write).unwrap();
        assert_eq!(endpoint.stream_count(), 3);
        assert_eq!(endpoint.stream_name(2, End::Write), "/tmp/x/thread_2");
        assert_eq!(Endpoint::Stdio.stream_name(0, End::Read), "STDIN");
        assert_eq!(Endpoint::Stdio.stream_name(0, End::Write), "STDOUT");
    }

    #[test]
    fn pipes_open_on_both_sides_and_carry_bytes() {
        use std::io::{Read, Write};
        let work = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::new(Some(work.path().join("p")), 2, Duration::from_secs(10), End::Read).unwrap();
        let writer = endpoint.clone();
        let cancel = Cancel::new();
        let sent = std::thread::spawn(move || {
            let opened = writer.open(End::Write, Some(Duration::from_secs(10)), &Cancel::new()).unwrap();
            for (i, mut stream) in opened.streams.into_iter().enumerate() {
                stream.pipe.write_all(format!("stream {i}").as_bytes()).unwrap();
            }
        });
        let opened = endpoint.open(End::Read, Some(Duration::from_secs(10)), &cancel).unwrap();
        assert_eq!(opened.streams.len(), 2);
        sent.join().unwrap();
        for (i, mut stream) in opened.streams.into_iter().enumerate() {
            let mut text = String::new();
            stream.pipe.read_to_string(&mut text).unwrap();
            assert_eq!(text, format!("stream {i}"));
            assert!(stream.name.ends_with(&format!("thread_{i}")));
        }
        drop(opened.fifos);
        assert!(!work.path().join("p/thread_0").exists(), "the pipes are removed with the set");
    }
}
