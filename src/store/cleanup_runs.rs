//! Cleanup runs and their items: the plan, each image's outcome, and the
//! worker's lease on the run (see the `cleanup` module).
//!
//! This file holds the runs themselves (insert, get, list, counts, cancel);
//! the worker's lease on a run is in `cleanup_runs/lease.rs`, the items in
//! `cleanup_runs/run_items.rs`, and the per-repository lock with what a
//! batch re-reads under it in `cleanup_runs/repository_lock.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use super::{StoreError, Tx};
use crate::domain::{Identity, RegistryRef};

/// The columns of [`RunRow`], for `concat!` (queries are static strings).
macro_rules! run_columns {
    () => {
        "id, account_id, region, repository, repository_prefix, policy_text, dry_run, state, \
         cancel_requested, planned, principal, principal_type, groups, auth_method, created_at, updated_at, \
         finished_at, attempts, batches, error, skipped"
    };
}

/// `query_as!(RunRow, …)`: `$head` and `$tail` are the SQL before and after
/// [`run_columns!`]'s list (the same, with the state typed).
macro_rules! run_rows {
    ($head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            RunRow,
            $head
                + r#"id, account_id, region, repository, repository_prefix, policy_text, dry_run,
         state AS "state: RunState", cancel_requested, planned, principal, principal_type, groups, auth_method,
         created_at, updated_at, finished_at, attempts, batches, error, skipped"#
                + $tail
            $(, $arg)*
        )
    };
}

// Declared after the macros above, which `lease` uses too.
mod lease;
mod repository_lock;
mod run_items;

pub use lease::{Renewed, claim_next, finish, hold, note_error, renew};
pub use repository_lock::{RepositoryLock, current_tags, lock_key, lock_repository, pinned};
pub use run_items::{
    ItemRow, Outcome, cancel_pending_items, items, next_batch, next_batch_number, set_outcomes, store_plan,
    submitted,
};

/// What a run is.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum RunState {
    /// Waiting for a worker.
    Pending,
    /// A worker holds it.
    Running,
    /// Done.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// One run as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    /// Its id.
    pub id: Uuid,
    /// The registry's account.
    pub account_id: String,
    /// The registry's region.
    pub region: String,
    /// One repository, or empty.
    pub repository: String,
    /// Or a prefix.
    pub repository_prefix: String,
    /// The policy given; None: each repository's own.
    pub policy_text: Option<String>,
    /// Plan only.
    pub dry_run: bool,
    /// Where it is.
    pub state: RunState,
    /// CancelCleanupRun was called.
    pub cancel_requested: bool,
    /// The plan (the items) is stored.
    pub planned: bool,
    /// Who started it.
    pub principal: String,
    /// CloudTrail's userIdentity.type of the starter.
    pub principal_type: String,
    /// The starter's groups.
    pub groups: Vec<String>,
    /// How the starter was identified.
    pub auth_method: String,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Times a worker took it up.
    pub attempts: i32,
    /// BatchDeleteImage calls made.
    pub batches: i32,
    /// Why it failed.
    pub error: String,
    /// Repositories left alone: `[{"repository", "reason"}]`.
    pub skipped: Value,
}

impl RunRow {
    /// The starter, for the audit records of the run's batches.
    pub fn identity(&self) -> Identity {
        Identity {
            principal: self.principal.clone(),
            principal_type: self.principal_type.clone(),
            groups: self.groups.clone(),
            auth_method: self.auth_method.clone(),
        }
    }
}

/// A run to insert.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Its id.
    pub id: Uuid,
    /// The registry.
    pub registry: RegistryRef,
    /// One repository, or empty.
    pub repository: String,
    /// Or a prefix.
    pub repository_prefix: String,
    /// The policy given; None: each repository's own.
    pub policy_text: Option<String>,
    /// Plan only.
    pub dry_run: bool,
    /// Who starts it.
    pub identity: Identity,
    /// Now.
    pub created_at: DateTime<Utc>,
}

