//! Retention purges: the newest one, how far the chain may be purged, and
//! recording a purge with the removal of its events and links.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::StoreError;

/// A recorded retention purge: links `from_seq..=through_seq` were archived and removed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Purge {
    /// The first purged sequence.
    pub from_seq: i64,
    /// The last purged sequence: the remaining chain starts after it.
    pub through_seq: i64,
    /// That link's hash: the remaining chain's first link follows it.
    pub through_hash: Vec<u8>,
    /// Only links chained before this were purged.
    pub cutoff: DateTime<Utc>,
    /// The archive file's name.
    pub archive: String,
    /// The archive's SHA-256 (hex).
    pub archive_sha256: String,
    /// When the purge was committed.
    pub purged_at: DateTime<Utc>,
}

/// The newest retention purge, if any.
pub async fn last_purge(pool: &PgPool) -> Result<Option<Purge>, StoreError> {
    Ok(sqlx::query_as!(
        Purge,
        "SELECT from_seq, through_seq, through_hash, cutoff, archive, archive_sha256, purged_at \
         FROM audit_purges ORDER BY through_seq DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

/// The last sequence of the chain's oldest run after `after`, at most `limit`
/// links long, whose links were all chained before `cutoff` and delivered to
/// every sink named (a sink without a cursor has delivered nothing).
pub async fn purgeable_through(
    pool: &PgPool,
    after: i64,
    cutoff: DateTime<Utc>,
    sinks: &[String],
    limit: i64,
) -> Result<Option<i64>, StoreError> {
    let delivered: i64 = sqlx::query_scalar!(
        r#"SELECT coalesce(min(coalesce(c.seq, 0)), 9223372036854775807) AS "delivered!"
           FROM UNNEST($1::text[]) s(name) LEFT JOIN audit_sink_cursors c ON c.sink = s.name"#,
        sinks,
    )
    .fetch_one(pool)
    .await?;
    let through: Option<i64> = sqlx::query_scalar!(
        "SELECT max(seq) FROM ( \
           SELECT seq, bool_and(chained_at < $2) OVER (ORDER BY seq) AS old_so_far \
           FROM (SELECT seq, chained_at FROM audit_chain_links WHERE seq > $1 ORDER BY seq LIMIT $3) r \
         ) w WHERE old_so_far",
        after,
        cutoff,
        limit,
    )
    .fetch_one(pool)
    .await?;
    Ok(through.map(|t| t.min(delivered)).filter(|t| *t > after))
}

/// Records a purge and removes its events and links, in one transaction.
/// The database refuses a purge that does not continue the last one, names a
/// link with another hash, or covers a link chained after the cutoff.
/// Returns the number of events removed.
pub async fn purge(pool: &PgPool, purge: &Purge) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO audit_purges (from_seq, through_seq, through_hash, cutoff, archive, archive_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        purge.from_seq,
        purge.through_seq,
        &purge.through_hash,
        purge.cutoff,
        &purge.archive,
        &purge.archive_sha256,
    )
    .execute(&mut *tx)
    .await?;
    let removed = sqlx::query!(
        "DELETE FROM audit_events WHERE event_id IN \
           (SELECT event_id FROM audit_chain_links WHERE seq BETWEEN $1 AND $2)",
        purge.from_seq,
        purge.through_seq,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query!(
        "DELETE FROM audit_chain_links WHERE seq BETWEEN $1 AND $2",
        purge.from_seq,
        purge.through_seq,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed)
}
