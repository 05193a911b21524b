//! Who may store backup NAME: a put's claim on the name, taken before anything is stored and released when a put
//! that failed stored nothing else.
//!
//! A put stores its claim under a key of its own (`<NAME>/claim-<PUT>.json`), then lists
//! NAME; it goes on only if the listing shows nothing but its claim. Two puts that both went on would each have
//! listed after its own claim was stored and seen no other: impossible on a store whose listing shows every object
//! whose PUT has returned (S3, Google, Azure, a directory), since the later lister would see the earlier claim. So
//! at most one put of a NAME ever writes a pack, whatever the service does with conditional requests; of puts that
//! see only each other's claims, the one that started first keeps its claim and lists again until the others
//! have removed theirs (for up to 30 s), so that one of them goes on.
//! Behind that, each put writes under its own id and the index is created only if none exists (a create-only
//! put) and read back: a put whose index is not the stored one removes what it wrote and fails.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use store::Store;

use crate::layout::{self, Claim};

/// After a put that failed: its claim goes if nothing but claims is stored under the name (no producer came, an
/// empty stream; a claim of another put starting at the same moment is that put's to remove), so that the name is
/// free for the next try; anything more stays, for `consumer delete` (the error says so).
pub(crate) fn release(name: &str, store: &dyn Store, claim: &Claim) {
    let key = layout::claim_key(name, &claim.put_id);
    let Ok(objects) = store.list(name) else { return };
    if objects.iter().all(|o| layout::claim_of(name, &o.key).is_some()) {
        if let Err(e) = store.delete(&key) {
            log::warn!("could not remove this put's claim {key}: {e}");
        }
    }
}

/// Why a put did not store anything: the NAME is (or was just) another put's. What the message says is all there
/// is to do: nothing of this put is left in the store.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NameTaken(pub(crate) String);

/// How long the earliest of puts claiming one NAME at the same moment waits for the others to step back. Each of
/// them lists, reads a claim and removes its own: three requests, which a slow or distant store may take seconds
/// over. (Eight listings over about 2 s, before, let a slow store's puts all give up.) Only a put that started
/// after this one and died holding its claim makes it wait this long, and then it stops as it would have.
const CLAIM_PATIENCE: Duration = Duration::from_secs(30);

/// The longest pause between two listings while the earliest claim waits.
const CLAIM_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Claims backup `name` in `store` for a new put: fails if anything is stored under the name (a backup, an
/// interrupted put, another put at work), or if another put claims it at the same moment and keeps it.
///
/// The claim is stored (create-only, under a key of this put's own), then NAME is listed: with nothing else there,
/// the name is this put's. Two puts can never both get it — each listed after its own claim was stored, so the later
/// one would have seen the earlier one's claim. When only other claims are there, the puts that started at the same
/// moment decide by their ids (which begin with the start time): the earliest keeps its claim and lists again until
/// the others have stepped back; the others remove theirs and stop once the earliest one holds on. Any other object
/// under the name means it is taken.
pub fn claim(name: &str, store: &dyn Store) -> Result<Claim> {
    layout::check_name(name)?;
    store.ensure_container()?;
    taken(name, store, &store.list(name)?)?;
    let claim = Claim::new();
    let key = layout::claim_key(name, &claim.put_id);
    // Create-only: a store that cannot refuse an existing key (a file system without links) fails here, before any
    // data is sent, rather than at the index.
    store.put_new(&key, Bytes::from(claim.to_json()))?;
    let outcome = hold(name, store, &key);
    if outcome.is_err() {
        // Whatever went wrong, the claim must not stay behind to block the name (best effort: a store that does
        // not answer cannot be asked).
        let _ = store.delete(&key);
    }
    outcome.map(|()| claim)
}

/// The listing part of [`claim`], once this put's claim `key` is stored.
fn hold(name: &str, store: &dyn Store, key: &str) -> Result<()> {
    let deadline = Instant::now() + CLAIM_PATIENCE;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let listed = store.list(name)?;
        let others: Vec<&store::ObjectInfo> = listed.iter().filter(|o| o.key != key).collect();
        if others.is_empty() {
            return Ok(());
        }
        let only_claims = others.iter().all(|o| layout::claim_of(name, &o.key).is_some());
        let earliest = others.iter().all(|o| o.key.as_str() > key);
        if !only_claims || !earliest || Instant::now() >= deadline {
            let others: Vec<store::ObjectInfo> = others.into_iter().cloned().collect();
            taken(name, store, &others)?;
            return Err(NameTaken(format!(
                "backup {name} is being claimed by another put at the same moment: this put stops"
            ))
            .into());
        }
        // The earliest claim waits for the others to step back, a little longer each time.
        let pause = Duration::from_millis((20 + random_below(100)) * attempt).min(CLAIM_PAUSE_MAX);
        log::debug!("other puts claim {name} at the same moment: listing again in {pause:?}");
        std::thread::sleep(pause);
    }
}

