//! Reading the audit trail and chaining it: lookups (newest first, keyset
//! pages), the chain's links in sequence order (the live stream and
//! verification), and the chainer's step.
//!
//! The chain's side tables are in files of their own: the signed digests in
//! `audit_trail/digests.rs`, the sinks' cursors in
//! `audit_trail/sink_cursors.rs`, the retention purges in
//! `audit_trail/purges.rs`.

mod digests;
mod purges;
mod sink_cursors;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use super::{StoreError, Tx};

pub use digests::{SignedDigest, digests_between, insert_digest, last_digest};
pub use purges::{Purge, last_purge, purge, purgeable_through};
pub use sink_cursors::{advance_sink, lock_sink};

/// The channel the chainer notifies with the new head sequence after each step.
pub const CHANNEL: &str = "ecr_gateway_audit_chain";

/// One stored event with its chain link (if chained yet).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRow {
    /// `eventID`.
    pub event_id: Uuid,
    /// `eventTime`.
    pub event_time: DateTime<Utc>,
    /// `eventName`.
    pub event_name: String,
    /// `eventSource`.
    pub event_source: String,
    /// `readOnly`.
    pub read_only: bool,
    /// pending / succeeded / failed.
    pub status: String,
    /// `userIdentity.principalId`.
    pub principal: String,
    /// `userIdentity.type`.
    pub principal_type: String,
    /// The principal's groups.
    pub groups: Vec<String>,
    /// How the caller was identified.
    pub auth_method: String,
    /// `sourceIPAddress`.
    pub source_ip: Option<String>,
    /// `userAgent`.
    pub user_agent: Option<String>,
    /// The registry alias.
    pub registry_alias: Option<String>,
    /// `recipientAccountId`.
    pub account_id: Option<String>,
    /// `awsRegion`.
    pub region: Option<String>,
    /// `requestID`.
    pub gateway_request_id: Uuid,
    /// The caller's request_id.
    pub client_request_id: Option<String>,
    /// `requestParameters`.
    pub request_parameters: Value,
    /// `responseElements`.
    pub response_elements: Option<Value>,
    /// `errorCode`.
    pub error_code: Option<String>,
    /// `errorMessage`.
    pub error_message: Option<String>,
    /// The ECR request ids.
    pub ecr_request_ids: Vec<String>,
    /// `resources`.
    pub resources: Value,
    /// `authorization`: the decision that let the call in (or kept it out).
    pub authz_decision: Option<Value>,
    /// When the outcome was recorded.
    pub finalized_at: Option<DateTime<Utc>>,
    /// The chain position.
    pub seq: Option<i64>,
    /// The previous link's hash.
    pub prev_hash: Option<Vec<u8>>,
    /// This link's hash.
    pub hash: Option<Vec<u8>>,
}

/// The columns of [`AuditRow`] over `audit_events e LEFT JOIN audit_chain_links l`.
macro_rules! audit_columns {
    () => {
        "e.event_id, e.event_time, e.event_name, e.event_source, e.read_only, e.status, e.principal, \
         e.principal_type, e.groups, e.auth_method, e.source_ip, e.user_agent, e.registry_alias, e.account_id, \
         e.region, e.gateway_request_id, e.client_request_id, e.request_parameters, e.response_elements, \
         e.error_code, e.error_message, e.ecr_request_ids, e.resources, e.finalized_at, e.authz_decision, \
         l.seq, l.prev_hash, l.hash"
    };
}

/// `query_as!(AuditRow, …)` over [`audit_columns!`]: `$head` and `$tail` are
/// the SQL before and after the column list, one literal each or lists of
/// literals (the link columns are nullable: a left join's, or `ON false`'s).
macro_rules! audit_rows {
    ($head:literal, $tail:literal $(, $arg:expr)* $(,)?) => {
        audit_rows!([$head], [$tail] $(, $arg)*)
    };
    ([$($head:literal),+], [$($tail:literal),+] $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            AuditRow,
            $($head +)+ r#"e.event_id, e.event_time, e.event_name, e.event_source, e.read_only, e.status, e.principal,
         e.principal_type, e.groups, e.auth_method, e.source_ip, e.user_agent, e.registry_alias, e.account_id,
         e.region, e.gateway_request_id, e.client_request_id, e.request_parameters, e.response_elements,
         e.error_code, e.error_message, e.ecr_request_ids, e.resources, e.finalized_at, e.authz_decision,
         l.seq AS "seq?", l.prev_hash AS "prev_hash?", l.hash AS "hash?""#
                $(+ $tail)+
            $(, $arg)*
        )
    };
}
pub(crate) use audit_rows;

/// What LookupAuditEvents and StreamAuditEvents filter on (every one given must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditFilter {
    /// `eventName`.
    pub event_name: Option<String>,
    /// `userIdentity.principalId`.
    pub principal: Option<String>,
    /// The first resource's ARN: exact, or a prefix.
    pub resource_arn: Option<(String, bool)>,
    /// The registry alias.
    pub registry: Option<String>,
    /// `readOnly`.
    pub read_only: Option<bool>,
    /// `errorCode`; `*` means any error.
    pub error_code: Option<String>,
    /// At or after.
    pub start: Option<DateTime<Utc>>,
    /// Before.
    pub end: Option<DateTime<Utc>>,
}

