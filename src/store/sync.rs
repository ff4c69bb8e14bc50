//! Sync bookkeeping: per-repository leases shared by replicas, and one row per sync run.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{StoreError, Tx};
use crate::domain::{RegistryRef, RepositoryName};

/// Counters of a finished sync run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Pages of DescribeImages read.
    pub pages: i32,
    /// Images ECR listed.
    pub seen: i32,
    /// Images new to the cache.
    pub added: i32,
    /// Images whose facts changed.
    pub changed: i32,
    /// Images no longer in ECR, removed from the cache.
    pub removed: i32,
    /// ECR calls made.
    pub ecr_calls: i32,
}

/// A recorded sync run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRun {
    /// Its id.
    pub run_id: Uuid,
    /// The repository (None for a registry-wide run).
    pub repository: Option<String>,
    /// `interval`, `on-demand`, `write-through`.
    pub trigger: String,
    /// The replica that ran it.
    pub holder: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `failed`.
    pub status: String,
    /// Its counters.
    pub counts: RunCounts,
    /// Why it failed.
    pub error: Option<String>,
}

/// Takes the repository's sync lease for `holder` until `until`, unless another
/// holder has an unexpired one. Returns whether the lease was taken.
pub async fn try_lease(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: &RepositoryName,
    holder: &str,
    until: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let taken = sqlx::query_scalar!(
        r#"INSERT INTO sync_state AS s (account_id, region, repository, lease_holder, lease_until)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (account_id, region, repository) DO UPDATE
               SET lease_holder = EXCLUDED.lease_holder, lease_until = EXCLUDED.lease_until
               WHERE s.lease_until IS NULL OR s.lease_until < now() OR s.lease_holder = EXCLUDED.lease_holder
           RETURNING true AS "taken!""#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        holder,
        until,
    )
    .fetch_optional(pool)
    .await?;
    Ok(taken.unwrap_or(false))
}

