//! The scanner stage: the source walked a second time, each file turned into read jobs (chunks, or a place in a
//! batch of small files), and, with file binding, placed on a stream so that every stream alone extracts with
//! `mbstream -x`.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Result;
use crossbeam_channel::Sender;
use proto::Digest;
use runtime::cancel::{send, Cancel};

use crate::cli::Binding;
use crate::config::Config;
use crate::file::FileState;
use crate::router::Router;
use crate::scan;
use crate::work::{Job, BATCH_FILES_MAX, BATCH_FILE_MAX};

/// Small files the scanner is gathering into one [`Job::Batch`].
#[derive(Default)]
struct Batch {
    files: Vec<Arc<FileState>>,
    /// Buffer bytes the files need: each its size plus a probe byte.
    bytes: usize,
    /// With file binding, the stream its files go to (set by the first one).
    stream: Option<usize>,
}

/// With file binding, the bytes given to each stream so far: a file goes to the least loaded stream it may go to,
/// so one big file (an `ibdata1`) does not leave its stream behind the others.
struct StreamLoads(Vec<u64>);

impl StreamLoads {
    fn add(&mut self, stream: usize, bytes: u64) {
        self.0[stream] += bytes;
    }
}

/// With `--fifo-binding file`, the streams a file may go to so that every stream alone extracts with `mbstream
/// -x`, which creates only a file's immediate parent directory, and only if that one's parent exists: those on
/// which its directory exists already (a file of it went there earlier in scan order, and files first appear in
/// scan order), or its directory's parent does. The top always exists, so files at the top and directly in a
/// top-level directory may go anywhere (a whole MySQL datadir: nothing there loses parallelism); deeper, a
/// directory spreads over as many streams as its parent has reached. Kept for the directories on the walk's
/// current path only (a directory's files all come before its subdirectories').
struct DirectoryPlaces {
    /// The current path's directories, top-down: name, and on which streams each exists.
    path: Vec<(Vec<u8>, Vec<bool>)>,
    streams: usize,
}

impl DirectoryPlaces {
    fn new(streams: usize) -> DirectoryPlaces {
        DirectoryPlaces { path: Vec::new(), streams }
    }

    /// Makes the current path that of the directory of `wire`; returns its depth.
    fn enter(&mut self, wire: &[u8]) -> usize {
        let dir = wire.iter().rposition(|&b| b == b'/').map_or(&[][..], |slash| &wire[..slash]);
        let parts: Vec<&[u8]> = if dir.is_empty() { Vec::new() } else { dir.split(|&b| b == b'/').collect() };
        let common = self.path.iter().zip(&parts).take_while(|((name, _), part)| name.as_slice() == **part).count();
        self.path.truncate(common);
        for part in &parts[common..] {
            self.path.push((part.to_vec(), vec![false; self.streams]));
        }
        parts.len()
    }

    /// Whether the file at `wire` may go to `stream`.
    fn allows(&mut self, wire: &[u8], stream: usize) -> bool {
        let depth = self.enter(wire);
        self.allowed(depth, stream)
    }

    /// Whether a file of the current path's directory (at `depth`) may go to `stream`.
    fn allowed(&self, depth: usize, stream: usize) -> bool {
        if depth < 2 {
            return true;
        }
        let (own, parent) = (&self.path[depth - 1].1, &self.path[depth - 2].1);
        // Where the parent reaches no stream (it has no file of its own, and no placeholder), no choice helps
        // `mbstream`: any stream will do.
        own[stream] || parent[stream] || !parent.iter().any(|&exists| exists)
    }

    /// The least loaded stream the file at `wire` may go to.
    fn choose(&mut self, wire: &[u8], loads: &StreamLoads) -> usize {
        let depth = self.enter(wire);
        (0..self.streams)
            .filter(|&stream| self.allowed(depth, stream))
            .min_by_key(|&stream| loads.0[stream])
            .unwrap_or(0)
    }

    /// The file at `wire` went to `stream`: its directory exists there now.
    fn placed(&mut self, wire: &[u8], stream: usize) {
        if self.enter(wire) > 0 {
            if let Some((_, streams)) = self.path.last_mut() {
                streams[stream] = true;
            }
        }
    }
}

impl Batch {
    /// Whether a file of `size` bytes still fits in a buffer of `capacity` with the files gathered so far.
    fn has_room(&self, size: u64, capacity: usize) -> bool {
        // Each file takes its size plus a probe byte.
        self.files.len() < BATCH_FILES_MAX && self.bytes + (size as usize) < capacity
    }

