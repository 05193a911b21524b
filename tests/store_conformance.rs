//! One conformance suite for the [`store::Store`] trait, run by every backend (in the manner of `object_store`'s
//! own integration suite): [`conformance`] checks each behaviour the trait's documentation promises (store/src/lib.rs),
//! and one test per backend runs it on a fresh store: the directory store (`file://`), the in-memory store, S3
//! (`s3s-fs`), Google Cloud Storage (`fake-gcs-server`) and Azure Blob Storage (Azurite), the servers on 127.0.0.1.
//! The clouds are opened with a prefix inside their bucket, so that the keys they list are shown relative to it.
//!
//! Where a backend is known to deviate from the contract, [`Deviations`] says so and the suite asserts the known
//! behaviour instead, so that a release that changes it is noticed (as `store_safety`'s
//! `create_only_puts_as_each_backend_does_them` does for create-only puts).

use std::collections::BTreeSet;

use bytes::Bytes;
use store::{ObjectInfo, Store, StoreError};

use crate::support::*;

/// What a backend is known to do differently from the trait's contract. The default: nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Deviations {
    /// A create-only put of an existing key overwrites it (`fake-gcs-server` 1.54 ignores `ifGenerationMatch=0`;
    /// see the README's table of create-only puts).
    put_new_overwrites: bool,
    /// A create-only put refuses an existing key, but two at the same moment can both succeed (`s3s-fs` checks,
    /// then writes: the README's table; here most rounds of six at once had two to five winners).
    put_new_not_atomic: bool,
    /// Listings carry no ETags (`s3s-fs` 0.14 leaves them out of ListObjectsV2; AWS S3 lists them).
    lists_no_e_tags: bool,
}

/// The objects the listing checks store: nested levels, a sibling whose name extends another's (`a` and `ab`), an
/// object beside the "directories" (`c/top`), each of a distinct size.
const LISTED: [(&str, usize); 7] =
    [("c/a/1", 1), ("c/a/2", 2), ("c/a/sub/3", 3), ("c/a/sub/deeper/4", 4), ("c/ab/5", 5), ("c/b/6", 6), ("c/top", 7)];

/// Keys with characters beyond letters and digits: those a backup name may hold (`. _ - + = @ :`, which become
/// key prefixes), a space, non-ASCII letters, and `%` with what looks like an escape after it. The clouds store
/// the last two percent-encoded (`object_store`'s `Path::from`), and list them decoded, as they were put.
const ODD_KEYS: [&str; 4] =
    ["odd/a.b_c-d+e=f@g:h/0000000000.xbs", "odd/with space/x", "odd/ünï/cödé", "odd/100%/%C3%BC"];

/// Runs every check on `store`, a fresh (empty, and for a cloud not yet created) store, allowing for `known`.
fn conformance(store: &dyn Store, known: Deviations) {
    let name = store.describe();
    assert!(name.contains("://"), "describe() names the store as a URL: {name}");
    // Creates the bucket (or the root directory); a second call finds it there.
    store.ensure_container().unwrap_or_else(|e| panic!("{name}: ensure_container: {e}"));
    store.ensure_container().unwrap_or_else(|e| panic!("{name}: ensure_container again: {e}"));
    assert_eq!(keys(store, ""), Vec::<String>::new(), "{name}: a new store is empty");

    listing(store);
    round_trip_and_replace(store);
    ranges_and_versions(store, known);
    missing_objects(store);
    empty_and_large_objects(store);
    a_failing_consumer(store);
    create_only_puts(store, known);
    concurrent_create_only_puts(store, known);
    concurrent_puts_of_distinct_keys(store);
    bodies_are_not_kept(store);
    odd_keys(store);
    deletes(store);
}

/// `put` then `get`: the same bytes, in order, and the size; `get_small` takes the same.
fn round_trip_and_replace(store: &dyn Store) {
    let name = store.describe();
    let body = pseudo_random_bytes(100_000, 1);
    store.put("rt/object.bin", Bytes::from(body.clone())).unwrap();
    let (size, got) = get_all(store, "rt/object.bin");
    assert_eq!((size, got.len()), (body.len() as u64, body.len()), "{name}: the size get returns");
    assert!(got == body, "{name}: get returns the bytes put");
    assert_eq!(store::get_small(store, "rt/object.bin", 100_000).unwrap(), body, "{name}: get_small");
    // A put of an existing key replaces it, whole.
    store.put("rt/object.bin", Bytes::from_static(b"replaced")).unwrap();
    assert_eq!(get_all(store, "rt/object.bin"), (8, b"replaced".to_vec()), "{name}: put replaces");
    assert_eq!(key_sizes(store.list("rt").unwrap()), [("rt/object.bin".into(), 8)], "{name}: the new size listed");
}

