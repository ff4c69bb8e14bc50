//! The per-repository lock that serialises pin changes and cleanup batches,
//! and what a batch re-reads under it: the active pins and the cached tags
//! of its images.

use std::collections::HashMap;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool};

use crate::domain::RegistryRef;
use crate::store::{StoreError, Tx};

/// The advisory-lock key that serialises pin changes and cleanup batches of
/// one repository: a batch holds it from its pin check until ECR answers
/// (the cleanup worker), PinImage takes it before writing the pin.
pub fn lock_key(registry: &RegistryRef, repository: &str) -> String {
    format!("cleanup:{}:{}:{repository}", registry.account_id, registry.region)
}

/// A session-level advisory lock on one repository, on a connection of its
/// own: PinImage's transaction takes the same lock ([`lock_repository`]), so
/// it waits while a cleanup batch is between its pin check and ECR's answer.
/// The connection is detached from the pool: if the holder dies, closing it
/// releases the lock.
pub struct RepositoryLock {
    connection: Option<PgConnection>,
    key: String,
}

impl RepositoryLock {
    /// Waits for the lock of `repository` in `registry` and takes it.
    pub async fn take(
        pool: &PgPool,
        registry: &RegistryRef,
        repository: &str,
    ) -> Result<RepositoryLock, StoreError> {
        let pooled: PoolConnection<sqlx::Postgres> = pool.acquire().await?;
        let mut connection = pooled.detach();
        let key = lock_key(registry, repository);
        sqlx::query!("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            .execute(&mut connection)
            .await?;
        Ok(RepositoryLock {
            connection: Some(connection),
            key,
        })
    }

    /// Releases the lock and closes its connection.
    pub async fn release(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let _ = sqlx::query_scalar!("SELECT pg_advisory_unlock(hashtextextended($1, 0))", self.key)
                .fetch_one(&mut connection)
                .await;
            let _ = sqlx::Connection::close(connection).await;
        }
    }
}

/// Takes the repository's lock until `tx` ends (waits while a batch holds it).
pub async fn lock_repository(
    tx: &mut Tx,
    account_id: &str,
    region: &str,
    repository: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        format!("cleanup:{account_id}:{region}:{repository}"),
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

/// Active pins' holders of `digests`, read inside `tx`.
pub async fn pinned(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    digests: &[String],
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT digest, holder FROM pins WHERE account_id = $1 AND region = $2 AND repository = $3 \
         AND digest = ANY($4) AND (expires_at IS NULL OR expires_at > now()) ORDER BY digest, holder",
        registry.account_id,
        registry.region,
        repository,
        digests,
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        holders.entry(row.digest).or_default().push(row.holder);
    }
    Ok(holders)
}

/// The cached tags of `digests` now, read inside `tx`.
pub async fn current_tags(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    digests: &[String],
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT digest, tags FROM images WHERE account_id = $1 AND region = $2 AND repository = $3 \
         AND digest = ANY($4)",
        registry.account_id,
        registry.region,
        repository,
        digests,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| (row.digest, row.tags)).collect())
}
