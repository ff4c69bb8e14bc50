//! An in-process read cache over the inventory, kept true by Postgres.
//!
//! Triggers on `images`, `image_tags` and `repositories` (migration 0004)
//! send `NOTIFY ecr_gateway_inventory, 'account/region/repository'` when a
//! statement changes a repository's rows; every replica listens and drops
//! what it cached for that repository. The notification is sent on commit,
//! so a reader on another replica may see the old answer for the moment it
//! takes to arrive (milliseconds); the writing replica also invalidates
//! locally right after its own commit, so it reads its own writes.
//!
//! Three guards keep a stale answer from being served for longer:
//! - a fill takes a ticket (a sequence number) *before* it reads Postgres; an
//!   invalidation of the same repository after the ticket makes the filled
//!   entry invalid, so a read racing a write never caches the old row;
//! - while the listener is not connected nothing is cached, and when it
//!   (re)connects everything cached before is dropped (notifications sent
//!   while it was away are lost);
//! - every entry expires after the configured TTL whatever happens.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::RegistryRef;

/// The channel the triggers notify.
pub const CHANNEL: &str = "ecr_gateway_inventory";

/// A repository of one registry, as the notifications name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoKey {
    /// The registry's account.
    pub account_id: String,
    /// Its region.
    pub region: String,
    /// The repository.
    pub repository: String,
}

impl RepoKey {
    /// The key of `repository` in `registry`.
    pub fn new(registry: &RegistryRef, repository: &str) -> RepoKey {
        RepoKey {
            account_id: registry.account_id.clone(),
            region: registry.region.clone(),
            repository: repository.to_owned(),
        }
    }

    /// Parses a notification payload (`account/region/repository`; only the
    /// repository may contain `/`).
    pub fn from_payload(payload: &str) -> Option<RepoKey> {
        let mut parts = payload.splitn(3, '/');
        let (account_id, region, repository) = (parts.next()?, parts.next()?, parts.next()?);
        (!account_id.is_empty() && !region.is_empty() && !repository.is_empty()).then(|| RepoKey {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            repository: repository.to_owned(),
        })
    }
}

/// The invalidation bookkeeping shared by every typed cache of a process.
#[derive(Debug, Default)]
pub struct Invalidations {
    seq: AtomicU64,
    live: AtomicBool,
    state: Mutex<InvalidationState>,
}

#[derive(Debug, Default)]
struct InvalidationState {
    /// The sequence number of each repository's last invalidation.
    repositories: HashMap<RepoKey, u64>,
    /// The sequence number of the last flush of everything.
    flushed: u64,
}

/// Taken before a fill reads Postgres; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(Option<u64>);

