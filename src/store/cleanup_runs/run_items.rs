//! A run's items: the stored plan, the next batch, the items left
//! `submitted`, each item's outcome, the batch count, cancelling what was
//! not sent, and the pages ListCleanupRunItems reads.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use crate::store::{StoreError, Tx};

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
