//! Idempotency records: one row per (principal, request_id).

use chrono::{DateTime, Utc};

use super::{StoreError, Tx};

/// What the caller's `request_id` means for this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This call owns the operation (first attempt, or a retry of a failed or abandoned one).
    Owned {
        /// 1 for the first attempt.
        attempt: i32,
    },
    /// The operation already succeeded: replay its response.
    Succeeded(StoredOperation),
    /// Another call with this id is running; its lease ends then.
    InProgress {
        /// When the running attempt's lease ends.
        lease_until: DateTime<Utc>,
    },
    /// The id was used for a different request.
    Mismatch {
        /// The RPC the id was first used with.
        method: String,
    },
}

/// The stored outcome of a succeeded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOperation {
    /// The encoded protobuf response.
    pub response: Vec<u8>,
}

/// Claims `request_id` for this call, inside the caller's transaction.
pub async fn claim(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
    method: &str,
    request_hash: &[u8],
    lease_until: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO operations (principal, request_id, method, request_hash, state, lease_until)
           VALUES ($1, $2, $3, $4, 'pending', $5)
           ON CONFLICT (principal, request_id) DO NOTHING
           RETURNING attempts"#,
        principal,
        request_id,
        method,
        request_hash,
        lease_until,
    )
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(attempt) = inserted {
        return Ok(Claim::Owned { attempt });
    }
    let existing = sqlx::query!(
        r#"SELECT method, request_hash, state, lease_until, response
           FROM operations WHERE principal = $1 AND request_id = $2 FOR UPDATE"#,
        principal,
        request_id,
    )
    .fetch_one(&mut **tx)
    .await?;
    if existing.method != method || existing.request_hash != request_hash {
        return Ok(Claim::Mismatch {
            method: existing.method,
        });
    }
    match existing.state.as_str() {
        "succeeded" => Ok(Claim::Succeeded(StoredOperation {
            response: existing.response.unwrap_or_default(),
        })),
        "pending" if existing.lease_until > Utc::now() => Ok(Claim::InProgress {
            lease_until: existing.lease_until,
        }),
        _ => {
            let attempt = sqlx::query_scalar!(
                r#"UPDATE operations SET state = 'pending', lease_until = $3, attempts = attempts + 1,
                          error_code = NULL, error_message = NULL, updated_at = now()
                   WHERE principal = $1 AND request_id = $2 RETURNING attempts"#,
                principal,
                request_id,
                lease_until,
            )
            .fetch_one(&mut **tx)
            .await?;
            Ok(Claim::Owned { attempt })
        }
    }
}

/// Records a succeeded operation and the response to replay.
pub async fn succeed(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
    response: &[u8],
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE operations SET state = 'succeeded', response = $3, updated_at = now()
           WHERE principal = $1 AND request_id = $2"#,
        principal,
        request_id,
        response,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a failed attempt; a retry with the same id may try again.
pub async fn fail(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
    error_code: &str,
    error_message: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE operations SET state = 'failed', error_code = $3, error_message = $4, updated_at = now()
           WHERE principal = $1 AND request_id = $2"#,
        principal,
        request_id,
        error_code,
        error_message,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Where an operation stands, as recovery sees it under the row's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// An attempt holds a live lease: it may still finish.
    Running,
    /// An attempt finished the operation.
    Succeeded,
    /// It failed, or its attempt was abandoned (lease over): nobody finished it.
    Unfinished,
}

/// Locks the operation for the rest of `tx` and says where it stands; None
/// when there is no such operation.
pub async fn lock_standing(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
) -> Result<Option<Standing>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT state, lease_until > now() AS "live!" FROM operations
           WHERE principal = $1 AND request_id = $2 FOR UPDATE"#,
        principal,
        request_id,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row
        .map(|row| (row.state, row.live))
        .map(|(state, live)| match state.as_str() {
            "succeeded" => Standing::Succeeded,
            "pending" if live => Standing::Running,
            _ => Standing::Unfinished,
        }))
}

/// The attempt that finished an operation, as its audit record has it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Finisher {
    /// Its audit event.
    pub event_id: uuid::Uuid,
    /// Its `responseElements`.
    pub response_elements: Option<serde_json::Value>,
    /// Whether another attempt of the operation started between `after`'s and this one.
    pub attempts_between: bool,
}

/// The succeeded record of the attempt that finished operation
/// `(principal, request_id)` of `event_name`, other than `attempt` (a
/// replay is not an attempt); None when the trail holds none.
pub async fn finisher(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
    event_name: &str,
    attempt: uuid::Uuid,
) -> Result<Option<Finisher>, StoreError> {
    let finisher = sqlx::query_as!(
        Finisher,
        r#"WITH attempts AS (
             SELECT event_id, event_time, status, response_elements FROM audit_events
             WHERE principal = $1 AND client_request_id = $2 AND event_name = $3 AND NOT read_only
               AND response_elements ->> 'replayed' IS DISTINCT FROM 'true')
         SELECT f.event_id, f.response_elements,
                EXISTS (SELECT 1 FROM attempts b, attempts a WHERE a.event_id = $4 AND b.event_id <> $4
                          AND b.event_id <> f.event_id AND b.event_time > a.event_time
                          AND b.event_time < f.event_time) AS "attempts_between!"
         FROM attempts f WHERE f.status = 'succeeded' AND f.event_id <> $4
         ORDER BY f.event_time LIMIT 1"#,
        principal,
        request_id,
        event_name,
        attempt,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(finisher)
}

/// Records that recovery found an interrupted attempt's change made and
/// nobody finished the operation since: it succeeded, and a retry replays `response`.
pub async fn succeed_recovered(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
    response: &[u8],
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE operations SET state = 'succeeded', response = $3, error_code = NULL, error_message = NULL, \
                updated_at = now() \
         WHERE principal = $1 AND request_id = $2 AND state <> 'succeeded' \
           AND NOT (state = 'pending' AND lease_until > now())",
        principal,
        request_id,
        response,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records that an abandoned attempt was resolved as not made (or not
/// known): a retry with the same `request_id` runs at once.
pub async fn fail_abandoned(
    tx: &mut Tx,
    principal: &str,
    request_id: &str,
    error_code: &str,
    error_message: &str,
) -> Result<(), StoreError> {
    // Only an attempt nobody took over: a retry may have finished it since.
    sqlx::query!(
        "UPDATE operations SET state = 'failed', error_code = $3, error_message = $4, updated_at = now() \
         WHERE principal = $1 AND request_id = $2 AND state = 'pending' AND lease_until < now()",
        principal,
        request_id,
        error_code,
        error_message,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether the attempt holding `lease_until` on operation `(principal,
/// request_id)` still holds it and has not ended: true while the operation
/// is pending under that same lease.
pub async fn still_running(
    pool: &sqlx::PgPool,
    principal: &str,
    request_id: &str,
    lease_until: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let running: Option<bool> = sqlx::query_scalar!(
        r#"SELECT state = 'pending' AND lease_until = $3 AS "running!" FROM operations
           WHERE principal = $1 AND request_id = $2"#,
        principal,
        request_id,
        lease_until,
    )
    .fetch_optional(pool)
    .await?;
    Ok(running.unwrap_or(false))
}
