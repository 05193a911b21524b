//! Directories are part of the backup: empty ones and directory modes and mtimes come back through `consumer
//! extract`, and with `--dir-placeholders` the real `mbstream -x` restores every file and every directory too.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// The tree of every test here: directories holding only directories (`a`, `a/b`, `deep/x`), an empty one, files at
/// every level of `d1`, and directory modes 0700/0750/0755 with old mtimes.
fn tree() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    write_tree(
        root,
        &[
            ("top", b"top".to_vec()),
            ("a/b/c/f", b"under two file-less directories".to_vec()),
            ("deep/f", b"d".to_vec()),
            ("deep/x/y/f", b"y".to_vec()),
            ("d1/f", pseudo_random_bytes(300 << 10, 1)),
            ("d1/d2/f", pseudo_random_bytes(5000, 2)),
            ("d1/d2/d3/f", pseudo_random_bytes(70 << 10, 3)),
        ],
    );
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("deep/x/also-empty")).unwrap();
    for (dir, mode) in [("a", 0o700), ("empty", 0o750), ("d1", 0o755), ("d1/d2", 0o700), ("deep/x/also-empty", 0o750)] {
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode)).unwrap();
    }
    // mtimes last (creating entries changes them), deepest first.
    for (n, dir) in ["deep/x/also-empty", "d1/d2/d3", "d1/d2", "empty", "a/b", "a"].iter().enumerate() {
        let status = Command::new("touch")
            .args(["-d", &format!("2020-01-0{} 10:00:00 UTC", n + 1)])
            .arg(root.join(dir))
            .status()
            .unwrap();
        assert!(status.success());
    }
    src
}

/// Every directory under `root` (relative, sorted) with its permission bits and mtime.
fn directories(root: &Path) -> Vec<(String, u32, i64)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                let meta = entry.metadata().unwrap();
                let relative = entry.path().strip_prefix(root).unwrap().display().to_string();
                found.push((relative, meta.mode() & 0o7777, meta.mtime()));
                stack.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Without placeholders: the producer warns (count and an example), and `consumer extract` restores the whole
/// tree: files, empty directories, directory modes and mtimes; `consumer verify` checks the directories too.
#[test]
fn extract_restores_empty_directories_and_directory_modes_and_mtimes() {
    let src = tree();
    let produced = produce_output(src.path(), &[]);
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(
        stderr.contains("5 of 11 directories hold no file of their own (e.g. a/b)")
            && stderr.contains("--dir-placeholders"),
        "{stderr}"
    );
    let manifest: proto::Manifest = {
        let out = tempfile::tempdir().unwrap();
        let extracted = consume(&["extract", "-C", out.path().to_str().unwrap()], &produced.stdout);
        assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
        assert_same_tree(src.path(), out.path());
        assert_eq!(directories(out.path()), directories(src.path()), "every directory, its mode and mtime");
        run_ok(consumer_command().arg("verify").arg(out.path()), SHORT);
        fs::remove_dir(out.path().join("empty")).unwrap();
        let verify =
            spawn(consumer_command().arg("verify").arg(out.path()).stdout(Stdio::piped()).stderr(Stdio::piped()))
                .wait_output(SHORT);
        assert_eq!(verify.status.code(), Some(1), "a missing empty directory is found by verify");
        read_manifest(out.path())
    };
    assert_eq!(manifest.directories.len(), 11);
    assert!(manifest.directories.iter().all(|d| !d.placeholder));

    // A plain copy (--target-dir) gets them too.
    let copy = tempfile::tempdir().unwrap();
    let target = copy.path().join("copy");
    run_ok(&mut producer_to_dir(src.path(), &target), SHORT);
    assert_same_tree(src.path(), &target);
    assert_eq!(directories(&target), directories(src.path()), "the copy's directories, modes and mtimes");
}

/// With `--dir-placeholders`: the real `mbstream -x` restores every file and every directory (an empty one holds a
/// placeholder) and fails nowhere; `consumer extract` of the same stream restores the tree without placeholders.
#[test]
fn with_placeholders_mbstream_restores_every_file_and_directory() {
    let src = tree();
    let produced = produce_output(src.path(), &["--dir-placeholders"]);
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(!stderr.contains("hold no file of their own"), "{stderr}");
    assert!(stderr.contains("(and 5 directory placeholders)"), "{stderr}");

    let work = tempfile::tempdir().unwrap();
    let mb = work.path().join("mb");
    mbstream_extract(&produced.stdout, &mb);
    let placeholder = proto::PLACEHOLDER_NAME;
    let placeholders: Vec<_> =
        list_tree(&mb).into_iter().filter(|p| p.file_name().is_some_and(|n| n == placeholder)).collect();
    assert_eq!(placeholders.len(), 5, "{placeholders:?}");
    for path in &placeholders {
        fs::remove_file(mb.join(path)).unwrap();
    }
    assert_same_tree(src.path(), &mb);
    let names = |dirs: Vec<(String, u32, i64)>| dirs.into_iter().map(|(name, ..)| name).collect::<Vec<_>>();
    assert_eq!(names(directories(&mb)), names(directories(src.path())), "every directory, the empty ones too");

    let ours = work.path().join("ours");
    let extracted = consume(&["extract", "-C", ours.to_str().unwrap()], &produced.stdout);
    let stderr = String::from_utf8_lossy(&extracted.stderr);
    assert!(extracted.status.success(), "{stderr}");
    assert!(stderr.contains("extracted 7 files"), "placeholders are not counted: {stderr}");
    assert_same_tree(src.path(), &ours);
    assert_eq!(directories(&ours), directories(src.path()), "no placeholder left, modes and mtimes restored");
}