/// Releases the lease and records how the sync ended, inside the sync's transaction.
///
/// A sync that succeeded clears the repository's dirty mark when the mark is
/// older than the sync's `started` (a mark made meanwhile stays).
pub async fn release(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    holder: &str,
    started: DateTime<Utc>,
    synced_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE sync_state SET lease_holder = NULL, lease_until = NULL,
               last_synced_at = COALESCE($5, last_synced_at), last_error = $6,
               dirty_since = CASE WHEN $5::timestamptz IS NOT NULL AND dirty_since <= $7 THEN NULL
                                  ELSE dirty_since END
           WHERE account_id = $1 AND region = $2 AND repository = $3 AND lease_holder = $4"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        holder,
        synced_at,
        error,
        started,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// When the repository was last synced completely.
pub async fn last_synced_at(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT last_synced_at FROM sync_state WHERE account_id = $1 AND region = $2 AND repository = $3",
        registry.account_id,
        registry.region,
        repository,
    )
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// Records a run as started.
pub async fn start_run(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: Option<&RepositoryName>,
    trigger: &str,
    holder: &str,
) -> Result<Uuid, StoreError> {
    let run_id = Uuid::now_v7();
    sqlx::query!(
        r#"INSERT INTO sync_runs (run_id, account_id, region, repository, trigger, holder, started_at, status)
           VALUES ($1, $2, $3, $4, $5, $6, now(), 'running')"#,
        run_id,
        registry.account_id,
        registry.region,
        repository.map(|r| r.as_str()),
        trigger,
        holder,
    )
    .execute(pool)
    .await?;
    Ok(run_id)
}

/// Records how a run ended.
pub async fn finish_run(
    executor: impl sqlx::PgExecutor<'_>,
    run_id: Uuid,
    counts: RunCounts,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE sync_runs SET finished_at = now(), status = $2, pages = $3, images_seen = $4,
               images_added = $5, images_changed = $6, images_removed = $7, ecr_calls = $8, error = $9
           WHERE run_id = $1"#,
        run_id,
        if error.is_some() { "failed" } else { "succeeded" },
        counts.pages,
        counts.seen,
        counts.added,
        counts.changed,
        counts.removed,
        counts.ecr_calls,
        error,
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// The most recent runs of a registry (optionally one repository), newest first.
pub async fn recent_runs(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: Option<&str>,
    limit: i64,
) -> Result<Vec<SyncRun>, StoreError> {
    recent_visible_runs(pool, registry, repository, None, limit).await
}

/// The most recent runs of a registry (optionally one repository), newest
/// first, of the repositories in `namespaces` only (None: of every one).
pub async fn recent_visible_runs(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: Option<&str>,
    namespaces: Option<&[String]>,
    limit: i64,
) -> Result<Vec<SyncRun>, StoreError> {
    let rows = sqlx::query_as!(
        SyncRunRow,
        r#"SELECT run_id, repository, trigger, holder, started_at, finished_at, status, pages, images_seen,
                  images_added, images_changed, images_removed, ecr_calls, error
           FROM sync_runs
           WHERE account_id = $1 AND region = $2 AND ($3::text IS NULL OR repository = $3)
             AND ($4::text[] IS NULL OR repository IS NULL OR split_part(repository, '/', 1) = ANY($4))
           ORDER BY started_at DESC LIMIT $5"#,
        registry.account_id,
        registry.region,
        repository,
        namespaces,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SyncRun {
            run_id: r.run_id,
            repository: r.repository,
            trigger: r.trigger,
            holder: r.holder,
            started_at: r.started_at,
            finished_at: r.finished_at,
            status: r.status,
            counts: RunCounts {
                pages: r.pages,
                seen: r.images_seen,
                added: r.images_added,
                changed: r.images_changed,
                removed: r.images_removed,
                ecr_calls: r.ecr_calls,
            },
            error: r.error,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct SyncRunRow {
    run_id: Uuid,
    repository: Option<String>,
    trigger: String,
    holder: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    status: String,
    pages: i32,
    images_seen: i32,
    images_added: i32,
    images_changed: i32,
    images_removed: i32,
    ecr_calls: i32,
    error: Option<String>,
}

/// Marks a repository for the backstop: its images are read in the next
/// reconcile pass (an event for it failed or said too little, or the
/// listing saw it change outside the gateway).
pub async fn mark_dirty(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: &RepositoryName,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    mark_dirty_in(&mut tx, registry, repository).await?;
    tx.commit().await?;
    Ok(())
}

/// [`mark_dirty`] in a transaction.
pub async fn mark_dirty_in(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"INSERT INTO sync_state (account_id, region, repository, dirty_since) VALUES ($1, $2, $3, now())
           ON CONFLICT (account_id, region, repository) DO UPDATE
           SET dirty_since = COALESCE(sync_state.dirty_since, now())"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The cached repositories whose images a backstop pass reads: every one
/// that is dirty or was never synced, then at most `rotation` of those last
/// synced before `resync_before`, oldest first.
pub async fn due_for_images(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    resync_before: DateTime<Utc>,
    rotation: i64,
) -> Result<Vec<RepositoryName>, StoreError> {
    let names = sqlx::query_scalar!(
        r#"(SELECT r.name AS "name!" FROM repositories r
            LEFT JOIN sync_state s ON s.account_id = r.account_id AND s.region = r.region AND s.repository = r.name
            WHERE r.account_id = $1 AND r.region = $2 AND (s.last_synced_at IS NULL OR s.dirty_since IS NOT NULL))
           UNION
           (SELECT r.name FROM repositories r
            JOIN sync_state s ON s.account_id = r.account_id AND s.region = r.region AND s.repository = r.name
            WHERE r.account_id = $1 AND r.region = $2 AND s.last_synced_at < $3
            ORDER BY s.last_synced_at LIMIT $4)"#,
        registry.account_id,
        registry.region,
        resync_before,
        rotation,
    )
    .fetch_all(pool)
    .await?;
    Ok(names
        .iter()
        .filter_map(|n| RepositoryName::parse(n).ok())
        .collect())
}
