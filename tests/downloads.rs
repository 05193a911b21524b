//! How `get` downloads a stored backup (issue #23): a pack larger than `--range-size` comes as several ranges at
//! once, put back together and proven; a transfer that breaks mid-pack or mid-range resumes from the byte where it
//! broke (the fault proxy cuts an answer halfway and counts the bytes the server sent); an answer shorter than
//! asked fails the get.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use bytes::Bytes;

use crate::support::*;

/// An S3 server (s3s-fs) with a fault proxy in front, and the storage arguments that reach it through the proxy.
fn s3_behind_a_proxy() -> (S3Server, FaultyProxy, Vec<String>) {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let storage = s3_storage_args(&proxy.endpoint(), "backups", server.access_key(), server.secret_key());
    (server, proxy, storage)
}

/// Stores backup `name` of a tree with one file of `size` bytes (and a tiny one), in packs of 8 MiB: one pack;
/// returns the tree.
fn put_one_big_file(storage: &[String], work: &Path, name: &str, size: usize) -> PathBuf {
    let src = work.join(format!("src-{name}"));
    write_tree(&src, &[("ibdata1", pseudo_random_bytes(size, 81)), ("f", b"f".to_vec())]);
    let stream = work.join(format!("{name}.xbs"));
    fs::write(&stream, produce(&src, &[])).unwrap();
    assert_success(&run_consumer(&["put", name, "--object-size", "8M"], storage, Some(&stream)), "put");
    src
}

/// The bytes of backup `name`'s packs, as the store lists them.
fn stored_pack_bytes(storage: &[String], name: &str) -> u64 {
    open_store(storage).list(name).unwrap().iter().filter(|o| o.key.ends_with(".xbs")).map(|o| o.size).sum()
}

/// Stores backup `name` of a 4 MiB file (one pack), then gets it with one answer cut as `how` says: the get
/// succeeds, the tree is right, one answer was cut. Returns the bytes of response bodies the get took (the small
/// index's included) and of the packs stored.
fn get_through_one_cut(proxy: &FaultyProxy, storage: &[String], name: &str, range_size: &str, how: Cut) -> (u64, u64) {
    let work = tempfile::tempdir().unwrap();
    let src = put_one_big_file(storage, work.path(), name, 4 << 20);
    let before = (proxy.response_body_bytes(), proxy.cuts());
    proxy.cut_next_get_responses(1, how);
    let out = work.path().join("out");
    assert_success(&get(storage, name, range_size, &out), &format!("get through a {how:?} answer"));
    assert_same_tree(&src, &out);
    assert_eq!(proxy.cuts(), before.1 + 1, "an answer was cut");
    (proxy.response_body_bytes() - before.0, stored_pack_bytes(storage, name))
}

/// `consumer get NAME --range-size RANGE_SIZE -C OUT`.
fn get(storage: &[String], name: &str, range_size: &str, out: &Path) -> Output {
    run_consumer(&["get", name, "--range-size", range_size, "-C", out.to_str().unwrap()], storage, None)
}

/// A download that breaks mid-pack (the proxy closes the connection halfway through the body) resumes from the
/// byte where it stopped: the get succeeds and the tree is right, and the bytes the server sent exceed what is
/// stored by about the cut half, not by the whole pack again.
#[test]
fn a_download_cut_mid_pack_resumes_where_it_broke() {
    let (_server, proxy, storage) = s3_behind_a_proxy();
    // One request for the whole pack (no ranges), so that a restart from zero would resend half of it.
    let (sent, stored) = get_through_one_cut(&proxy, &storage, "big", "16M", Cut::Close);
    assert!(stored > 4 << 20, "{stored}");
    // Resumed: the pack's two halves and the small index. Restarted from zero it would be the cut half more.
    assert!(sent < stored + stored / 4, "{sent} bytes sent for {stored} stored: restarted from zero?");
    assert!(sent >= stored, "{sent} < {stored}");
}

/// A pack larger than `--range-size` is read as several ranges (seen by a proxy as GETs with a `Range` header that
/// tile the pack), put back together and proven: the tree comes back whole, and a byte changed behind the store's
/// back in a middle range fails the get, naming the pack.
#[test]
fn a_pack_larger_than_the_range_size_is_read_in_ranges_and_proven() {
    let (_server, proxy, storage) = s3_behind_a_proxy();
    let work = tempfile::tempdir().unwrap();
    let src = put_one_big_file(&storage, work.path(), "ranged", 3 << 20);
    let packs = pack_keys(&storage, "ranged");
    assert_eq!(packs.len(), 1, "{packs:?}");

    let out = work.path().join("out");
    let got = get(&storage, "ranged", "512K", &out);
    assert_success(&got, "get in ranges");
    assert_same_tree(&src, &out);
    let ranges: Vec<String> = proxy
        .requests_with_header("range")
        .into_iter()
        .filter(|(line, _)| line.starts_with("GET ") && line.contains(".xbs"))
        .filter_map(|(_, range)| range)
        .collect();
    // A little over 3 MiB in ranges of at most 512 KiB: 7 of them, each asked once.
    assert_eq!(ranges.len(), 7, "{ranges:?}");
    assert!(ranges.iter().any(|r| r.starts_with("bytes=0-")), "{ranges:?}");

    // The same pack, one byte changed in its middle (a server-side change the sizes do not show): the CRC-32 of
    // the ranges put together no longer matches the index.
    let store = open_store(&storage);
    let mut pack = store::get_small(store.as_ref(), &packs[0], 16 << 20).unwrap();
    let middle = pack.len() / 2;
    pack[middle] ^= 0x20;
    store.put(&packs[0], Bytes::from(pack)).unwrap();
    let got = get(&storage, "ranged", "512K", &work.path().join("out2"));
    assert!(!got.status.success(), "a changed pack must fail the get");
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(stderr.contains(&packs[0]) && stderr.contains("CRC-32"), "{stderr}");
}