/// Inserts a pending run.
pub async fn insert(tx: &mut Tx, run: &NewRun) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO cleanup_runs (id, account_id, region, repository, repository_prefix, policy_text, dry_run, \
         state, principal, principal_type, groups, auth_method, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12, $12)",
        run.id,
        run.registry.account_id,
        run.registry.region,
        run.repository,
        run.repository_prefix,
        run.policy_text,
        run.dry_run,
        run.identity.principal,
        run.identity.principal_type,
        &run.identity.groups,
        run.identity.auth_method,
        run.created_at,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A run by id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RunRow>, StoreError> {
    Ok(run_rows!("SELECT ", " FROM cleanup_runs WHERE id = $1", id)
        .fetch_optional(pool)
        .await?)
}

/// What ListCleanupRuns filters on.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only these registries, and in them the runs the caller may read.
    pub visibility: super::Visibility,
    /// Only runs over this repository or a prefix of it.
    pub repository: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
}

/// Runs newest first, after `(created_at, id)` when given.
pub async fn list(
    pool: &PgPool,
    filter: &RunFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RunRow>, StoreError> {
    let mut query = QueryBuilder::new(concat!(
        "SELECT ",
        run_columns!(),
        " FROM cleanup_runs WHERE true"
    ));
    // A run's namespace: its repository's, or its prefix's when the prefix
    // stays inside one; a shorter prefix could span namespaces (NULL: only a
    // caller who may read the whole registry sees it).
    filter.visibility.push_condition(
        &mut query,
        "account_id",
        "region",
        "CASE WHEN repository <> '' THEN split_part(repository, '/', 1) \
              WHEN strpos(repository_prefix, '/') > 0 THEN split_part(repository_prefix, '/', 1) END",
    );
    if let Some(repository) = &filter.repository {
        query
            .push(" AND (repository = ")
            .push_bind(repository.clone())
            .push(" OR (repository_prefix <> '' AND starts_with(")
            .push_bind(repository.clone())
            .push(", repository_prefix)))");
    }
    if let Some(state) = &filter.state {
        query.push(" AND state = ").push_bind(state.clone());
    }
    if let Some((at, id)) = after {
        query
            .push(" AND (created_at, id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    query
        .push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    Ok(query.build_query_as::<RunRow>().fetch_all(pool).await?)
}

/// Item counts by outcome, per run.
pub async fn counts(pool: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, HashMap<String, i64>>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT run_id, outcome, count(*) AS "count!" FROM cleanup_run_items WHERE run_id = ANY($1)
           GROUP BY run_id, outcome"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    let mut counts: HashMap<Uuid, HashMap<String, i64>> = HashMap::new();
    for row in rows {
        counts
            .entry(row.run_id)
            .or_default()
            .insert(row.outcome, row.count);
    }
    Ok(counts)
}

/// What a cancel request found.
#[derive(Debug)]
pub enum Cancel {
    /// No such run.
    NotFound,
    /// The run, now cancelled or being cancelled (or already cancelled).
    Accepted(Box<RunRow>),
    /// The run had already finished otherwise.
    Finished(Box<RunRow>),
}

/// Asks a run to stop: a pending run is cancelled at once, a running one
/// before its worker's next batch.
pub async fn request_cancel(pool: &PgPool, id: Uuid) -> Result<Cancel, StoreError> {
    let updated = run_rows!(
        "UPDATE cleanup_runs SET cancel_requested = true, updated_at = now(), \
         state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END, \
         finished_at = CASE WHEN state = 'pending' THEN now() ELSE finished_at END \
         WHERE id = $1 AND state IN ('pending', 'running') RETURNING ",
        "",
        id,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(run) = updated {
        return Ok(Cancel::Accepted(Box::new(run)));
    }
    Ok(match get(pool, id).await? {
        None => Cancel::NotFound,
        Some(run) if run.state == RunState::Cancelled => Cancel::Accepted(Box::new(run)),
        Some(run) => Cancel::Finished(Box::new(run)),
    })
}