impl Invalidations {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A ticket for a fill; a dead ticket when the listener is not connected.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.live.load(Ordering::SeqCst).then(|| self.next()))
    }

    /// Everything cached for `key` is stale from now on.
    pub fn invalidate(&self, key: RepoKey) {
        let seq = self.next();
        self.lock().repositories.insert(key, seq);
    }

    /// Everything cached is stale from now on.
    pub fn flush(&self) {
        let seq = self.next();
        let mut state = self.lock();
        state.flushed = seq;
        state.repositories.clear();
    }

    /// The listener connected (`true`: after a flush) or was lost (`false`).
    pub fn set_live(&self, live: bool) {
        self.flush();
        self.live.store(live, Ordering::SeqCst);
    }

    /// Whether an entry filled with `filled` for `key` is still valid.
    fn valid(&self, key: &RepoKey, filled: u64) -> bool {
        let state = self.lock();
        filled > state.flushed && state.repositories.get(key).is_none_or(|&seq| filled > seq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InvalidationState> {
        // The state is a map of numbers that no panic can leave half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One typed cache: `(repository, K) → V`, bounded in size and age.
#[derive(Debug)]
pub struct ReadCache<K, V> {
    invalidations: Arc<Invalidations>,
    entries: Mutex<Entries<K, V>>,
    ttl: Duration,
    max_entries: usize,
}

#[derive(Debug)]
struct Entries<K, V> {
    by_repository: HashMap<RepoKey, HashMap<K, Entry<V>>>,
    len: usize,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    filled: u64,
    expires: Instant,
}

impl<K: Eq + Hash, V: Clone> ReadCache<K, V> {
    /// A cache holding at most `max_entries` for at most `ttl` each; a zero
    /// TTL or size disables it.
    pub fn new(invalidations: Arc<Invalidations>, ttl: Duration, max_entries: usize) -> Self {
        Self {
            invalidations,
            entries: Mutex::new(Entries {
                by_repository: HashMap::new(),
                len: 0,
            }),
            ttl,
            max_entries,
        }
    }

    /// The cached value, if it is still valid.
    pub fn get<Q>(&self, repository: &RepoKey, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.lock();
        let entry = entries.by_repository.get(repository)?.get(key)?;
        (entry.expires > Instant::now() && self.invalidations.valid(repository, entry.filled))
            .then(|| entry.value.clone())
    }

    /// Caches `value`, read from Postgres after `ticket` was taken.
    pub fn insert(&self, ticket: Ticket, repository: RepoKey, key: K, value: V) {
        let Ticket(Some(filled)) = ticket else { return };
        if self.ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len >= self.max_entries {
            // Drop what is stale; if that is not a tenth, drop everything: a
            // full sweep at most once per tenth of the capacity.
            let invalidations = &self.invalidations;
            entries.by_repository.retain(|repo, held| {
                held.retain(|_, e| e.expires > now && invalidations.valid(repo, e.filled));
                !held.is_empty()
            });
            entries.len = entries.by_repository.values().map(HashMap::len).sum();
            if entries.len >= self.max_entries - self.max_entries / 10 {
                entries.by_repository.clear();
                entries.len = 0;
            }
        }
        let entry = Entry {
            value,
            filled,
            expires: now + self.ttl,
        };
        if entries
            .by_repository
            .entry(repository)
            .or_default()
            .insert(key, entry)
            .is_none()
        {
            entries.len += 1;
        }
    }

    /// How many entries are held (valid or not).
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> RepoKey {
        RepoKey {
            account_id: "111111111111".into(),
            region: "eu-west-1".into(),
            repository: name.into(),
        }
    }

    fn cache(ttl: Duration, max: usize) -> (Arc<Invalidations>, ReadCache<String, u32>) {
        let invalidations = Arc::new(Invalidations::default());
        invalidations.set_live(true);
        (invalidations.clone(), ReadCache::new(invalidations, ttl, max))
    }

    #[test]
    fn payloads_parse_with_slashes_in_the_repository_only() {
        assert_eq!(
            RepoKey::from_payload("111111111111/eu-west-1/team/app/api"),
            Some(repo("team/app/api"))
        );
        assert_eq!(RepoKey::from_payload("111111111111/eu-west-1"), None);
        assert_eq!(RepoKey::from_payload("111111111111//x"), None);
        assert_eq!(RepoKey::from_payload(""), None);
    }

    #[test]
    fn a_fill_is_served_until_its_repository_changes() {
        let (inv, cache) = cache(Duration::from_secs(60), 100);
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 1);
        cache.insert(inv.ticket(), repo("b"), "v1".into(), 2);
        assert_eq!(cache.get(&repo("a"), "v1"), Some(1));
        inv.invalidate(repo("a"));
        assert_eq!(cache.get(&repo("a"), "v1"), None);
        assert_eq!(
            cache.get(&repo("b"), "v1"),
            Some(2),
            "other repositories keep theirs"
        );
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 3);
        assert_eq!(
            cache.get(&repo("a"), "v1"),
            Some(3),
            "a fill after the change is served"
        );
    }

    #[test]
    fn a_fill_that_raced_a_change_is_never_served() {
        let (inv, cache) = cache(Duration::from_secs(60), 100);
        let ticket = inv.ticket(); // the read starts…
        inv.invalidate(repo("a")); // …a write commits meanwhile…
        cache.insert(ticket, repo("a"), "v1".into(), 1); // …the read's old answer arrives
        assert_eq!(cache.get(&repo("a"), "v1"), None);
    }

    #[test]
    fn nothing_is_cached_while_the_listener_is_away_and_its_return_flushes() {
        let (inv, cache) = cache(Duration::from_secs(60), 100);
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 1);
        inv.set_live(false);
        assert_eq!(cache.get(&repo("a"), "v1"), None);
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 2);
        assert_eq!(cache.get(&repo("a"), "v1"), None);
        inv.set_live(true);
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 3);
        assert_eq!(cache.get(&repo("a"), "v1"), Some(3));
    }

    #[test]
    fn entries_expire() {
        let (inv, cache) = cache(Duration::from_millis(20), 100);
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&repo("a"), "v1"), None);
    }

    #[test]
    fn the_size_stays_bounded() {
        let (inv, cache) = cache(Duration::from_secs(60), 50);
        for i in 0..1_000 {
            cache.insert(inv.ticket(), repo("a"), format!("v{i}"), i);
            assert!(cache.len() <= 50);
        }
        assert_eq!(
            cache.get(&repo("a"), "v999"),
            Some(999),
            "the newest fill is kept"
        );
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let (inv, cache) = cache(Duration::ZERO, 100);
        cache.insert(inv.ticket(), repo("a"), "v1".into(), 1);
        assert!(cache.is_empty());
    }
}