/// `get_range`: exactly the bytes asked for, in order, with their count (a range inside, one to the end, an empty
/// one); a range past the end is an error saying the object is shorter, and a missing object `NotFound`. Listings
/// give every object an ETag, the same while it is unchanged and another once it is written again, even with
/// other bytes of the same size (what `consumer check` relies on).
fn ranges_and_versions(store: &dyn Store, known: Deviations) {
    let name = store.describe();
    let body = pseudo_random_bytes(300_000, 5);
    store.put("ranges/object", Bytes::from(body.clone())).unwrap();
    for range in [10..5_000u64, 123_456..300_000, 0..300_000, 7..7] {
        let mut got = Vec::new();
        let count = store
            .get_range("ranges/object", range.clone(), &mut |piece| {
                got.extend_from_slice(piece);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: get_range {range:?}: {e}"));
        assert_eq!(count, range.end - range.start, "{name}: the count of {range:?}");
        assert!(got == body[range.start as usize..range.end as usize], "{name}: the bytes of {range:?}");
    }
    let err = store.get_range("ranges/object", 299_000..300_001, &mut |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("shorter than recorded"), "{name}: a range past the end: {err}");
    let err = store.get_range("ranges/never-stored", 0..10, &mut |_| Ok(())).unwrap_err();
    assert!(err.is_not_found(), "{name}: a missing object's range: {err}");

    if known.lists_no_e_tags {
        assert_eq!(store.list("ranges").unwrap()[0].e_tag, None, "{name}: lists ETags now: drop the deviation");
        store.delete("ranges/object").unwrap();
        return;
    }
    let version = || store.list("ranges").unwrap()[0].e_tag.clone().unwrap_or_else(|| panic!("{name}: no ETag"));
    let first = version();
    assert_eq!(version(), first, "{name}: an unchanged object keeps its ETag");
    let mut other = body.clone();
    other[1000] ^= 1;
    store.put("ranges/object", Bytes::from(other)).unwrap();
    assert_ne!(version(), first, "{name}: an object written again gets another ETag");
    store.delete("ranges/object").unwrap();
}

/// A listing's keys and sizes (the ETags aside).
fn key_sizes(listed: Vec<ObjectInfo>) -> Vec<(String, u64)> {
    listed.into_iter().map(|o| (o.key, o.size)).collect()
}

/// A missing object is `NotFound`, naming the key, whether its prefix holds objects or not.
fn missing_objects(store: &dyn Store) {
    let name = store.describe();
    for key in ["rt/never-stored", "no-such-prefix/never-stored"] {
        let err = store.get(key, &mut |_| panic!("no bytes of a missing object")).unwrap_err();
        assert!(err.is_not_found(), "{name}: get {key}: {err}");
        assert!(matches!(&err, StoreError::NotFound { key: k, .. } if k == key), "{name}: names {key}: {err:?}");
        assert!(store::get_small(store, key, 10).unwrap_err().is_not_found(), "{name}: get_small {key}");
    }
}

/// An empty object round-trips and lists with size 0; an 8 MiB one comes back whole (piece by piece, in order).
fn empty_and_large_objects(store: &dyn Store) {
    let name = store.describe();
    store.put("sizes/empty", Bytes::new()).unwrap();
    assert_eq!(get_all(store, "sizes/empty"), (0, Vec::new()), "{name}: an empty object");
    let large = pseudo_random_bytes((8 << 20) + 3, 2);
    store.put("sizes/large", Bytes::from(large.clone())).unwrap();
    let (size, got) = get_all(store, "sizes/large");
    assert_eq!(size, large.len() as u64, "{name}: the large object's size");
    assert!(got == large, "{name}: the large object's bytes, in order");
    assert_eq!(
        key_sizes(store.list("sizes").unwrap()),
        [("sizes/empty".into(), 0), ("sizes/large".into(), large.len() as u64)],
        "{name}"
    );
}

/// The caller's consumer failing (here: an object larger than it takes) is a `Consumer` error naming the key.
fn a_failing_consumer(store: &dyn Store) {
    let name = store.describe();
    let err = store::get_small(store, "sizes/large", 1 << 20).unwrap_err();
    assert!(matches!(&err, StoreError::Consumer { key, .. } if key == "sizes/large"), "{name}: {err:?}");
    assert!(err.to_string().contains("larger than 1048576 bytes"), "{name}: the caller's error: {err}");
}

/// `put_new`: a new key is stored; an existing one (stored by `put_new` or by `put`) is refused with
/// `AlreadyExists` naming it, and keeps its object; once deleted, the key can be created again.
fn create_only_puts(store: &dyn Store, known: Deviations) {
    let name = store.describe();
    store.put_new("new/index.json", Bytes::from_static(b"first")).unwrap();
    assert_eq!(get_all(store, "new/index.json").1, b"first", "{name}: put_new stores a new key");
    store.put("new/plain", Bytes::from_static(b"plain")).unwrap();
    for (key, kept) in [("new/index.json", &b"first"[..]), ("new/plain", b"plain")] {
        let second = store.put_new(key, Bytes::from_static(b"second"));
        let stored = get_all(store, key).1;
        if known.put_new_overwrites {
            // The known deviation: the condition is ignored and the object replaced.
            second.unwrap_or_else(|e| panic!("{name}: put_new {key} was refused after all ({e}): update Deviations"));
            assert_eq!(stored, b"second", "{name}: {key}");
        } else {
            let err = second.expect_err("a create-only put of an existing key");
            assert!(err.is_already_exists(), "{name}: {key}: {err}");
            assert!(matches!(&err, StoreError::AlreadyExists { key: k, .. } if k == key), "{name}: {err:?}");
            assert_eq!(stored, kept, "{name}: {key} keeps its first object");
        }
    }
    store.delete("new/index.json").unwrap();
    store.put_new("new/index.json", Bytes::from_static(b"again")).unwrap();
    assert_eq!(get_all(store, "new/index.json").1, b"again", "{name}: a deleted key can be created again");
}

/// Six threads `put_new` one key at once, in several rounds: on an atomic service exactly one succeeds and the
/// others get `AlreadyExists`; the stored object is the winner's.
fn concurrent_create_only_puts(store: &dyn Store, known: Deviations) {
    let name = store.describe();
    for round in 0..4 {
        let key = format!("race/{round}");
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
            let tries: Vec<_> = (0..6u8)
                .map(|i| {
                    let key = &key;
                    scope.spawn(move || store.put_new(key, Bytes::from(vec![i; 1000])))
                })
                .collect();
            tries.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let winners: Vec<u8> = (0..6).filter(|&i| results[i as usize].is_ok()).collect();
        for (i, result) in results.iter().enumerate() {
            if let Err(e) = result {
                assert!(e.is_already_exists(), "{name}: round {round}, put {i}: {e}");
            }
        }
        let stored = get_all(store, &key).1;
        assert!(
            winners.iter().any(|&i| stored == vec![i; 1000]),
            "{name}: round {round}: the stored object is a winner's ({winners:?})"
        );
        if known.put_new_overwrites || known.put_new_not_atomic {
            // The known deviations: more than one may win (each overwrote the one before).
            assert!(!winners.is_empty(), "{name}: round {round}: one put_new at least succeeds");
        } else {
            assert_eq!(winners.len(), 1, "{name}: round {round}: exactly one put_new succeeds: {results:?}");
        }
    }
}

/// Eight threads `put` four keys each at once (the store is used from many threads): every object is stored.
fn concurrent_puts_of_distinct_keys(store: &dyn Store) {
    let name = store.describe();
    std::thread::scope(|scope| {
        for thread in 0..8 {
            scope.spawn(move || {
                for n in 0..4 {
                    store.put(&format!("many/{thread}/{n}"), Bytes::from(vec![thread as u8; n + 1])).unwrap();
                }
            });
        }
    });
    let listed = store.list("many").unwrap();
    let expected: Vec<(String, u64)> =
        (0..8).flat_map(|thread| (0..4).map(move |n| (format!("many/{thread}/{n}"), n as u64 + 1))).collect();
    assert_eq!(key_sizes(listed), expected, "{name}: every object of every thread");
}

/// `list(prefix)`: every object below `prefix/` (all levels, not a sibling whose name extends it), sorted by key,
/// with its size; nothing for a prefix that holds nothing; everything for `""`. `list_dirs(prefix)`: the names one
/// level below it that hold objects (the trait promises no order: compared sorted).
fn listing(store: &dyn Store) {
    let name = store.describe();
    for (key, size) in LISTED {
        store.put(key, Bytes::from(vec![b'x'; size])).unwrap();
    }
    let under = |prefix: &str| -> Vec<(String, u64)> {
        LISTED
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{prefix}/")))
            .map(|&(key, size)| (key.to_string(), size as u64))
            .collect()
    };
    for prefix in ["c", "c/a", "c/a/sub", "c/a/sub/deeper", "c/ab", "c/b"] {
        assert_eq!(key_sizes(store.list(prefix).unwrap()), under(prefix), "{name}: list({prefix:?})");
    }
    for prefix in ["c/nothing", "nothing-at-all", "c/a/su", "c/a/1", "c/top"] {
        assert_eq!(store.list(prefix).unwrap(), [], "{name}: list({prefix:?}) holds nothing");
    }
    assert_eq!(key_sizes(store.list("").unwrap()), under("c"), "{name}: list(\"\") is every object");

    let dirs = |prefix: &str| -> Vec<String> {
        let mut names = store.list_dirs(prefix).unwrap();
        names.sort();
        names
    };
    assert_eq!(dirs(""), ["c"], "{name}: list_dirs(\"\")");
    assert_eq!(dirs("c"), ["a", "ab", "b"], "{name}: list_dirs(\"c\"): directories, not the object c/top");
    assert_eq!(dirs("c/a"), ["sub"], "{name}: list_dirs(\"c/a\")");
    assert_eq!(dirs("c/a/sub"), ["deeper"], "{name}: list_dirs(\"c/a/sub\")");
    for prefix in ["c/a/sub/deeper", "c/nothing", "nothing-at-all"] {
        assert_eq!(dirs(prefix), Vec::<String>::new(), "{name}: list_dirs({prefix:?})");
    }
}

/// `put` and `put_new` let go of the body when they return (it may own a pool buffer of the caller's: kept, the
/// pool runs dry): the owner of each body is dropped by then, whether the put succeeded or was refused.
fn bodies_are_not_kept(store: &dyn Store) {
    let name = store.describe();
    /// A body's owner that says when it is dropped: `_token` is one more count of the test's `Arc` until then.
    struct Owner {
        _token: std::sync::Arc<()>,
        bytes: Vec<u8>,
    }
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }
    let token = std::sync::Arc::new(());
    let body = |len: usize| Bytes::from_owner(Owner { _token: std::sync::Arc::clone(&token), bytes: vec![7; len] });
    store.put("kept/put", body(300_000)).unwrap();
    assert_eq!(std::sync::Arc::strong_count(&token), 1, "{name}: put kept the body");
    store.put_new("kept/put_new", body(1000)).unwrap();
    assert_eq!(std::sync::Arc::strong_count(&token), 1, "{name}: put_new kept the body");
    let _ = store.put_new("kept/put_new", body(1000));
    assert_eq!(std::sync::Arc::strong_count(&token), 1, "{name}: a second put_new kept the body");
    assert_eq!(get_all(store, "kept/put"), (300_000, vec![7; 300_000]), "{name}");
}

/// Keys with odd characters round-trip, list as they were given, and each listed name reads back its object.
fn odd_keys(store: &dyn Store) {
    let name = store.describe();
    for (i, key) in ODD_KEYS.iter().enumerate() {
        store.put(key, Bytes::from(vec![i as u8; i + 1])).unwrap_or_else(|e| panic!("{name}: put {key:?}: {e}"));
        assert_eq!(get_all(store, key).1, vec![i as u8; i + 1], "{name}: get {key:?}");
    }
    let listed = store.list("odd").unwrap();
    let keys: BTreeSet<String> = listed.iter().map(|o| o.key.clone()).collect();
    assert_eq!(keys, ODD_KEYS.iter().map(|key| key.to_string()).collect(), "{name}: the keys as given");
    for object in &listed {
        let (size, _) = get_all(store, &object.key);
        assert_eq!(size, object.size, "{name}: the listed {:?} reads back", object.key);
    }
    let mut dirs = store.list_dirs("odd").unwrap();
    dirs.sort();
    assert_eq!(dirs, ["100%", "a.b_c-d+e=f@g:h", "with space", "ünï"], "{name}: list_dirs(\"odd\")");
}

/// `delete`: the object is gone (get, list, list_dirs); deleting it again, or a key never stored, is not an error.
/// Last: every object deleted, the store lists empty.
fn deletes(store: &dyn Store) {
    let name = store.describe();
    store.delete("c/a/2").unwrap();
    assert!(store.get("c/a/2", &mut |_| Ok(())).unwrap_err().is_not_found(), "{name}: deleted");
    assert!(!keys(store, "c/a").contains(&"c/a/2".to_string()), "{name}: a deleted object is not listed");
    store.delete("c/a/2").unwrap_or_else(|e| panic!("{name}: a second delete: {e}"));
    store.delete("never/stored").unwrap_or_else(|e| panic!("{name}: delete of a key never stored: {e}"));
    store.delete("c/a/sub/deeper/4").unwrap();
    assert_eq!(store.list_dirs("c/a/sub").unwrap(), Vec::<String>::new(), "{name}: no object below deeper/");

    // By the names they were stored under, listed ones (below) being the same.
    for key in ODD_KEYS {
        store.delete(key).unwrap();
    }
    let prefixes = ["c", "rt", "sizes", "new", "race", "many", "kept", "odd"];
    for prefix in prefixes {
        for object in store.list(prefix).unwrap() {
            store.delete(&object.key).unwrap();
        }
        assert_eq!(store.list(prefix).unwrap(), [], "{name}: {prefix}/ emptied");
    }
    assert_eq!(keys(store, ""), Vec::<String>::new(), "{name}: nothing left");
    assert_eq!(store.list_dirs("").unwrap(), Vec::<String>::new(), "{name}: no directory left");
}

/// The keys `list(prefix)` shows.
fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    store.list(prefix).unwrap().into_iter().map(|object| object.key).collect()
}