/// `--fifo-binding file`: every pipe alone extracts with the real `mbstream -x`, which fails nowhere, and the
/// pipes together hold every file — for a deep tree whose every directory holds a file, and (with
/// `--dir-placeholders`) for the tree with file-less and empty directories. Files directly in a top-level
/// directory still spread over every pipe (a datadir's tables keep their parallelism).
#[test]
fn with_file_binding_every_pipe_alone_extracts_with_mbstream() {
    let deep = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for top in 0..3 {
        for table in 0..8 {
            files.push((format!("db{top}/t{table}.ibd"), pseudo_random_bytes((100 << 10) + table * 100, table as u64)));
        }
        let mut dir = format!("db{top}");
        for level in 0..5 {
            dir = format!("{dir}/sub{level}");
            files.push((format!("{dir}/f{level}"), pseudo_random_bytes(200 << (level * 2), level as u64)));
        }
    }
    write_tree(deep.path(), &files);
    let placeholders = tree();
    for (src, extra) in [(deep.path(), &[][..]), (placeholders.path(), &["--dir-placeholders"][..])] {
        let mut args = vec!["--fifo-binding", "file", "--read-buffer-size", "64K"];
        args.extend(extra);
        let pipes = produce_pipes(src, 4, &args);
        let work = tempfile::tempdir().unwrap();
        let all = work.path().join("all");
        let mut spread = Vec::new();
        for (i, bytes) in pipes.iter().enumerate() {
            let out = work.path().join(format!("pipe{i}"));
            mbstream_extract(bytes, &out);
            let restored = read_tree(&out);
            spread.push(
                restored
                    .iter()
                    .filter(|(path, _)| path.starts_with("db0") && path.parent() == Some(Path::new("db0")))
                    .count(),
            );
            for (path, data) in restored {
                if path.file_name().is_some_and(|name| name != proto::PLACEHOLDER_NAME) {
                    write_tree(&all, &[(path.to_str().unwrap(), data)]);
                }
            }
        }
        assert_same_tree(src, &all);
        if src == deep.path() {
            assert!(spread.iter().all(|&n| n >= 1), "db0's tables are on every pipe: {spread:?}");
        }
    }
}

/// Through a store: `put`, then `get -C` (the extract pipeline) restores the directories; `get` to STDOUT keeps
/// the manifest's directory records (the merge rewrites the manifest).
#[test]
fn put_and_get_keep_the_directories() {
    let src = tree();
    let produced = produce_output(src.path(), &["--compress"]);
    let work = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", work.path().join("store").display());
    let stream = work.path().join("stream.xbs");
    fs::write(&stream, &produced.stdout).unwrap();
    let args = ["--storage".to_string(), storage];
    assert_success(&run_consumer(&["put", "dirs"], &args, Some(&stream)), "put");
    let out = work.path().join("out");
    assert_success(&run_consumer(&["get", "dirs", "-C", out.to_str().unwrap(), "--decompress"], &args, None), "get -C");
    assert_same_tree(src.path(), &out);
    assert_eq!(directories(&out), directories(src.path()), "directories, modes and mtimes through the store");
}

/// More directories than the consumer may open descriptors (a datadir of thousands of schemas, under the usual
/// 1,024): extract keeps no descriptor per directory beyond a bounded cache, so 600 directories extract under a
/// hard limit of 256 (it failed with EMFILE when every ended file kept its directory open).
#[test]
fn more_directories_than_open_files_allowed_extract() {
    let src = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..600).map(|i| (format!("db{i:03}/t.frm"), vec![i as u8; 10])).collect();
    write_tree(src.path(), &files);
    fs::create_dir_all(src.path().join("db000/empty")).unwrap();
    let stream = produce_output(src.path(), &[]).stdout;
    let out = tempfile::tempdir().unwrap();
    let output = run_with_stdin(
        Command::new(tool("prlimit"))
            .args(["--nofile=256:256", "--"])
            .arg(CONSUMER)
            .args(["extract", "-C"])
            .arg(out.path()),
        &stream,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_same_tree(src.path(), out.path());
    assert!(out.path().join("db000/empty").is_dir());
}
