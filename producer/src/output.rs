//! Where the streams go: the outputs opened (STDOUT, N pipes, or a directory), one writer thread per stream, and
//! for a plain copy the source's directories made as they were.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use crossbeam_channel::Receiver;
use proto::DirectoryRecord;
use runtime::cancel::{recv, Cancel};
use transport::fifo::{self, End, FifoSet};

use crate::config::{Config, Output};
use crate::sink::{DirectorySink, Sink, SinkReport, StreamItem, StreamSink};

pub(crate) fn stream_name(config: &Config, index: usize) -> String {
    match &config.output {
        Output::Directory(dir) => dir.display().to_string(),
        Output::Streams { endpoint, .. } => endpoint.stream_name(index, End::Write),
    }
}

/// The opened sinks, and the pipes (removed when dropped) if there are any.
pub(crate) type Outputs = (Vec<Box<dyn Sink>>, Option<FifoSet>);

/// Opens every output; for pipes, waits (in parallel, each up to --fifo-timeout) for the consumer to open them.
/// Stream outputs get the `--idle-timeout` deadline and listen to `cancel` while they wait for the consumer.
pub(crate) fn open_outputs(config: &Config, cancel: &Cancel) -> Result<Outputs> {
    let hash = config.stream_sha1;
    match &config.output {
        Output::Directory(dir) => Ok((vec![Box::new(DirectorySink::create(dir, config.fadvise)?)], None)),
        Output::Streams { endpoint, .. } => {
            let opened = endpoint.open(End::Write, config.idle_timeout, cancel)?;
            let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(opened.streams.len());
            for stream in opened.streams {
                // A larger pipe buffer; failing (STDOUT is not a pipe) is harmless.
                raise_pipe_buffer(config, stream.pipe.get_ref(), &stream.name);
                sinks.push(Box::new(StreamSink::new(stream.name, stream.pipe, hash)));
            }
            Ok((sinks, opened.fifos))
        }
    }
}

fn raise_pipe_buffer(config: &Config, file: &std::fs::File, name: &str) {
    if config.pipe_buffer_size > 0 {
        match fifo::set_pipe_size(file, config.pipe_buffer_size) {
            Ok(granted) => log::debug!("{name}: pipe buffer {granted} bytes"),
            Err(e) => log::debug!("{name}: pipe buffer left as it is ({e})"),
        }
    }
}

/// One writer thread: writes every item of its stream, then finishes the sink. On failure (its own, or any other
/// part of the run's) the stream is ended with a broken chunk; a sink that is dropped unfinished, in a panic
/// too, does the same.
pub(crate) fn write_stream(
    index: usize,
    mut sink: Box<dyn Sink>,
    receiver: Receiver<StreamItem>,
    cancel: &Cancel,
) -> Result<SinkReport> {
    let name = sink.name();
    let mut drain = || -> Result<()> {
        loop {
            let item = match receiver.try_recv() {
                Ok(item) => item,
                Err(_) => {
                    // Nothing queued: push out what is buffered before waiting.
                    sink.flush()?;
                    match recv(&receiver, cancel)? {
                        Some(item) => item,
                        None => return Ok(()),
                    }
                }
            };
            sink.write(item)?;
        }
    };
    if let Err(e) = drain() {
        // This stream, or another part of the run, failed: end the stream with a broken chunk so that no reader
        // (ours, mbstream, xbstream) mistakes what was written so far for a complete stream.
        sink.poison();
        return Err(e.context(format!("stream {index} ({name})")));
    }
    sink.finish().with_context(|| format!("stream {index} ({name})"))
}

/// A plain copy (`--target-dir`) gets the source's directories as they were: the empty ones made, then every
/// one's permission bits and mtime set (after all are made: making one changes its parent's mtime).
pub(crate) fn copy_directories(root: &std::path::Path, directories: &[DirectoryRecord]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let paths = directories
        .iter()
        .map(|directory| Ok(root.join(proto::safe_relative_path(&directory.path.0)?)))
        .collect::<Result<Vec<_>>>()?;
    for path in &paths {
        std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    // Mode 0: it could not be read (it vanished during the walk); left as made.
    for (directory, path) in directories.iter().zip(&paths).filter(|(directory, _)| directory.mode != 0) {
        let mode = std::fs::Permissions::from_mode(directory.mode & 0o777);
        std::fs::set_permissions(path, mode).with_context(|| format!("cannot set the mode of {}", path.display()))?;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(directory.mtime.max(0) as u64);
        std::fs::File::open(path)
            .and_then(|dir| dir.set_modified(mtime))
            .with_context(|| format!("cannot set the mtime of {}", path.display()))?;
    }
    Ok(())
}
