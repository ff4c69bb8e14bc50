//! Cleanup runs and their items: the plan, each image's outcome, and the
//! worker's lease on the run (see the `cleanup` module).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use super::{StoreError, Tx};
use crate::domain::{Identity, RegistryRef};

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

/// One image of a run.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ItemRow {
    /// The repository.
    pub repository: String,
    /// The image.
    pub digest: String,
    /// Its tags at planning.
    pub tags: Vec<String>,
    /// Push time.
    pub pushed_at: DateTime<Utc>,
    /// The rule that selected it.
    pub rule_priority: i32,
    /// `expire` or `transition`.
    pub action: String,
    /// See the migration for the values.
    pub outcome: String,
    /// Details.
    pub message: String,
    /// The batch it was sent in.
    pub batch: Option<i32>,
    /// The audit record of that batch.
    pub audit_event_id: Option<Uuid>,
}

/// The columns of [`ItemRow`].
macro_rules! item_columns {
    () => {
        "repository, digest, tags, pushed_at, rule_priority, action, outcome, message, batch, audit_event_id"
    };
}

/// `query_as!(ItemRow, …)`: `$head` and `$tail` are the SQL before and after [`item_columns!`]'s list.
macro_rules! item_rows {
    ($head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            ItemRow,
            $head
                + "repository, digest, tags, pushed_at, rule_priority, action, outcome, message, batch, audit_event_id"
                + $tail
            $(, $arg)*
        )
    };
}