    fn push(&mut self, file: Arc<FileState>) {
        self.bytes += file.scanned.size as usize + 1;
        self.files.push(file);
    }

    /// Hands the gathered files to the read threads as one job (nothing if there are none).
    fn send(&mut self, jobs: &Sender<Job>, cancel: &Cancel) -> Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        self.stream = None;
        send(jobs, Job::Batch(std::mem::take(&mut self.files)), cancel)?;
        Ok(())
    }
}
/// What the scanner stage needs to know of the run besides the config.
pub(crate) struct ScanPlan {
    /// How many streams files are placed on.
    pub(crate) streams: usize,
    /// File or chunk binding (file binding on one stream or a directory).
    pub(crate) binding: Binding,
    /// `.zst` when compressing, `.age` when encrypting (`.zst.age` both): the suffix every file's wire name gets.
    pub(crate) suffix: &'static str,
    /// Entries changed after this instant (the pre-scan's start, less a margin) are reported as changed.
    pub(crate) changed_since: SystemTime,
}

/// The scanner thread: walks the source, hands each file to the router ([`Router::started`]) and its jobs to the
/// read threads, in scan order. `jobs` is dropped when the walk ends, on success, error or panic alike, so the
/// read threads see the end of the jobs.
pub(crate) fn scan_files(
    config: &Config,
    router: &Router,
    jobs: Sender<Job>,
    plan: &ScanPlan,
    cancel: &Cancel,
) -> Result<()> {
    let ScanPlan { streams, binding, suffix, changed_since } = *plan;
    let mut file_number = 0u64;
    // Small files gather here until the next one would not fit in a buffer.
    let mut batch = Batch::default();
    let mut places = DirectoryPlaces::new(streams);
    let mut loads = StreamLoads(vec![0; streams]);
    let pass = scan::Pass::Stream { strict: config.strict, changed_since };
    scan::walk(&config.source, pass, suffix, config.dir_placeholders, |found| {
        let scanned = match found {
            scan::Found::File(scanned) => scanned,
            scan::Found::Directory(directory) => {
                router.directory(directory);
                return Ok(());
            }
        };
        // Batched files travel untransformed: compressed and encrypted files go as chunks.
        let small = config.compress_level.is_none()
            && config.encryption.is_none()
            && scanned.size < BATCH_FILE_MAX.min(config.chunk_size as u64)
            && !crate::file::validates_pages(&scanned, config.validate_pages.is_some());
        // A batch holds consecutive files: it goes before a file that is not batched, so jobs stay in scan order
        // (see the router's `FirstAppearance`), and, with file binding, before a file that may not go to the
        // batch's stream.
        let elsewhere = binding == Binding::File
            && streams > 1
            && batch.stream.is_some_and(|stream| !places.allows(&scanned.wire, stream));
        if !small || !batch.has_room(scanned.size, config.chunk_size.min(crate::work::BATCH_BYTES_MAX)) || elsewhere {
            batch.send(&jobs, cancel)?;
        }
        // File binding: the least loaded stream the file may go to (`DirectoryPlaces`); a batch goes where its
        // first file goes.
        let stream = match binding {
            // One stream: nothing to choose.
            Binding::File if streams == 1 => Some(0),
            Binding::File if small => Some(*batch.stream.get_or_insert_with(|| places.choose(&scanned.wire, &loads))),
            Binding::File => Some(places.choose(&scanned.wire, &loads)),
            Binding::Chunk => None,
        };
        if let Some(stream) = stream.filter(|_| streams > 1) {
            loads.add(stream, scanned.size);
            places.placed(&scanned.wire, stream);
        }
        let state = FileState::new(
            file_number,
            scanned,
            config.chunk_size as u64,
            stream,
            config.strict,
            config.digest == Digest::Sha1,
            crate::file::Transform { compress: config.compress_level.is_some(), encrypt: config.encryption.is_some() },
            config.validate_pages.is_some(),
        );
        file_number += 1;
        router.started(&state);
        if small {
            batch.push(state);
            return Ok(());
        }
        for job in state.chunk_jobs(config.chunk_size as u64) {
            send(&jobs, Job::Chunk(job), cancel)?;
        }
        Ok(())
    })?;
    batch.send(&jobs, cancel)
}