/// `get` of `key`: the size it returns, and the bytes handed over, in order.
fn get_all(store: &dyn Store, key: &str) -> (u64, Vec<u8>) {
    let mut bytes = Vec::new();
    let size = store
        .get(key, &mut |piece| {
            bytes.extend_from_slice(piece);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{}: get {key}: {e}", store.describe()));
    (size, bytes)
}

// ---------------------------------------------------------------------------------------------------------------
// One test per backend.

/// Opens the store `storage` names as the consumer does, checks that it describes itself as `described`, and runs
/// the suite on it.
fn run_on(storage: &[String], described: &str, known: Deviations) {
    let store = open_store(storage);
    assert_eq!(store.describe(), described);
    conformance(store.as_ref(), known);
}

#[test]
fn conformance_of_the_directory_store() {
    let work = tempfile::tempdir().unwrap();
    let url = format!("file://{}", work.path().join("bucket").display());
    run_on(&["--storage".to_string(), url.clone()], &url, Deviations::default());
}

#[test]
fn conformance_of_the_memory_store() {
    let store = store::memory::MemoryStore::new();
    assert_eq!(store.describe(), "memory://");
    conformance(&store, Deviations::default());
}

#[test]
fn conformance_of_s3_on_s3s_fs() {
    let server = S3Server::start();
    let known = Deviations { put_new_not_atomic: true, lists_no_e_tags: true, ..Deviations::default() };
    run_on(&server.storage_args("conformance/prefix"), "s3://conformance/prefix", known);
}

#[test]
fn conformance_of_google_cloud_storage_on_fake_gcs_server() {
    let server = start_fake_gcs();
    let known = Deviations { put_new_overwrites: true, ..Deviations::default() };
    run_on(&gcs_storage(&server, &server.endpoint(), "conformance/prefix"), "gs://conformance/prefix", known);
}

#[test]
fn conformance_of_azure_blob_storage_on_azurite() {
    let server = start_azurite();
    let storage = azure_storage(&server.endpoint(), "conformance/prefix", store::azure::DEVELOPMENT_KEY);
    // Create-only puts are atomic here: 68 rounds of six at once (17 runs) had exactly one winner each.
    run_on(&storage, "az://conformance/prefix", Deviations::default());
}
