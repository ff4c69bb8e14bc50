//! The audit sinks' cursors: the last sequence each sink delivered, taken
//! for a transaction and moved on in it.

use crate::store::{StoreError, Tx};

/// Takes a sink's cursor for this transaction (created at 0 the first time);
/// None while another replica holds it.
pub async fn lock_sink(tx: &mut Tx, sink: &str) -> Result<Option<i64>, StoreError> {
    sqlx::query!(
        "INSERT INTO audit_sink_cursors (sink, seq, updated_at) VALUES ($1, 0, now()) ON CONFLICT DO NOTHING",
        sink,
    )
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query_scalar!(
        "SELECT seq FROM audit_sink_cursors WHERE sink = $1 FOR UPDATE SKIP LOCKED",
        sink,
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// Moves a sink's cursor (inside the transaction of [`lock_sink`]).
pub async fn advance_sink(tx: &mut Tx, sink: &str, seq: i64) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE audit_sink_cursors SET seq = $2, updated_at = now() WHERE sink = $1",
        sink,
        seq,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
