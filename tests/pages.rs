//! `producer --validate-pages` on real tablespaces made by a private MariaDB server (every format it writes), on
//! deliberately corrupted copies, and on a page that is fixed while the producer re-reads it. Every verdict is
//! compared with the real `innochecksum`'s.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::support::*;

/// The tablespaces of the datadir the tests look at: (name, path).
fn tablespaces() -> Vec<(&'static str, PathBuf)> {
    let data = mariadb_datadir();
    vec![
        ("full_crc32", data.join("pages/full.ibd")),
        ("full_crc32 page_compressed", data.join("pages/pagecomp.ibd")),
        ("classic crc32", data.join("pages/classic.ibd")),
        ("classic ROW_FORMAT=COMPRESSED", data.join("pages/zip.ibd")),
        ("system tablespace", data.join("ibdata1")),
    ]
}

/// Whether the real innochecksum finds `file` intact. It does not skip the system tablespace's doublewrite
/// buffer (pages 64-191, which hold copies of other pages), as a backup must: there it checks the pages around it.
fn innochecksum_ok(file: &Path) -> bool {
    let ranges: Vec<Vec<String>> = if file.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ibdata")) {
        vec![vec!["-s".into(), "0".into(), "-e".into(), "63".into()], vec!["-s".into(), "192".into()]]
    } else {
        vec![vec![]]
    };
    ranges.iter().all(|range| {
        spawn(Command::new(tool("innochecksum")).args(range).arg(file).stdout(Stdio::piped()).stderr(Stdio::piped()))
            .wait_output(LONG)
            .status
            .success()
    })
}

/// `producer --validate-pages` of `src` into a directory copy; returns (success, stderr, stats JSON).
fn validate(src: &Path, extra: &[&str]) -> (bool, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let output = spawn(
        producer_to_dir(src, &dir.path().join("out"))
            .args(["--validate-pages", "--stats-json"])
            .arg(&stats)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    let stats = if output.status.success() { read_stats(&stats) } else { serde_json::Value::Null };
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned(), stats)
}

/// A source directory holding a copy of `file` with byte 100 of page 3 flipped (inside even the smallest
/// page_compressed page), and the page size it used.
fn corrupted_copy(file: &Path, page_size: usize, into: &Path) -> PathBuf {
    fs::create_dir_all(into).unwrap();
    let copy = into.join(file.file_name().unwrap());
    let mut bytes = fs::read(file).unwrap();
    bytes[3 * page_size + 100] ^= 0x40;
    fs::write(&copy, bytes).unwrap();
    copy
}

fn physical_page_size(name: &str) -> usize {
    if name.contains("ROW_FORMAT=COMPRESSED") {
        8192
    } else {
        16384
    }
}

#[test]
fn real_tablespaces_of_every_format_pass_as_innochecksum_says() {
    for (name, file) in tablespaces() {
        assert!(innochecksum_ok(&file), "innochecksum rejects the server's own {name} tablespace {}", file.display());
    }
    let (ok, stderr, stats) = validate(mariadb_datadir(), &[]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("pages not validated"), "a tablespace went unchecked: {stderr}");
    let checked = stats["pages"]["checked"].as_u64().unwrap();
    let pages: u64 = tablespaces().iter().map(|(_, f)| fs::metadata(f).unwrap().len() / 16384).sum();
    assert!(checked >= pages, "only {checked} pages checked, the five tablespaces alone hold ~{pages}");
    assert_eq!(stats["pages"]["rereads"], 0, "{stats}");
    // Every page of these formats is one the checks can verify: none passed unchecked.
    assert_eq!(stats["pages"]["unverifiable"], 0, "{stats}");
}

#[test]
fn a_flipped_bit_fails_the_backup_naming_file_and_page_for_every_format_as_innochecksum_does() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, file)) in tablespaces().into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        let copy = corrupted_copy(&file, physical_page_size(name), &src);
        assert!(!innochecksum_ok(&copy), "innochecksum accepts the damaged {name} copy: the test corrupts nothing");
        let (ok, stderr, _) = validate(&src, &[]);
        assert!(!ok, "the damaged {name} tablespace was backed up: {stderr}");
        let file_name = copy.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            stderr.contains(&format!("{file_name}: page 3 is corrupt")) && stderr.contains("after 10 re-reads"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("re-reading (10 of 10)"), "{name}: not re-read 10 times: {stderr}");
    }
}

