//! The inventory's change log (migrations/0023_inventory_changes.sql):
//! triggers write it; the sequencer gives committed changes their cursor;
//! WatchImages reads it; retention prunes it.

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{ChangeKind, InventoryChange, ScanCounts};

/// Channel on which writers say that unsequenced changes committed.
pub const PENDING_CHANNEL: &str = "ecr_gateway_changes_pending";
/// Channel on which the sequencer announces a new head (payload: its seq).
pub const HEAD_CHANNEL: &str = "ecr_gateway_changes";

/// Gives up to `max_rows` committed changes their seqs; returns the head.
pub async fn sequence(pool: &sqlx::PgPool, max_rows: i32) -> Result<i64, StoreError> {
    let head = sqlx::query_scalar!("SELECT sequence_inventory_changes($1)", max_rows)
        .fetch_one(pool)
        .await?;
    Ok(head.unwrap_or(0))
}

/// The log's bounds: its head, and the seq through which retention pruned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The newest seq.
    pub head: i64,
    /// Changes up to here are gone: a cursor below it is out of range.
    pub pruned_through: i64,
}

/// The log's bounds now.
pub async fn bounds(pool: &sqlx::PgPool) -> Result<Bounds, StoreError> {
    let row = sqlx::query!("SELECT seq, pruned_through FROM inventory_change_head")
        .fetch_one(pool)
        .await?;
    Ok(Bounds {
        head: row.seq,
        pruned_through: row.pruned_through,
    })
}

/// The changes after `seq`, oldest first, at most `limit`.
pub async fn after(pool: &sqlx::PgPool, seq: i64, limit: i64) -> Result<Vec<InventoryChange>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT seq AS "seq!", at, account_id, region, repository, digest, kind, tags, changed_tags, detail
           FROM inventory_changes WHERE seq > $1 ORDER BY seq LIMIT $2"#,
        seq,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let kind = ChangeKind::from_stored(&row.kind)?;
            let detail = row.detail;
            Some(InventoryChange {
                seq: row.seq,
                at: row.at,
                account_id: row.account_id,
                region: row.region,
                repository: row.repository,
                digest: row.digest,
                kind,
                tags: row.tags,
                changed_tags: row.changed_tags,
                scan: (kind == ChangeKind::Scanned)
                    .then(|| serde_json::from_value::<ScanCounts>(detail.clone()).ok())
                    .flatten(),
                holder: detail.get("holder").and_then(|h| h.as_str()).map(str::to_owned),
                pushed_at: detail
                    .get("pushedAt")
                    .and_then(|t| serde_json::from_value::<DateTime<Utc>>(t.clone()).ok()),
            })
        })
        .collect())
}

/// Removes the sequenced changes written before `cutoff` (at most `batch`)
/// and records how far the log is pruned. Returns how many were removed.
pub async fn prune(pool: &sqlx::PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    // The oldest `batch` changes, walked by seq (which follows `at`), those before the cutoff.
    let through = sqlx::query_scalar!(
        r#"SELECT max(seq) FROM (SELECT seq, at FROM inventory_changes
               WHERE seq > (SELECT pruned_through FROM inventory_change_head)
               ORDER BY seq LIMIT $2) oldest
           WHERE at < $1"#,
        cutoff,
        batch,
    )
    .fetch_one(&mut *tx)
    .await?;
    let Some(through) = through else {
        return Ok(0);
    };
    let removed = sqlx::query!("DELETE FROM inventory_changes WHERE seq <= $1", through)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query!(
        "UPDATE inventory_change_head SET pruned_through = GREATEST(pruned_through, $1)",
        through
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed)
}
