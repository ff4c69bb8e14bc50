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

pub mod events;
mod feed;
mod images;
mod rereads;

pub use feed::ChangeFeed;
pub use images::{PAGE, SyncOutcome, Syncer, Trigger, facts_of};

use images::drift_record;

use crate::ecr::{CallLog, EcrError, Registry};
use crate::policy::PolicyInForce;
use crate::store::{Store, StoreError, audit_events, repositories, sync};

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
///
/// With events on (`[registries.events]`), the listing reads the tags only of
/// repositories the cache does not have (the events keep the others'), and a
/// repository that drifted is marked for the image pass: an event was missed.
pub async fn sync_repositories(
    store: &Store,
    registry: &Registry,
) -> Result<RepositorySyncReport, SyncError> {
    let log = CallLog::default();
    let started = Utc::now();
    let events_on = registry.events().is_some();
    let known: std::collections::HashSet<String> = if events_on {
        repositories::names(store.pool(), &registry.reference)
            .await?
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    } else {
        Default::default()
    };
    let mut states = registry
        .list_repositories_reading_tags(&log, |name| !known.contains(name))
        .await?;
    let (removed, drifted) = async {
        let mut tx = store.begin().await?;
        let cached = repositories::cached_states(&mut tx, &registry.reference).await?;
        let mut drifted = 0;
        for state in &mut states {
            if known.contains(state.name.as_str())
                && let Some((before, _)) = cached.get(state.name.as_str())
            {
                // Not read: the cache's tags stand.
                state.tags = before.tags.clone();
            }
            // A row written after the listing began is newer than it (replace_registry keeps it).
            let Some((before, _)) = cached.get(state.name.as_str()).filter(|(_, at)| *at < started) else {
                continue;
            };
            let changes = crate::domain::setting_changes(before, state);
            if !changes.is_empty() {
                drifted += 1;
                let record = drift_record(&registry.reference, &state.name, &changes, &log);
                audit_events::insert(&mut tx, &record).await?;
                if events_on {
                    sync::mark_dirty_in(&mut tx, &registry.reference, &state.name).await?;
                }
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
///
/// A registry whose events the gateway follows is reconciled as a backstop
/// ([`Pass`]): its image pass reads only the repositories that are dirty,
/// never synced, or due by `full_resync` (a share per pass).
pub async fn run_sync_loop(
    syncer: Syncer,
    policy: Arc<PolicyInForce>,
    registries: Vec<Registry>,
    pass: Pass,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = pass.interval;
    loop {
        for registry in &registries {
            sync_registry(&syncer, &policy, registry, &pass, &shutdown).await;
            if *shutdown.borrow() {
                return;
            }
        }
        if !crate::tasks::pause(interval, &mut shutdown).await {
            return;
        }
    }
}

/// How a reconcile loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Between passes.
    pub interval: Duration,
    /// Repositories of one registry reconciled at once.
    pub concurrency: usize,
    /// With events: every repository's images at least this often.
    pub full_resync: Duration,
}

/// One reconcile pass of one registry (the loop's step; tests and benchmarks
/// run it alone): the listing, the image pass, then compliance.
pub async fn sync_once(
    syncer: &Syncer,
    policy: &Arc<PolicyInForce>,
    registry: &Registry,
    pass: &Pass,
    shutdown: &watch::Receiver<bool>,
) {
    sync_registry(syncer, policy, registry, pass, shutdown).await;
}

async fn sync_registry(
    syncer: &Syncer,
    policy: &Arc<PolicyInForce>,
    registry: &Registry,
    pass: &Pass,
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
    sync_images(syncer, registry, pass, shutdown).await;
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
async fn sync_images(syncer: &Syncer, registry: &Registry, pass: &Pass, shutdown: &watch::Receiver<bool>) {
    let alias = &registry.reference.alias;
    let (names, trigger) = if registry.events().is_some() {
        (backstop_names(syncer, registry, pass).await, Trigger::Backstop)
    } else {
        (
            repositories::names(syncer.store.pool(), &registry.reference).await,
            Trigger::Interval,
        )
    };
    let names = match names {
        Ok(names) => names,
        Err(error) => {
            tracing::warn!(registry = %alias, "cannot list cached repositories: {error}");
            return;
        }
    };
    let stop = shutdown.clone();
    futures::stream::iter(names)
        .take_while(|_| std::future::ready(!*stop.borrow()))
        .for_each_concurrent(pass.concurrency.max(1), |name| async move {
            match syncer.sync_repository(registry, &name, trigger).await {
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

/// The repositories a backstop pass reads: the dirty and never-synced ones,
/// and of those synced longer than `full_resync` ago the oldest share that
/// spreads a full re-read over `full_resync` (e.g. a seventh per daily pass).
async fn backstop_names(
    syncer: &Syncer,
    registry: &Registry,
    pass: &Pass,
) -> Result<Vec<crate::domain::RepositoryName>, StoreError> {
    let total = repositories::count(syncer.store.pool(), &registry.reference).await?;
    let rotation = rotation_share(total, pass.full_resync, pass.interval);
    let resync_before =
        Utc::now() - chrono::TimeDelta::from_std(pass.full_resync).unwrap_or(chrono::TimeDelta::days(7));
    sync::due_for_images(syncer.store.pool(), &registry.reference, resync_before, rotation).await
}

/// How many of `total` repositories one pass re-reads so that all are read
/// within `full_resync` at one pass per `interval`.
pub fn rotation_share(total: i64, full_resync: Duration, interval: Duration) -> i64 {
    let passes = (full_resync.as_secs() / interval.as_secs().max(1)).max(1) as i64;
    (total + passes - 1) / passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_re_read_is_spread_over_the_passes_of_its_period() {
        let day = Duration::from_secs(86_400);
        assert_eq!(rotation_share(100_000, 7 * day, day), 14_286);
        assert_eq!(rotation_share(10, 7 * day, day), 2);
        assert_eq!(rotation_share(0, 7 * day, day), 0);
        // A period shorter than the interval re-reads everything each pass.
        assert_eq!(rotation_share(500, day, 7 * day), 500);
    }
}