impl AuditFilter {
    fn push(&self, query: &mut QueryBuilder<sqlx::Postgres>) {
        if let Some(name) = &self.event_name {
            query.push(" AND e.event_name = ").push_bind(name.clone());
        }
        if let Some(principal) = &self.principal {
            query.push(" AND e.principal = ").push_bind(principal.clone());
        }
        match &self.resource_arn {
            Some((arn, false)) => {
                query.push(" AND e.resource_arn = ").push_bind(arn.clone());
            }
            Some((prefix, true)) => {
                query
                    .push(" AND e.resource_arn LIKE ")
                    .push_bind(format!("{}%", escape_like(prefix)));
            }
            None => {}
        }
        if let Some(alias) = &self.registry {
            query.push(" AND e.registry_alias = ").push_bind(alias.clone());
        }
        if let Some(read_only) = self.read_only {
            query.push(" AND e.read_only = ").push_bind(read_only);
        }
        match self.error_code.as_deref() {
            Some("*") => {
                query.push(" AND e.error_code IS NOT NULL");
            }
            Some(code) => {
                query.push(" AND e.error_code = ").push_bind(code.to_owned());
            }
            None => {}
        }
        if let Some(start) = self.start {
            query.push(" AND e.event_time >= ").push_bind(start);
        }
        if let Some(end) = self.end {
            query.push(" AND e.event_time < ").push_bind(end);
        }
    }
}

