//! Remediation runs and their items (one per repository), and the worker's
//! lease on a run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, Tx};
use crate::domain::{Identity, RegistryRef};

/// A run as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunRow {
    /// Its id.
    pub id: Uuid,
    /// Registry account.
    pub account_id: String,
    /// Registry region.
    pub region: String,
    /// Only these rules; empty: all.
    pub rules: Vec<String>,
    /// Values for required tags.
    pub tags: Value,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// CancelRemediationRun was called.
    pub cancel_requested: bool,
    /// Who started it.
    pub principal: String,
    /// The starter's principal type.
    pub principal_type: String,
    /// The starter's groups.
    pub groups: Vec<String>,
    /// How the starter was identified.
    pub auth_method: String,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Times a worker took it up.
    pub attempts: i32,
    /// Why it failed.
    pub error: String,
}

impl RunRow {
    /// The starter, for the audit events of the run's changes.
    pub fn identity(&self) -> Identity {
        Identity {
            principal: self.principal.clone(),
            principal_type: self.principal_type.clone(),
            groups: self.groups.clone(),
            auth_method: self.auth_method.clone(),
        }
    }
}

/// One repository of a run.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ItemRow {
    /// The repository.
    pub repository: String,
    /// Its outcome (`pending` until the worker is done with it).
    pub outcome: String,
    /// The planned, then the made, changes (`[{field, before, after, rules}]`).
    pub changes: Value,
    /// What stays broken (`[{rule, field, actual, wanted, mendable, description}]`).
    pub left_findings: Value,
    /// Why it failed.
    pub message: String,
    /// The audit event of its change.
    pub audit_event_id: Option<Uuid>,
}

/// A run to insert, with its items.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Its id.
    pub id: Uuid,
    /// The registry.
    pub registry: RegistryRef,
    /// Only these rules.
    pub rules: Vec<String>,
    /// Values for required tags.
    pub tags: Value,
    /// Who starts it.
    pub identity: Identity,
    /// Now.
    pub created_at: DateTime<Utc>,
    /// (repository, planned changes, left findings).
    pub items: Vec<(String, Value, Value)>,
}

