//! Keeps the cache true: the repository reconcile lists each registry's
//! repositories (all pages) and replaces the registry's cache rows in one
//! transaction; the image reconcile ([`Syncer`]) then brings each repository's
//! images up to date. What changes outside the gateway appears and disappears
//! within one interval; mutations through the gateway write through.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use tokio::sync::watch;
use tracing::Instrument as _;

mod images;

pub use images::{PAGE, SyncOutcome, Syncer, Trigger, facts_of};

use images::drift_record;

use crate::ecr::{CallLog, EcrError, Registry};
use crate::policy::PolicyInForce;
use crate::store::{Store, StoreError, audit_events, repositories};

/// What one reconcile of a registry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySyncReport {
    /// Repositories ECR listed.
    pub seen: usize,
    /// Cache rows removed because ECR no longer has them.
    pub removed: u64,
    /// Cached repositories whose settings or tags changed outside the gateway.
    pub drifted: usize,
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

/// Lists the registry's repositories and replaces its cache rows. A cached
/// repository whose settings or tags ECR now lists differently changed
/// outside the gateway (writes through the gateway update the cache at once,
/// and rows written after the listing began are left alone): each such drift
/// leaves an audit event, in the same transaction.
pub async fn sync_repositories(
    store: &Store,
    registry: &Registry,
) -> Result<RepositorySyncReport, SyncError> {
    let log = CallLog::default();
    let started = Utc::now();
    let states = registry.list_repositories(&log).await?;
    let (removed, drifted) = async {
        let mut tx = store.begin().await?;
        let cached = repositories::cached_states(&mut tx, &registry.reference).await?;
        let mut drifted = 0;
        for state in &states {
            // A row written after the listing began is newer than it (replace_registry keeps it).
            let Some((before, _)) = cached.get(state.name.as_str()).filter(|(_, at)| *at < started) else {
                continue;
            };
            let changes = crate::domain::setting_changes(before, state);
            if !changes.is_empty() {
                drifted += 1;
                let record = drift_record(&registry.reference, &state.name, &changes, &log);
                audit_events::insert(&mut tx, &record).await?;
            }
        }
        let removed = repositories::replace_registry(&mut tx, &registry.reference, &states, started).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok::<_, StoreError>((removed, drifted))
    }
    .instrument(crate::store::transaction_span("replace_registry_repositories"))
    .await?;
    Ok(RepositorySyncReport {
        seen: states.len(),
        removed,
        drifted,
        ecr_calls: log.ids().len(),
    })
}

/// Reconciles every registry now and then every `interval` until `shutdown`
/// flips: the repository listing first, then each cached repository's images
/// (`concurrency` at a time, skipping repositories another replica is syncing).
///
/// After the images, the registry's compliance is judged anew as a whole
/// (`compliance::evaluate_registry`); what the listing changes meanwhile is
/// re-judged repository by repository as it is notified (`compliance::run_watcher`).
pub async fn run_sync_loop(
    syncer: Syncer,
    policy: Arc<PolicyInForce>,
    registries: Vec<Registry>,
    interval: Duration,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        for registry in &registries {
            sync_registry(&syncer, &policy, registry, concurrency, &shutdown).await;
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
    policy: &Arc<PolicyInForce>,
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
    // The rows the listing changed are re-judged by the compliance watcher as
    // Postgres notifies them; the whole registry once its images are read too.
    sync_images(syncer, registry, concurrency, shutdown).await;
    evaluate(syncer, policy, registry).await;
}

/// Judges the registry's compliance anew; a failure waits for the next pass.
async fn evaluate(syncer: &Syncer, policy: &PolicyInForce, registry: &Registry) {
    let alias = &registry.reference.alias;
    match crate::compliance::evaluate_registry(&syncer.store, &policy.current(), &registry.reference).await {
        Ok(evaluation) => tracing::info!(registry = %alias, ?evaluation, "compliance evaluated"),
        Err(error) => tracing::warn!(registry = %alias, "compliance evaluation failed: {error}"),
    }
}

/// The image reconcile of each cached repository, `concurrency` at a time.
async fn sync_images(
    syncer: &Syncer,
    registry: &Registry,
    concurrency: usize,
    shutdown: &watch::Receiver<bool>,
) {
    let alias = &registry.reference.alias;
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
