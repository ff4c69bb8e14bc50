//! The chain's signed digests: the newest one's sequence, storing one, and
//! those of a range of sequences.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::StoreError;

/// One signed digest of the chain's head (signed, checked and exported by
/// the audit layer's `digest` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDigest {
    /// The last chain sequence it covers.
    pub sequence: i64,
    /// That link's hash.
    pub hash: Vec<u8>,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
    /// The signer's public key (32 bytes).
    pub public_key: Vec<u8>,
    /// The Ed25519 signature of the digest's message.
    pub signature: Vec<u8>,
}

/// The newest signed digest's sequence (0: none yet).
pub async fn last_digest(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT coalesce(max(seq), 0) AS "seq!" FROM audit_digests"#)
            .fetch_one(pool)
            .await?,
    )
}

/// Stores a signed digest (a second one for the same sequence is ignored).
pub async fn insert_digest(pool: &PgPool, digest: &SignedDigest) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO audit_digests (seq, hash, signed_at, public_key, signature) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
        digest.sequence,
        &digest.hash,
        digest.signed_at,
        &digest.public_key,
        &digest.signature,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Signed digests of sequences `from..=to`, in order.
pub async fn digests_between(pool: &PgPool, from: i64, to: i64) -> Result<Vec<SignedDigest>, StoreError> {
    Ok(sqlx::query_as!(
        SignedDigest,
        r#"SELECT seq AS sequence, hash, signed_at, public_key, signature FROM audit_digests
           WHERE seq BETWEEN $1 AND $2 ORDER BY seq"#,
        from,
        to,
    )
    .fetch_all(pool)
    .await?)
}
