//! Keeps the cache true: the repository reconcile lists each registry's
//! repositories (all pages) and replaces the registry's cache rows in one
//! transaction; the image reconcile ([`Syncer`]) then brings each repository's
//! images up to date. What changes outside the gateway appears and disappears
//! within one interval; mutations through the gateway write through.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use tokio::sync::watch;
use tracing::Instrument as _;

mod images;

pub use images::{PAGE, SyncOutcome, Syncer, Trigger, facts_of};

use crate::ecr::{CallLog, EcrError, Registry};
use crate::store::{Store, StoreError, repositories};

/// What one reconcile of a registry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySyncReport {
    /// Repositories ECR listed.
    pub seen: usize,
    /// Cache rows removed because ECR no longer has them.
    pub removed: u64,
    /// ECR calls made.
    pub ecr_calls: usize,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// ECR failed.
    #[error(transparent)]
    Ecr(#[from] EcrError),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Lists the registry's repositories and replaces its cache rows.
pub async fn sync_repositories(
    store: &Store,
    registry: &Registry,
) -> Result<RepositorySyncReport, SyncError> {
    let log = CallLog::default();
    let started = Utc::now();
    let states = registry.list_repositories(&log).await?;
    let removed = async {
        let mut tx = store.begin().await?;
        let removed = repositories::replace_registry(&mut tx, &registry.reference, &states, started).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok::<_, StoreError>(removed)
    }
    .instrument(crate::store::transaction_span("replace_registry_repositories"))
    .await?;
    Ok(RepositorySyncReport {
        seen: states.len(),
        removed,
        ecr_calls: log.ids().len(),
    })
}

/// Reconciles every registry now and then every `interval` until `shutdown`
/// flips: the repository listing first, then each cached repository's images
/// (`concurrency` at a time, skipping repositories another replica is syncing).
pub async fn run_sync_loop(
    syncer: Syncer,
    registries: Vec<Registry>,
    interval: Duration,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        for registry in &registries {
            sync_registry(&syncer, registry, concurrency, &shutdown).await;
            if *shutdown.borrow() {
                return;
            }
        }
        if !crate::tasks::pause(interval, &mut shutdown).await {
            return;
        }
    }
}

async fn sync_registry(
    syncer: &Syncer,
    registry: &Registry,
    concurrency: usize,
    shutdown: &watch::Receiver<bool>,
) {
    let alias = &registry.reference.alias;
    match sync_repositories(&syncer.store, registry).await {
        Ok(report) => tracing::info!(registry = %alias, ?report, "repositories reconciled"),
        Err(error) => {
            tracing::warn!(registry = %alias, "repository reconcile failed: {error}");
            return;
        }
    }
    let names = match repositories::names(syncer.store.pool(), &registry.reference).await {
        Ok(names) => names,
        Err(error) => {
            tracing::warn!(registry = %alias, "cannot list cached repositories: {error}");
            return;
        }
    };
    let stop = shutdown.clone();
    futures::stream::iter(names)
        .take_while(|_| std::future::ready(!*stop.borrow()))
        .for_each_concurrent(concurrency.max(1), |name| async move {
            match syncer.sync_repository(registry, &name, Trigger::Interval).await {
                Ok(outcome) => {
                    tracing::debug!(registry = %alias, repository = %name, ?outcome, "images reconciled")
                }
                Err(error) => {
                    tracing::warn!(registry = %alias, repository = %name, "image reconcile failed: {error}")
                }
            }
        })
        .await;
}
