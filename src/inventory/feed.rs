//! The change feed: one task per replica sequences the change log's new
//! rows (migrations/0023_inventory_changes.sql), reads what got a seq, and
//! hands it to every WatchImages stream of the replica through one shared
//! ring ([`tokio::sync::broadcast`]), so that a thousand streams cost one
//! query per batch of changes, not one each. A stream that falls further
//! behind than the ring holds is cut off (it resumes from the log).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::domain::InventoryChange;
use crate::store::{Store, StoreError, changes};

/// Changes sequenced per step.
const SEQUENCE_BATCH: i32 = 5_000;
/// Changes read per query.
const READ_BATCH: i64 = 1_000;
/// How often the feed looks without a notification (a lost listener, a
/// writer whose notification this replica missed).
const POLL: Duration = Duration::from_secs(1);
/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The replica's live view of the change log.
#[derive(Debug)]
pub struct ChangeFeed {
    ring: broadcast::Sender<Arc<InventoryChange>>,
    /// The seq of the last change put in the ring (0 until the feed read the head).
    head: watch::Sender<i64>,
    capacity: usize,
}

impl ChangeFeed {
    /// A feed whose ring holds `capacity` changes: how far a stream may fall behind.
    pub fn new(capacity: usize) -> Arc<ChangeFeed> {
        Arc::new(ChangeFeed {
            ring: broadcast::Sender::new(capacity.max(16)),
            head: watch::Sender::new(0),
            capacity: capacity.max(16),
        })
    }

    /// How many changes a stream may fall behind before it is cut off.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A receiver of every change put in the ring from now on. Subscribe
    /// before reading the log's backlog: what the backlog misses, the ring has.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<InventoryChange>> {
        self.ring.subscribe()
    }

    /// Streams following the feed now.
    pub fn streams(&self) -> usize {
        self.ring.receiver_count()
    }

    /// The seq of the newest change in the ring.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Sequences and reads the log until `shutdown` flips; prunes what is
    /// older than `retention` every few minutes.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        retention: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let wake = store.change_log_wake();
        let mut last = loop {
            match changes::bounds(store.pool()).await {
                Ok(bounds) => break bounds.head,
                Err(error) => tracing::debug!("change feed: cannot read the log's head yet: {error}"),
            }
            if !crate::tasks::pause(POLL, &mut shutdown).await {
                return;
            }
        };
        self.head.send_replace(last);
        let mut pruned = tokio::time::Instant::now();
        loop {
            match self.step(&store, last).await {
                Ok(now) => last = now,
                Err(error) => tracing::warn!("change feed: {error}"),
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                prune(&store, retention).await;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Sequences what committed, then puts every change after `last` in the ring.
    async fn step(&self, store: &Store, mut last: i64) -> Result<i64, StoreError> {
        changes::sequence(store.pool(), SEQUENCE_BATCH).await?;
        loop {
            let batch = changes::after(store.pool(), last, READ_BATCH).await?;
            let full = batch.len() as i64 == READ_BATCH;
            for change in batch {
                last = change.seq;
                // No stream listening is no error.
                let _ = self.ring.send(Arc::new(change));
            }
            self.head.send_replace(last);
            if !full {
                return Ok(last);
            }
        }
    }
}

async fn prune(store: &Store, retention: Duration) {
    let cutoff =
        chrono::Utc::now() - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::days(1));
    loop {
        match changes::prune(store.pool(), cutoff, 10_000).await {
            Ok(0) => return,
            Ok(removed) => tracing::debug!(removed, "change log: pruned"),
            Err(error) => {
                tracing::warn!("change log: retention failed: {error}");
                return;
            }
        }
    }
}