/// `prefix` as a literal LIKE prefix.
fn escape_like(prefix: &str) -> String {
    prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Finalised events matching `filter`, newest first, after `(event_time, event_id)` when given.
pub async fn lookup(
    pool: &PgPool,
    filter: &AuditFilter,
    visibility: &super::Visibility,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut query = QueryBuilder::new(concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_events e LEFT JOIN audit_chain_links l ON l.event_id = e.event_id \
          WHERE e.status <> 'pending'"
    ));
    filter.push(&mut query);
    // An event about a repository is shown where the caller may read it; one
    // about no repository where they may read its whole registry (or, with
    // no registry, every registry).
    visibility.push_alias_condition(
        &mut query,
        "e.registry_alias",
        "CASE WHEN strpos(e.resource_arn, ':repository/') > 0 \
              THEN split_part(split_part(e.resource_arn, ':repository/', 2), '/', 1) END",
    );
    if let Some((at, id)) = after {
        query
            .push(" AND (e.event_time, e.event_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    query
        .push(" ORDER BY e.event_time DESC, e.event_id DESC LIMIT ")
        .push_bind(limit);
    // Planned for its values: which index serves a lookup depends on them (a
    // resource prefix can use its index only when the planner sees the
    // prefix; a rare principal wants its own index, a common one the time
    // index). The pool's generic plans suit the hot key reads, not this.
    let mut tx = pool.begin().await?;
    sqlx::query!("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    let rows = query.build_query_as::<AuditRow>().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Chained events after sequence `after`, in chain order, matching `filter`
/// (its time range excepted), at most `limit`; and the last sequence scanned
/// (so that a filtered stream moves on past events it does not show).
pub async fn chained_after(
    pool: &PgPool,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> Result<(Vec<AuditRow>, i64), StoreError> {
    let scanned: Option<i64> = sqlx::query_scalar!(
        "SELECT max(seq) FROM (SELECT seq FROM audit_chain_links WHERE seq > $1 ORDER BY seq LIMIT $2) s",
        after,
        limit,
    )
    .fetch_one(pool)
    .await?;
    let Some(upto) = scanned else {
        return Ok((Vec::new(), after));
    };
    let mut query = QueryBuilder::new(concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_chain_links l JOIN audit_events e ON e.event_id = l.event_id WHERE l.seq > "
    ));
    query.push_bind(after).push(" AND l.seq <= ").push_bind(upto);
    let mut untimed = filter.clone();
    untimed.start = None;
    untimed.end = None;
    untimed.push(&mut query);
    query.push(" ORDER BY l.seq");
    Ok((query.build_query_as::<AuditRow>().fetch_all(pool).await?, upto))
}

/// Where a stream starting from an event id or a time begins: the sequence before it.
pub async fn sequence_before(
    pool: &PgPool,
    event_id: Option<Uuid>,
    time: Option<DateTime<Utc>>,
) -> Result<Option<i64>, StoreError> {
    if let Some(id) = event_id {
        return Ok(
            sqlx::query_scalar!("SELECT seq FROM audit_chain_links WHERE event_id = $1", id)
                .fetch_optional(pool)
                .await?,
        );
    }
    if let Some(time) = time {
        let first: Option<i64> = sqlx::query_scalar!(
            "SELECT min(seq) FROM audit_chain_links WHERE chained_at >= $1",
            time
        )
        .fetch_one(pool)
        .await?;
        return Ok(Some(match first {
            Some(seq) => seq - 1,
            None => head(pool).await?,
        }));
    }
    Ok(Some(head(pool).await?))
}

/// The newest sequence number (0 before the first link).
pub async fn head(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!("SELECT last_seq FROM audit_chain")
        .fetch_one(pool)
        .await?)
}

/// The links of `from..=to` with their events, in sequence order.
pub async fn chain_range(pool: &PgPool, from: i64, to: i64) -> Result<Vec<AuditRow>, StoreError> {
    Ok(audit_rows!(
        "SELECT ",
        " FROM audit_chain_links l JOIN audit_events e ON e.event_id = l.event_id \
          WHERE l.seq BETWEEN $1 AND $2 ORDER BY l.seq",
        from,
        to,
    )
    .fetch_all(pool)
    .await?)
}

/// The hash of link `seq` (the zero hash for 0), if it exists or a purge
/// ended at it.
pub async fn hash_at(pool: &PgPool, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    if seq == 0 {
        return Ok(Some(vec![0; 32]));
    }
    Ok(sqlx::query_scalar!(
        r#"SELECT hash AS "hash!" FROM audit_chain_links WHERE seq = $1
           UNION ALL SELECT through_hash FROM audit_purges WHERE through_seq = $1 LIMIT 1"#,
        seq,
    )
    .fetch_optional(pool)
    .await?)
}

/// The links of events chained within `[from, to)`, in sequence order (for export).
pub async fn chained_between(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<AuditRow>, StoreError> {
    Ok(audit_rows!(
        "SELECT ",
        " FROM audit_chain_links l JOIN audit_events e ON e.event_id = l.event_id \
          WHERE l.chained_at >= $1 AND l.chained_at < $2 ORDER BY l.seq",
        from,
        to,
    )
    .fetch_all(pool)
    .await?)
}

/// How events are hashed into the chain (the audit layer's
/// `chain::LINKER`): `canonical` gives the bytes a stored
/// event's link covers, `record` the same bytes for a record before it is
/// stored; both are computed before the chain's head is locked. The link itself,
/// sha256(previous hash || canonical), is computed by Postgres while it holds
/// the lock (`audit_append_links`, migration 0017), and checked by the
/// audit layer's `chain::link_bytes` when the chain is verified.
#[derive(Clone, Copy)]
pub struct Linker {
    /// The bytes a stored event's link covers.
    pub canonical: fn(&AuditRow) -> Vec<u8>,
    /// The same bytes for a finalised record (its resources as JSON) before
    /// it is stored, or `None` when the stored row could differ from it.
    pub record: fn(&crate::domain::AuditRecord, &Value) -> Option<Vec<u8>>,
}

/// One chainer step: takes up to `limit` queued events (mutations, finalised
/// in their own transactions) and links them after the chain's head.
/// Returns how many were chained; 0 when the queue is empty or another
/// replica is chaining right now.
pub async fn chain_step(pool: &PgPool, limit: i64, linker: Linker) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await?;
    let head: Option<i64> = sqlx::query_scalar!("SELECT last_seq FROM audit_chain FOR UPDATE SKIP LOCKED")
        .fetch_optional(&mut *tx)
        .await?;
    if head.is_none() {
        return Ok(0);
    }
    let rows = audit_rows!(
        "WITH taken AS (DELETE FROM audit_chain_queue WHERE event_id IN \
           (SELECT event_id FROM audit_chain_queue ORDER BY event_id LIMIT $1) RETURNING event_id) \
         SELECT ",
        " FROM taken t JOIN audit_events e ON e.event_id = t.event_id \
          LEFT JOIN audit_chain_links l ON false \
          ORDER BY e.finalized_at, e.event_id",
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    append_links(&mut tx, &rows, linker).await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Links `rows` (finalised, not chained yet, in this order) after the chain's
/// head inside `tx`, in one statement: `audit_append_links` waits for the
/// head's row lock, which the transaction then holds until it ends, so links
/// are appended by one transaction at a time and commit in sequence order,
/// with no round trip to the gateway while the lock is held but the commit.
/// Listeners hear of the new head when `tx` commits.
pub async fn append_links(tx: &mut Tx, rows: &[AuditRow], linker: Linker) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.event_id).collect();
    let canonical: Vec<Vec<u8>> = rows.iter().map(linker.canonical).collect();
    // One row: the new head's sequence, which the caller does not need.
    sqlx::query_scalar!("SELECT audit_append_links($1, $2, $3)", &ids, &canonical, CHANNEL)
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// The chain's head: last sequence and its hash.
pub async fn head_with_hash(pool: &PgPool) -> Result<(i64, Vec<u8>), StoreError> {
    let head = sqlx::query!("SELECT last_seq, last_hash FROM audit_chain")
        .fetch_one(pool)
        .await?;
    Ok((head.last_seq, head.last_hash))
}

/// How many events wait to be linked into the chain (the metric
/// `ecr_gateway_audit_events_pending`).
pub async fn chain_queue_length(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM audit_chain_queue"#)
            .fetch_one(pool)
            .await?,
    )
}