#[test]
fn log_page_corruption_records_the_pages_in_the_manifest_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let (_, file) = &tablespaces()[2];
    corrupted_copy(file, 16384, &src);
    fs::write(src.join("other.frm"), b"frm").unwrap();
    let out = dir.path().join("out");
    let output =
        spawn(producer_to_dir(&src, &out).args(["--validate-pages", "--log-page-corruption"]).stderr(Stdio::piped()))
            .wait_output(LONG);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("1 CORRUPT (recorded in the manifest)"), "{stderr}");
    let manifest = read_manifest(&out);
    let record = manifest.files.iter().find(|r| r.path.0 == b"classic.ibd").expect("classic.ibd in the manifest");
    assert_eq!(record.corrupt_pages, vec![3]);
    let other = manifest.files.iter().find(|r| r.path.0 == b"other.frm").unwrap();
    assert!(other.corrupt_pages.is_empty());
    // The copy is faithful: the bad page as it was at the source.
    assert!(same_contents(&src.join("classic.ibd"), &out.join("classic.ibd")));
    // The consumer says so whenever it checks the tree.
    let verify = spawn(consumer_command().arg("verify").arg(&out).stderr(Stdio::piped())).wait_output(LONG);
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{stderr}");
    assert!(stderr.contains("classic.ibd: 1 page(s) were corrupt at the source"), "{stderr}");
}

#[test]
fn a_page_fixed_while_it_is_re_read_is_copied_as_re_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let (_, file) = &tablespaces()[0];
    let copy = corrupted_copy(file, 16384, &src);
    let good = fs::read(file).unwrap();
    let out = dir.path().join("out");
    let mut child = producer_to_dir(&src, &out)
        .args(["--validate-pages", "--stats-json"])
        .arg(dir.path().join("stats.json"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // The server "finishes writing" the page once the producer has seen it torn: the first warning.
    let watcher = spawn_named("stderr watcher", move || {
        let mut lines = Vec::new();
        let mut fixed = false;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if !fixed && line.contains("re-reading (1 of 10)") {
                // Page 3 rewritten in place, as the server writes a page: no truncation, so readers of the rest
                // of the file never see it shorter.
                let page = 3 * 16384..4 * 16384;
                let file = fs::OpenOptions::new().write(true).open(&copy).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&file, &good[page.clone()], page.start as u64).unwrap();
                fixed = true;
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let status = match child.wait_timeout(LONG).unwrap() {
        Some(status) => status,
        None => {
            let _ = child.kill();
            panic!("the producer did not finish");
        }
    };
    let stderr = join_within(watcher, Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("intact on re-read"), "{stderr}");
    assert!(same_contents(file, &out.join(file.file_name().unwrap())), "the copy is not the re-read page");
    let stats = read_stats(&dir.path().join("stats.json"));
    assert_eq!(stats["pages"]["recovered"], 1, "{stats}");
    assert!(stats["pages"]["rereads"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn validate_pages_refuses_a_chunk_size_that_would_split_pages() {
    let dir = tempfile::tempdir().unwrap();
    let output = spawn(
        producer_to_dir(dir.path(), &dir.path().join("out"))
            .args(["--validate-pages", "--read-buffer-size", "100K"])
            .stderr(Stdio::piped()),
    )
    .wait_output(SHORT);
    assert!(!output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("multiple of 64K"));
}

#[test]
fn a_file_named_like_a_tablespace_that_is_not_one_is_copied_unchecked_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // Flags 0xFFFFFFFF give no page size; 10 bytes is not even a header.
    write_tree(&src, &[("junk.ibd", vec![0xFF; 65536]), ("tiny.ibd", b"0123456789".to_vec())]);
    let (ok, stderr, stats) = validate(&src, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("junk.ibd: pages not validated: not an InnoDB tablespace"), "{stderr}");
    assert!(
        stderr.contains("tiny.ibd: pages not validated") && stderr.contains("shorter than a tablespace header"),
        "{stderr}"
    );
    assert_eq!(stats["pages"]["checked"], 0, "{stats}");
}
