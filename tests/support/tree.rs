//! Source trees and restored trees: making them (deterministic contents, no fixtures on disk), reading them back,
//! and comparing them byte for byte; the manifest and `--stats-json` files the binaries leave in them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::process::run_ok;

/// Deterministic pseudo-random bytes (a cheap LCG stream), for file contents.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(&state.to_le_bytes()[..(len - out.len()).min(8)]);
    }
    out
}

/// Writes `files` (relative path, contents) under `root`, creating directories.
pub fn write_tree<P: AsRef<Path>>(root: &Path, files: &[(P, Vec<u8>)]) {
    for (path, data) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
}

/// A fresh temporary directory holding `files` (see [`write_tree`]), removed when dropped: the source of a test.
pub fn temp_tree<P: AsRef<Path>>(files: &[(P, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), files);
    dir
}

/// A small mixed tree: an empty file, a 1-byte file, files around the chunk size, a nested directory.
pub fn sample_files(chunk: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("one", vec![42]),
        ("ibdata1", pseudo_random_bytes(3 * chunk + 17, 1)),
        ("exact", pseudo_random_bytes(chunk, 2)),
        ("less", pseudo_random_bytes(chunk - 1, 3)),
        ("more", pseudo_random_bytes(chunk + 1, 4)),
        ("db/t1.ibd", pseudo_random_bytes(2 * chunk, 5)),
        ("db/t1.frm", b"frm".to_vec()),
    ]
}

/// Every regular file under `root`, as a relative path, sorted.
pub fn list_tree(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Every regular file under `root`, as (relative path, contents), sorted by path.
pub fn read_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    list_tree(root)
        .into_iter()
        .map(|relative| {
            let contents = std::fs::read(root.join(&relative)).unwrap();
            (relative, contents)
        })
        .collect()
}

/// Copies the regular files under `from` into `to` (directories made as needed), e.g. an extracted tree to damage.
pub fn copy_tree(from: &Path, to: &Path) {
    for (relative, contents) in read_tree(from) {
        let path = to.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

/// Whether two files hold the same bytes (compared 1 MiB at a time: the trees of the big tests are hundreds of MB).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    if fb.metadata().unwrap().len() != len {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// Asserts that `out` holds exactly the files of `src` plus the producer's own manifest files and stream markers
/// (which `mbstream -x` extracts too), byte for byte.
pub fn assert_same_tree(src: &Path, out: &Path) {
    let meta = [proto::MANIFEST_NAME, proto::SHA1SUMS_NAME];
    let is_meta =
        |p: &Path| meta.iter().any(|m| p.as_os_str() == *m) || proto::is_marker_name(p.as_os_str().as_encoded_bytes());
    let restored: Vec<_> = list_tree(out).into_iter().filter(|p| !is_meta(p)).collect();
    let original = list_tree(src);
    assert_eq!(restored, original, "the same file names");
    for path in &original {
        assert!(same_contents(&src.join(path), &out.join(path)), "{} differs", path.display());
    }
}

/// A failed extraction (or `get -C`) left nothing that looks complete in `out`: no manifest, no staging directory,
/// no file.
pub fn assert_nothing_complete(out: &Path, context: &str) {
    let left: Vec<PathBuf> = match std::fs::read_dir(out) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(left.is_empty(), "{context}: left behind {left:?}");
}

/// The manifest in an extracted or copied tree.
pub fn read_manifest(dir: &Path) -> proto::Manifest {
    let bytes = std::fs::read(dir.join(proto::MANIFEST_NAME)).expect("the manifest is present");
    proto::Manifest::from_json(&bytes).unwrap()
}

/// Parses a `--stats-json` file.
pub fn read_stats(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// What a memory test expects of its two runs (see [`assert_the_memory_cap_binds`]).
pub struct MemoryCap {
    /// The bytes each run moved (`bytes` in the stats).
    pub bytes: u64,
    /// The buffer size each run used: its name in the stats (`chunk_size`, `buffer_size`) and its value.
    pub buffer: (&'static str, u64),
    /// The buffers of the pool: with the cap, and without it.
    pub buffers: (u64, u64),
    /// Peak RSS under which the capped run stays, and over which the uncapped run goes.
    pub threshold: u64,
}

/// Asserts what the memory tests of both binaries prove with two runs of one workload, `capped` (a small
/// `--memory-limit`) and `uncapped` (a large one), given as their `--stats-json`: both moved the same bytes in
/// the same buffers; the cap held the pool to `expected.buffers.0` buffers, all of them in use at once (the cap was
/// binding), and kept peak RSS under the threshold; without it the pool had `expected.buffers.1` buffers and peak
/// RSS went over the threshold.
pub fn assert_the_memory_cap_binds(capped: &serde_json::Value, uncapped: &serde_json::Value, expected: MemoryCap) {
    let (size_name, size) = expected.buffer;
    for stats in [capped, uncapped] {
        assert_eq!(stats["bytes"].as_u64().unwrap(), expected.bytes, "{stats}");
        assert_eq!(stats[size_name].as_u64().unwrap(), size, "{stats}");
    }
    let rss = |stats: &serde_json::Value| stats["peak_rss_bytes"].as_u64().unwrap();
    let threshold = expected.threshold;
    assert_eq!(capped["buffers"].as_u64().unwrap(), expected.buffers.0, "{capped}");
    assert_eq!(capped["peak_buffers_in_use"], capped["buffers"], "the cap was binding: {capped}");
    assert_eq!(uncapped["buffers"].as_u64().unwrap(), expected.buffers.1, "{uncapped}");
    assert!(rss(capped) > 0 && rss(capped) < threshold, "capped peak RSS {}: {capped}", rss(capped));
    assert!(rss(uncapped) > threshold, "without the cap the same run needs more: {uncapped}");
}

/// Whether an extraction into `out` has staged at least one file (in `OUT/.xbkit-partial-<pid>/`): the event that
/// says a run is under way.
pub fn has_staged_a_file(out: &Path) -> bool {
    std::fs::read_dir(out)
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(|entry| entry.ok())
        .is_some_and(|staging| std::fs::read_dir(staging.path()).is_ok_and(|mut files| files.next().is_some()))
}

/// The datadir a private MariaDB server leaves with tablespaces of every format it writes (made once per test run
/// by `tests/scripts/mariadb-tablespaces.sh`, shared by the tests that need real InnoDB files; a test copies what
/// it changes).
pub fn mariadb_datadir() -> &'static Path {
    static DATADIR: OnceLock<PathBuf> = OnceLock::new();
    DATADIR.get_or_init(|| {
        let work = tempfile::Builder::new().prefix("xbkit-pages-").tempdir().unwrap().keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/mariadb-tablespaces.sh");
        // Installs, starts, fills and stops a server: minutes on a loaded machine, like the other MariaDB scripts.
        run_ok(Command::new("bash").arg(script).arg(&work), std::time::Duration::from_secs(300));
        work.join("data")
    })
}
