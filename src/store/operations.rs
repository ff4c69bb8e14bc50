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
