//! What the metrics' database gauges read (`admin::gauges` refreshes them on
//! an interval): sync times per registry and the progress of running
//! cleanup runs. Both read small tables (a row per repository, a row per
//! run and its items).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// When a registry's cached repositories were last synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySyncTimes {
    /// The registry's account.
    pub account_id: String,
    /// The registry's region.
    pub region: String,
    /// The most recent completed sync of any of its repositories.
    pub newest: DateTime<Utc>,
    /// The least recent one: how old the stalest cached repository is.
    pub oldest: DateTime<Utc>,
}

/// One running cleanup run's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupProgress {
    /// The run.
    pub run_id: Uuid,
    /// The registry's account.
    pub account_id: String,
    /// The registry's region.
    pub region: String,
    /// Images the run set out to delete (not saved by a pin or protection, not skipped).
    pub planned: i64,
    /// Of those, the ones gone from ECR (deleted, or already gone).
    pub deleted: i64,
}

/// The sync times of every registry that has a synced, cached repository.
pub async fn sync_times(pool: &PgPool) -> Result<Vec<RegistrySyncTimes>, StoreError> {
    Ok(sqlx::query_as!(
        RegistrySyncTimes,
        r#"SELECT s.account_id, s.region,
                  max(s.last_synced_at) AS "newest!", min(s.last_synced_at) AS "oldest!"
           FROM sync_state s
           JOIN repositories r
             ON r.account_id = s.account_id AND r.region = s.region AND r.name = s.repository
           WHERE s.last_synced_at IS NOT NULL
           GROUP BY s.account_id, s.region"#
    )
    .fetch_all(pool)
    .await?)
}

/// The progress of every running cleanup run.
pub async fn running_cleanups(pool: &PgPool) -> Result<Vec<CleanupProgress>, StoreError> {
    Ok(sqlx::query_as!(
        CleanupProgress,
        r#"SELECT c.id AS run_id, c.account_id, c.region,
                  count(i.digest) FILTER (WHERE i.outcome NOT IN
                      ('saved_by_pin', 'saved_by_protection', 'skipped', 'would_expire')) AS "planned!",
                  count(i.digest) FILTER (WHERE i.outcome IN ('deleted', 'already_gone')) AS "deleted!"
           FROM cleanup_runs c
           LEFT JOIN cleanup_run_items i ON i.run_id = c.id
           WHERE c.state = 'running'
           GROUP BY c.id, c.account_id, c.region"#
    )
    .fetch_all(pool)
    .await?)
}