/// Fails with what `listed` (objects under `name`) says about who has the name; `Ok` if nothing is there.
fn taken(name: &str, store: &dyn Store, listed: &[store::ObjectInfo]) -> Result<()> {
    if listed.is_empty() {
        return Ok(());
    }
    let delete = format!("`consumer delete {name}`");
    let index = layout::object_key(name, layout::INDEX_NAME);
    let store_name = store.describe();
    if listed.iter().any(|o| o.key == index) {
        let why =
            format!("backup {name} already exists in {store_name} (choose another name, or remove it with {delete})");
        return Err(NameTaken(why).into());
    }
    let claim: Option<Claim> = listed
        .iter()
        .filter(|o| layout::claim_of(name, &o.key).is_some())
        .find_map(|o| store::get_small(store, &o.key, 64 << 10).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let why = match claim {
        Some(claim) => format!(
            "backup {name} already exists in {store_name}: {} is storing it, or was interrupted (if that put is \
             not running any more, remove what it left with {delete})",
            claim.describe()
        ),
        None => format!(
            "backup {name} already exists in {store_name}, incomplete (choose another name, or remove it with \
             {delete})"
        ),
    };
    Err(NameTaken(why).into())
}

/// A number in `0..bound` that differs from process to process (the std hasher's random keys), for pauses.
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() % bound
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Barrier, Mutex};

    use store::memory::MemoryStore;
    use store::{ObjectInfo, Store};

    use super::*;
    use crate::layout::Claim;

    /// A store at which every put looks before any claims, and whose claims are all stored before any put lists
    /// again: every put sees every other claim.
    #[derive(Debug)]
    struct TogetherStore {
        inner: MemoryStore,
        barrier: Barrier,
        seen: Mutex<HashSet<String>>,
        looked: Mutex<HashSet<std::thread::ThreadId>>,
        /// How long each delete takes (a slow or distant store).
        delete_takes: Duration,
    }

    impl TogetherStore {
        fn new(puts: usize, delete_takes: Duration) -> TogetherStore {
            TogetherStore {
                inner: MemoryStore::new(),
                barrier: Barrier::new(puts),
                seen: Mutex::default(),
                looked: Mutex::default(),
                delete_takes,
            }
        }

        /// Runs `puts` claims of NIGHTLY at once; returns their outcomes.
        fn claim_together(&self, puts: usize) -> Vec<Result<Claim>> {
            std::thread::scope(|scope| {
                let claims: Vec<_> = (0..puts).map(|_| scope.spawn(|| claim("NIGHTLY", self))).collect();
                claims.into_iter().map(|c| c.join().unwrap()).collect()
            })
        }
    }

    impl Store for TogetherStore {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn ensure_container(&self) -> store::Result<()> {
            self.inner.ensure_container()
        }
        fn put(&self, key: &str, body: Bytes) -> store::Result<()> {
            self.inner.put(key, body)
        }
        fn put_new(&self, key: &str, body: Bytes) -> store::Result<()> {
            let result = self.inner.put_new(key, body);
            if key.contains("/claim-") && self.seen.lock().unwrap().insert(key.to_string()) {
                self.barrier.wait();
            }
            result
        }
        fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> store::Result<u64> {
            self.inner.get(key, consume)
        }
        fn get_range(
            &self,
            key: &str,
            range: std::ops::Range<u64>,
            consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
        ) -> store::Result<u64> {
            self.inner.get_range(key, range, consume)
        }
        fn list(&self, prefix: &str) -> store::Result<Vec<ObjectInfo>> {
            let result = self.inner.list(prefix);
            if self.looked.lock().unwrap().insert(std::thread::current().id()) {
                self.barrier.wait();
            }
            result
        }
        fn list_dirs(&self, prefix: &str) -> store::Result<Vec<String>> {
            self.inner.list_dirs(prefix)
        }
        fn delete(&self, key: &str) -> store::Result<()> {
            std::thread::sleep(self.delete_takes);
            self.inner.delete(key)
        }
    }

    /// Exactly one of `results` got the name; the others stopped saying it was taken, and only the winner's claim
    /// is left in `store`.
    fn assert_one_winner(results: &[Result<Claim>], store: &TogetherStore) {
        let winners: Vec<&Claim> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(error.downcast_ref::<NameTaken>().is_some(), "{error:#}");
        }
        assert_eq!(store.inner.keys(), [layout::claim_key("NIGHTLY", &winners[0].put_id)]);
    }

    /// Eight puts claim one NAME at the same instant, each seeing all the others' claims: exactly one gets it (the
    /// earliest), the others stop saying so, and only the winner's claim is left.
    #[test]
    fn of_puts_that_see_each_other_exactly_one_gets_the_name() {
        for _ in 0..5 {
            let store = TogetherStore::new(8, Duration::ZERO);
            assert_one_winner(&store.claim_together(8), &store);
        }
    }

    /// On a slow store (each delete takes 4 s, longer than the 2–3 s of eight listings the earliest claim used to
    /// make) the earliest claim still waits until the others have stepped back, so one put goes on rather than none.
    #[test]
    fn of_puts_on_a_slow_store_one_still_gets_the_name() {
        let store = TogetherStore::new(3, Duration::from_secs(4));
        assert_one_winner(&store.claim_together(3), &store);
    }
}