/// Stores the plan: every item, the skipped repositories, `planned = true`.
pub async fn store_plan(tx: &mut Tx, id: Uuid, items: &[ItemRow], skipped: &Value) -> Result<(), StoreError> {
    for chunk in items.chunks(5_000) {
        let mut query = QueryBuilder::new(
            "INSERT INTO cleanup_run_items (run_id, repository, digest, tags, pushed_at, rule_priority, action, \
             outcome, message, updated_at) ",
        );
        query.push_values(chunk, |mut row, item| {
            row.push_bind(id)
                .push_bind(&item.repository)
                .push_bind(&item.digest)
                .push_bind(&item.tags)
                .push_bind(item.pushed_at)
                .push_bind(item.rule_priority)
                .push_bind(&item.action)
                .push_bind(&item.outcome)
                .push_bind(&item.message)
                .push("now()");
        });
        query.push(" ON CONFLICT DO NOTHING");
        query.build().execute(&mut **tx).await?;
    }
    sqlx::query!(
        "UPDATE cleanup_runs SET planned = true, skipped = $2, updated_at = now() WHERE id = $1",
        id,
        skipped,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The next up to `limit` pending items of one repository (the first with any), oldest first.
pub async fn next_batch(pool: &PgPool, id: Uuid, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
    Ok(item_rows!(
        "SELECT ",
        " FROM cleanup_run_items \
         WHERE run_id = $1 AND outcome = 'pending' AND repository = \
               (SELECT repository FROM cleanup_run_items WHERE run_id = $1 AND outcome = 'pending' \
                ORDER BY repository LIMIT 1) \
         ORDER BY pushed_at, digest LIMIT $2",
        id,
        limit,
    )
    .fetch_all(pool)
    .await?)
}

/// Items sent to ECR whose answer was not recorded (a worker died, or the call failed).
pub async fn submitted(pool: &PgPool, id: Uuid) -> Result<Vec<ItemRow>, StoreError> {
    Ok(item_rows!(
        "SELECT ",
        " FROM cleanup_run_items WHERE run_id = $1 AND outcome = 'submitted' \
         ORDER BY repository, batch, pushed_at, digest",
        id,
    )
    .fetch_all(pool)
    .await?)
}

/// One item's new outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The image.
    pub digest: String,
    /// The outcome.
    pub outcome: &'static str,
    /// Details.
    pub message: String,
}

/// Records outcomes of one repository's items (and, for `submitted`, the batch and its audit record).
pub async fn set_outcomes(
    tx: &mut Tx,
    id: Uuid,
    repository: &str,
    outcomes: &[Outcome],
    batch: Option<(i32, Uuid)>,
) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let digests: Vec<&str> = outcomes.iter().map(|o| o.digest.as_str()).collect();
    let values: Vec<&str> = outcomes.iter().map(|o| o.outcome).collect();
    let messages: Vec<&str> = outcomes.iter().map(|o| o.message.as_str()).collect();
    sqlx::query!(
        "UPDATE cleanup_run_items AS i SET outcome = u.outcome, message = u.message, updated_at = now(), \
         batch = coalesce($4, i.batch), audit_event_id = coalesce($5, i.audit_event_id) \
         FROM UNNEST($3::text[], $6::text[], $7::text[]) AS u(digest, outcome, message) \
         WHERE i.run_id = $1 AND i.repository = $2 AND i.digest = u.digest",
        id,
        repository,
        &digests as &[&str],
        batch.map(|b| b.0),
        batch.map(|b| b.1),
        &values as &[&str],
        &messages as &[&str],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Counts a batch sent to ECR; returns its number.
pub async fn next_batch_number(tx: &mut Tx, id: Uuid) -> Result<i32, StoreError> {
    Ok(sqlx::query_scalar!(
        "UPDATE cleanup_runs SET batches = batches + 1, updated_at = now() WHERE id = $1 RETURNING batches",
        id,
    )
    .fetch_one(&mut **tx)
    .await?)
}

/// Marks every item not yet sent as cancelled.
pub async fn cancel_pending_items(tx: &mut Tx, id: Uuid) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE cleanup_run_items SET outcome = 'cancelled', message = 'the run was cancelled before its batch', \
         updated_at = now() WHERE run_id = $1 AND outcome = 'pending'",
        id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A page of a run's items, by repository, push time and digest.
pub async fn items(
    pool: &PgPool,
    id: Uuid,
    outcome: Option<&str>,
    after: Option<&(String, DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<ItemRow>, StoreError> {
    let mut query = QueryBuilder::new(concat!(
        "SELECT ",
        item_columns!(),
        " FROM cleanup_run_items WHERE run_id = "
    ));
    query.push_bind(id);
    if let Some(outcome) = outcome {
        query.push(" AND outcome = ").push_bind(outcome.to_owned());
    }
    if let Some((repository, pushed_at, digest)) = after {
        query
            .push(" AND (repository, pushed_at, digest) > (")
            .push_bind(repository.clone())
            .push(", ")
            .push_bind(*pushed_at)
            .push(", ")
            .push_bind(digest.clone())
            .push(")");
    }
    query
        .push(" ORDER BY repository, pushed_at, digest LIMIT ")
        .push_bind(limit);
    Ok(query.build_query_as::<ItemRow>().fetch_all(pool).await?)
}

/// The advisory-lock key that serialises pin changes and cleanup batches of
/// one repository: a batch holds it from its pin check until ECR answers
/// (the cleanup worker), PinImage takes it before writing the pin.
pub fn lock_key(registry: &RegistryRef, repository: &str) -> String {
    format!("cleanup:{}:{}:{repository}", registry.account_id, registry.region)
}

/// A session-level advisory lock on one repository, on a connection of its
/// own: PinImage's transaction takes the same lock ([`lock_repository`]), so
/// it waits while a cleanup batch is between its pin check and ECR's answer.
/// The connection is detached from the pool: if the holder dies, closing it
/// releases the lock.
pub struct RepositoryLock {
    connection: Option<PgConnection>,
    key: String,
}

impl RepositoryLock {
    /// Waits for the lock of `repository` in `registry` and takes it.
    pub async fn take(
        pool: &PgPool,
        registry: &RegistryRef,
        repository: &str,
    ) -> Result<RepositoryLock, StoreError> {
        let pooled: PoolConnection<sqlx::Postgres> = pool.acquire().await?;
        let mut connection = pooled.detach();
        let key = lock_key(registry, repository);
        sqlx::query!("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            .execute(&mut connection)
            .await?;
        Ok(RepositoryLock {
            connection: Some(connection),
            key,
        })
    }

    /// Releases the lock and closes its connection.
    pub async fn release(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let _ = sqlx::query_scalar!("SELECT pg_advisory_unlock(hashtextextended($1, 0))", self.key)
                .fetch_one(&mut connection)
                .await;
            let _ = sqlx::Connection::close(connection).await;
        }
    }
}

/// Takes the repository's lock until `tx` ends (waits while a batch holds it).
pub async fn lock_repository(
    tx: &mut Tx,
    account_id: &str,
    region: &str,
    repository: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        format!("cleanup:{account_id}:{region}:{repository}"),
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

/// Active pins' holders of `digests`, read inside `tx`.
pub async fn pinned(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    digests: &[String],
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT digest, holder FROM pins WHERE account_id = $1 AND region = $2 AND repository = $3 \
         AND digest = ANY($4) AND (expires_at IS NULL OR expires_at > now()) ORDER BY digest, holder",
        registry.account_id,
        registry.region,
        repository,
        digests,
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        holders.entry(row.digest).or_default().push(row.holder);
    }
    Ok(holders)
}

/// The cached tags of `digests` now, read inside `tx`.
pub async fn current_tags(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    digests: &[String],
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT digest, tags FROM images WHERE account_id = $1 AND region = $2 AND repository = $3 \
         AND digest = ANY($4)",
        registry.account_id,
        registry.region,
        repository,
        digests,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| (row.digest, row.tags)).collect())
}
