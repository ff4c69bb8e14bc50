//! The worker's lease on a run: taking the oldest unfinished run up,
//! renewing the lease, holding the run inside a transaction, noting a
//! retried error and ending the run.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{RunRow, RunState};
use crate::store::{StoreError, Tx};

/// Takes the oldest unfinished run nobody holds (never started, or its
/// worker's lease ran out) for `holder`.
pub async fn claim_next(pool: &PgPool, holder: &str, lease: Duration) -> Result<Option<RunRow>, StoreError> {
    Ok(run_rows!(
        "UPDATE cleanup_runs SET state = 'running', holder = $1, lease_until = now() + make_interval(secs => $2), \
         attempts = attempts + 1, started_at = coalesce(started_at, now()), updated_at = now() \
         WHERE id = (SELECT id FROM cleanup_runs WHERE state IN ('pending', 'running') \
                     AND (lease_until IS NULL OR lease_until < now()) \
                     ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING ",
        "",
        holder,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?)
}

/// What a renewed lease tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Renewed {
    /// CancelCleanupRun was called.
    pub cancel_requested: bool,
    /// The plan is stored.
    pub planned: bool,
}

/// Extends `holder`'s lease; None when the run is no longer this holder's
/// (another worker took it over).
pub async fn renew(
    pool: &PgPool,
    id: Uuid,
    holder: &str,
    lease: Duration,
) -> Result<Option<Renewed>, StoreError> {
    Ok(sqlx::query_as!(
        Renewed,
        "UPDATE cleanup_runs SET lease_until = now() + make_interval(secs => $3) \
         WHERE id = $1 AND holder = $2 AND state = 'running' RETURNING cancel_requested, planned",
        id,
        holder,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?)
}

/// Locks the run for `holder` inside `tx`; false when it is no longer theirs.
pub async fn hold(tx: &mut Tx, id: Uuid, holder: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT 1 AS "held!" FROM cleanup_runs WHERE id = $1 AND holder = $2 AND state = 'running' FOR UPDATE"#,
        id,
        holder,
    )
    .fetch_optional(&mut **tx)
    .await?
    .is_some())
}

/// Ends a run.
pub async fn finish(tx: &mut Tx, id: Uuid, state: RunState, error: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE cleanup_runs SET state = $2, error = $3, finished_at = now(), updated_at = now(), \
         holder = NULL, lease_until = NULL WHERE id = $1",
        id,
        state as RunState,
        error,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records an error the worker will retry after (the run keeps running).
pub async fn note_error(pool: &PgPool, id: Uuid, error: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE cleanup_runs SET error = $2, updated_at = now() WHERE id = $1",
        id,
        error,
    )
    .execute(pool)
    .await?;
    Ok(())
}