/// A range broken mid-body (the pack read in ranges of 1 MiB; the proxy closes the connection halfway through the
/// first big answer) resumes from the byte where it stopped: the get succeeds, the tree is right, the one extra
/// request asks for the rest of the cut range from inside it (a restart would ask for the same start again), and
/// the server sends about what is stored, not the cut range's first half again (512 KiB).
#[test]
fn a_range_cut_mid_body_resumes_where_it_broke() {
    let (_server, proxy, storage) = s3_behind_a_proxy();
    let (sent, stored) = get_through_one_cut(&proxy, &storage, "cut", "1M", Cut::Close);

    // Ranges of at most 1 MiB tile the pack; one more resumes one of them from inside it, to its end; no start is
    // asked twice.
    let ranges: Vec<(u64, u64)> = proxy
        .requests_with_header("range")
        .iter()
        .filter(|(line, _)| line.starts_with("GET ") && line.contains("cut/") && line.contains(".xbs"))
        .filter_map(|(_, range)| range.as_deref().and_then(byte_range))
        .collect();
    assert_eq!(ranges.len() as u64, stored.div_ceil(1 << 20) + 1, "{ranges:?}");
    let mut starts: Vec<u64> = ranges.iter().map(|(start, _)| *start).collect();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(starts.len(), ranges.len(), "a range was asked again from its start: {ranges:?}");
    let resumed = ranges.iter().filter(|(start, end)| {
        ranges.iter().any(|(other_start, other_end)| other_start < start && start <= other_end && end == other_end)
    });
    assert_eq!(resumed.count(), 1, "no range resumed from inside the cut one: {ranges:?}");
    assert!(sent >= stored, "{sent} < {stored}");
    assert!(sent < stored + (256 << 10), "{sent} bytes sent for {stored} stored: the cut range restarted from zero?");
}

/// A range reset mid-body (the connection reset after half the answer, so the client may lose some of what it
/// had received) still completes: the get resumes from what it kept, and the tree is proven.
#[test]
fn a_range_reset_mid_body_still_completes() {
    let (_server, proxy, storage) = s3_behind_a_proxy();
    get_through_one_cut(&proxy, &storage, "reset", "1M", Cut::Reset);
}

/// A range answered whole but shorter than asked (the server's `Content-Length` says half, and half comes: nothing
/// at the HTTP level shows it) fails the get, naming the pack, and nothing in OUT looks complete; with the whole
/// pack in one request the same holds.
#[test]
fn an_answer_shorter_than_asked_fails_the_get_naming_the_pack() {
    let (_server, proxy, storage) = s3_behind_a_proxy();
    let work = tempfile::tempdir().unwrap();
    put_one_big_file(&storage, work.path(), "short", 4 << 20);
    let packs = pack_keys(&storage, "short");
    for range_size in ["1M", "16M"] {
        proxy.cut_next_get_responses(1, Cut::Short);
        let out = work.path().join(format!("out-{range_size}"));
        let got = get(&storage, "short", range_size, &out);
        let stderr = assert_failure(&got, "a get whose answer came short");
        assert_eq!(proxy.cuts(), if range_size == "1M" { 1 } else { 2 }, "{range_size}: an answer was shortened");
        // A range: the store's check of what came against what was asked; the whole pack: its size in the index.
        let says = if range_size == "1M" { "it is shorter than recorded" } else { "the index says" };
        assert!(stderr.contains(&packs[0]) && stderr.contains(says), "{range_size}: names the pack: {stderr}");
        assert_nothing_complete(&out, "a get whose answer came short");
    }
}

/// The first and last byte of a `Range: bytes=FIRST-LAST` header.
fn byte_range(header: &str) -> Option<(u64, u64)> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// A `--range-size` that cannot be one (zero, not a size) is refused before a request, saying which option.
#[test]
fn a_range_size_that_is_not_one_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let storage = vec!["--storage".to_string(), format!("file://{}", work.path().join("store").display())];
    for (size, says) in
        [("0", "--range-size must be at least 1 byte"), ("four", "--range-size: \"four\" is not a size")]
    {
        let out = work.path().join("out");
        let got = run_consumer(&["get", "any", "--range-size", size, "-C", out.to_str().unwrap()], &storage, None);
        assert!(matches!(got.status.code(), Some(code) if code != 0), "{size}: {:?}", got.status);
        let stderr = String::from_utf8_lossy(&got.stderr);
        assert!(stderr.contains(says), "{size}: {stderr}");
        assert!(!work.path().join("store").exists() && !out.exists(), "{size}: nothing was touched");
    }
}
