//! Keys the gateway keeps in Postgres so that every replica shares them.

use sqlx::PgPool;

use super::StoreError;

/// The deployment's page-token key: `candidate` when no replica stored one
/// yet, else the one stored (the first writer wins; everyone reads it back).
pub async fn page_token_key(pool: &PgPool, candidate: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
    sqlx::query!(
        "INSERT INTO page_token_key (id, key) VALUES (true, $1) ON CONFLICT (id) DO NOTHING",
        candidate.as_slice(),
    )
    .execute(pool)
    .await?;
    // A statement of its own: its snapshot sees a row a concurrent replica
    // committed while the insert above waited on it.
    Ok(sqlx::query_scalar!("SELECT key FROM page_token_key WHERE id")
        .fetch_one(pool)
        .await?)
}
