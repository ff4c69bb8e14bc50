//! Pins: which images deploy systems hold as in use.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};

use super::{StoreError, Tx};
use crate::domain::RegistryRef;

/// One pin.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PinRow {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// Repository.
    pub repository: String,
    /// Pinned digest.
    pub digest: String,
    /// Holder, e.g. deploy/prod/payments-api.
    pub holder: String,
    /// Why.
    pub reason: String,
    /// Who pinned it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops protecting; None: until unpinned.
    pub expires_at: Option<DateTime<Utc>>,
    /// The image's tags when pinned.
    pub tags: Vec<String>,
}

/// Creates or renews a pin (same image and holder: reason, expiry and tags are replaced).
pub async fn upsert(tx: &mut Tx, pin: &PinRow) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO pins (account_id, region, repository, digest, holder, reason, created_by, created_at, \
         expires_at, tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (account_id, region, repository, digest, holder) DO UPDATE SET reason = EXCLUDED.reason, \
         created_by = EXCLUDED.created_by, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at, \
         tags = EXCLUDED.tags",
        pin.account_id,
        pin.region,
        pin.repository,
        pin.digest,
        pin.holder,
        pin.reason,
        pin.created_by,
        pin.created_at,
        pin.expires_at,
        &pin.tags,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes a holder's pin; true when there was one.
pub async fn delete(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
    holder: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query!(
        "DELETE FROM pins WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4 AND holder = $5",
        registry.account_id,
        registry.region,
        repository,
        digest,
        holder,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0)
}

/// Active pins of a repository, of the given digests only when `digests` is Some.
pub async fn active(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digests: Option<&[String]>,
) -> Result<Vec<PinRow>, StoreError> {
    let mut query = QueryBuilder::new(
        "SELECT account_id, region, repository, digest, holder, reason, created_by, created_at, expires_at, tags \
         FROM pins WHERE account_id = ",
    );
    query.push_bind(registry.account_id.clone());
    query.push(" AND region = ").push_bind(registry.region.clone());
    query.push(" AND repository = ").push_bind(repository.to_owned());
    query.push(" AND (expires_at IS NULL OR expires_at > now())");
    if let Some(digests) = digests {
        query
            .push(" AND digest = ANY(")
            .push_bind(digests.to_vec())
            .push(")");
    }
    query.push(" ORDER BY digest, holder");
    Ok(query.build_query_as::<PinRow>().fetch_all(pool).await?)
}

/// What ListPins filters on.
#[derive(Debug, Clone, Default)]
pub struct PinFilter {
    /// Only these registries, and in them what the caller may read.
    pub visibility: super::Visibility,
    /// Only this repository.
    pub repository: Option<String>,
    /// Only this holder.
    pub holder: Option<String>,
    /// Expired pins too.
    pub include_expired: bool,
}

/// A page of pins ordered by key; `after` is the last key of the previous page.
pub async fn list(
    pool: &PgPool,
    filter: &PinFilter,
    after: Option<&(String, String, String, String, String)>,
    limit: i64,
) -> Result<Vec<PinRow>, StoreError> {
    let mut query = QueryBuilder::new(
        "SELECT account_id, region, repository, digest, holder, reason, created_by, created_at, expires_at, tags \
         FROM pins WHERE true",
    );
    filter.visibility.push_condition(
        &mut query,
        "account_id",
        "region",
        &super::visibility::namespace_of("repository"),
    );
    if let Some(repository) = &filter.repository {
        query.push(" AND repository = ").push_bind(repository.clone());
    }
    if let Some(holder) = &filter.holder {
        query.push(" AND holder = ").push_bind(holder.clone());
    }
    if !filter.include_expired {
        query.push(" AND (expires_at IS NULL OR expires_at > now())");
    }
    if let Some((account, region, repository, digest, holder)) = after {
        query.push(" AND (account_id, region, repository, digest, holder) > (");
        query
            .push_bind(account.clone())
            .push(", ")
            .push_bind(region.clone())
            .push(", ");
        query
            .push_bind(repository.clone())
            .push(", ")
            .push_bind(digest.clone())
            .push(", ");
        query.push_bind(holder.clone()).push(")");
    }
    query
        .push(" ORDER BY account_id, region, repository, digest, holder LIMIT ")
        .push_bind(limit);
    Ok(query.build_query_as::<PinRow>().fetch_all(pool).await?)
}