/// Inserts a pending run and its pending items.
pub async fn insert(tx: &mut Tx, run: &NewRun) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO remediation_runs (id, account_id, region, rules, tags, state, principal, principal_type, \
         groups, auth_method, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $10)",
        run.id,
        run.registry.account_id,
        run.registry.region,
        &run.rules,
        run.tags,
        run.identity.principal,
        run.identity.principal_type,
        &run.identity.groups,
        run.identity.auth_method,
        run.created_at,
    )
    .execute(&mut **tx)
    .await?;
    let (names, changes, left): (Vec<String>, Vec<Value>, Vec<Value>) = {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for (name, planned, left) in &run.items {
            columns.0.push(name.clone());
            columns.1.push(planned.clone());
            columns.2.push(left.clone());
        }
        columns
    };
    sqlx::query!(
        "INSERT INTO remediation_items (run_id, repository, outcome, changes, left_findings, updated_at) \
         SELECT $1, u.repository, 'pending', u.changes, u.left_findings, $5 \
         FROM UNNEST($2::text[], $3::jsonb[], $4::jsonb[]) AS u(repository, changes, left_findings)",
        run.id,
        &names,
        &changes,
        &left,
        run.created_at,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A run by id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<RunRow>, StoreError> {
    Ok(sqlx::query_as!(RunRow, "SELECT id, account_id, region, rules, tags, state, cancel_requested, principal, principal_type, groups, auth_method, created_at, updated_at, finished_at, attempts, error FROM remediation_runs WHERE id = $1", id)
        .fetch_optional(pool)
        .await?)
}

/// A run's items, by repository.
pub async fn items(pool: &PgPool, id: Uuid) -> Result<Vec<ItemRow>, StoreError> {
    Ok(sqlx::query_as!(
        ItemRow,
        "SELECT repository, outcome, changes, left_findings, message, audit_event_id \
         FROM remediation_items WHERE run_id = $1 ORDER BY repository",
        id
    )
    .fetch_all(pool)
    .await?)
}

/// Runs newest first, after the (created_at, id) keyset position, of the
/// given registries, all of them or (`principal`) only that caller's.
pub async fn list(
    pool: &PgPool,
    registries: &[(RegistryRef, bool)],
    principal: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RunRow>, StoreError> {
    let accounts: Vec<String> = registries.iter().map(|(r, _)| r.account_id.clone()).collect();
    let regions: Vec<String> = registries.iter().map(|(r, _)| r.region.clone()).collect();
    let everything: Vec<bool> = registries.iter().map(|(_, all)| *all).collect();
    let (after_time, after_id) = after.map_or((None, None), |(t, id)| (Some(t), Some(id)));
    Ok(sqlx::query_as!(
        RunRow,
        r#"SELECT r.id, r.account_id, r.region, r.rules, r.tags, r.state, r.cancel_requested, r.principal,
                  r.principal_type, r.groups, r.auth_method, r.created_at, r.updated_at, r.finished_at,
                  r.attempts, r.error
           FROM remediation_runs r
           JOIN UNNEST($1::text[], $2::text[], $3::bool[]) AS v(account_id, region, everything)
             ON v.account_id = r.account_id AND v.region = r.region
           WHERE (v.everything OR r.principal = $4)
             AND ($5::timestamptz IS NULL OR (r.created_at, r.id) < ($5, $6))
           ORDER BY r.created_at DESC, r.id DESC LIMIT $7"#,
        &accounts,
        &regions,
        &everything,
        principal,
        after_time,
        after_id,
        limit,
    )
    .fetch_all(pool)
    .await?)
}

/// What CancelRemediationRun found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Asked (or asked again); the worker stops before its next repository.
    Requested,
    /// The run had already ended.
    Ended,
    /// No such run.
    Missing,
}

/// Asks the worker to stop; a pending run nobody holds is cancelled at once.
pub async fn request_cancel(pool: &PgPool, id: Uuid) -> Result<Cancel, StoreError> {
    let mut tx = pool.begin().await?;
    let state = sqlx::query_scalar!("SELECT state FROM remediation_runs WHERE id = $1 FOR UPDATE", id)
        .fetch_optional(&mut *tx)
        .await?;
    let outcome = match state.as_deref() {
        None => Cancel::Missing,
        Some("succeeded" | "failed" | "cancelled") => Cancel::Ended,
        Some(_) => {
            sqlx::query!(
                "UPDATE remediation_runs SET cancel_requested = true, updated_at = now() WHERE id = $1",
                id
            )
            .execute(&mut *tx)
            .await?;
            Cancel::Requested
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Takes the oldest unfinished run nobody holds (never started, or its
/// worker's lease ran out) for `holder`.
pub async fn claim_next(pool: &PgPool, holder: &str, lease: Duration) -> Result<Option<RunRow>, StoreError> {
    Ok(sqlx::query_as!(
        RunRow,
        "UPDATE remediation_runs SET state = 'running', holder = $1, lease_until = now() + make_interval(secs => $2), \
         attempts = attempts + 1, updated_at = now() \
         WHERE id = (SELECT id FROM remediation_runs WHERE state IN ('pending', 'running') \
                     AND (lease_until IS NULL OR lease_until < now()) \
                     ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, account_id, region, rules, tags, state, cancel_requested, principal, principal_type, groups, \
         auth_method, created_at, updated_at, finished_at, attempts, error",
        holder,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?)
}

/// Extends `holder`'s lease; `Some(cancel_requested)`, or None when the run
/// is no longer this holder's.
pub async fn renew(
    pool: &PgPool,
    id: Uuid,
    holder: &str,
    lease: Duration,
) -> Result<Option<bool>, StoreError> {
    Ok(sqlx::query_scalar!(
        "UPDATE remediation_runs SET lease_until = now() + make_interval(secs => $3) \
         WHERE id = $1 AND holder = $2 AND state = 'running' RETURNING cancel_requested",
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
        "SELECT 1 AS \"one!\" FROM remediation_runs WHERE id = $1 AND holder = $2 AND state = 'running' FOR UPDATE",
        id,
        holder
    )
    .fetch_optional(&mut **tx)
    .await?
    .is_some())
}

/// Ends a run (cancelled: its pending items too).
pub async fn finish(tx: &mut Tx, id: Uuid, state: &str, error: &str) -> Result<(), StoreError> {
    if state == "cancelled" {
        sqlx::query!(
            "UPDATE remediation_items SET outcome = 'cancelled', updated_at = now() \
             WHERE run_id = $1 AND outcome = 'pending'",
            id
        )
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE remediation_runs SET state = $2, error = $3, finished_at = now(), updated_at = now(), \
         holder = NULL, lease_until = NULL WHERE id = $1",
        id,
        state,
        error,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Hands the run back (lease ended now) so another worker resumes it at once.
pub async fn release(pool: &PgPool, id: Uuid, holder: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE remediation_runs SET lease_until = now() WHERE id = $1 AND holder = $2",
        id,
        holder
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The first pending item of the run, by repository.
pub async fn next_pending(pool: &PgPool, id: Uuid) -> Result<Option<ItemRow>, StoreError> {
    Ok(sqlx::query_as!(
        ItemRow,
        "SELECT repository, outcome, changes, left_findings, message, audit_event_id \
         FROM remediation_items WHERE run_id = $1 AND outcome = 'pending' ORDER BY repository LIMIT 1",
        id
    )
    .fetch_optional(pool)
    .await?)
}

/// Notes the audit event of the change about to be made (before ECR is called).
pub async fn start_item(tx: &mut Tx, id: Uuid, repository: &str, event: Uuid) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE remediation_items SET audit_event_id = $3, updated_at = now() WHERE run_id = $1 AND repository = $2",
        id,
        repository,
        event,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!("UPDATE remediation_runs SET updated_at = now() WHERE id = $1", id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records an item's outcome.
pub async fn set_outcome(
    tx: &mut Tx,
    id: Uuid,
    repository: &str,
    outcome: &str,
    changes: &Value,
    left: &Value,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE remediation_items SET outcome = $3, changes = $4, left_findings = $5, message = $6, \
         updated_at = now() WHERE run_id = $1 AND repository = $2",
        id,
        repository,
        outcome,
        changes,
        left,
        message,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Of `names`, the repositories an unfinished run of the registry has not
/// finished with, each with that run.
pub async fn busy(
    pool: &PgPool,
    registry: &RegistryRef,
    names: &[String],
) -> Result<Vec<(String, Uuid)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT i.repository, i.run_id FROM remediation_items i JOIN remediation_runs r ON r.id = i.run_id \
         WHERE r.account_id = $1 AND r.region = $2 AND r.state IN ('pending', 'running') \
           AND i.outcome = 'pending' AND i.repository = ANY($3) ORDER BY i.repository",
        registry.account_id,
        registry.region,
        names,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.repository, r.run_id)).collect())
}

/// Each run's items by outcome: (run, outcome, count).
pub async fn counts(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, String, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT run_id, outcome, count(*) AS "count!" FROM remediation_items
           WHERE run_id = ANY($1) GROUP BY run_id, outcome"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.run_id, r.outcome, r.count)).collect())
}
