//! Keeps the cache true. For now: the repository reconcile, which lists each
//! registry's repositories (all pages) and replaces the registry's cache rows
//! in one transaction, so repositories made or removed outside the gateway
//! appear and disappear within one interval.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

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
    let mut tx = store.begin().await?;
    let removed = repositories::replace_registry(&mut tx, &registry.reference, &states, started).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(RepositorySyncReport {
        seen: states.len(),
        removed,
        ecr_calls: log.ids().len(),
    })
}

/// Reconciles every registry now and then every `interval` until `shutdown` flips.
pub async fn run_repository_sync(
    store: Store,
    registries: Vec<Registry>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        for registry in &registries {
            match sync_repositories(&store, registry).await {
                Ok(report) => {
                    tracing::info!(registry = %registry.reference.alias, ?report, "repositories reconciled")
                }
                Err(error) => {
                    tracing::warn!(registry = %registry.reference.alias, "repository reconcile failed: {error}")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
