//! Vulnerability exceptions: insert, get, revoke, list, and those that
//! cover an image (for the gate).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use crate::domain::RegistryRef;
use crate::store::{StoreError, Tx};

/// A stored vulnerability exception.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExceptionRow {
    /// Id.
    pub id: Uuid,
    /// Vulnerability id.
    pub cve_id: String,
    /// org / namespace / repository / image.
    pub scope: String,
    /// Registry account (all but org).
    pub account_id: Option<String>,
    /// Registry region (all but org).
    pub region: Option<String>,
    /// Namespace (namespace scope).
    pub namespace: Option<String>,
    /// Repository (repository and image scopes).
    pub repository: Option<String>,
    /// Digest (image scope).
    pub digest: Option<String>,
    /// Why.
    pub justification: String,
    /// Creator.
    pub created_by: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expires.
    pub expires_at: DateTime<Utc>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Revoker.
    pub revoked_by: Option<String>,
    /// Why revoked.
    pub revoke_reason: Option<String>,
}

/// Stores a new exception.
pub async fn insert_exception(tx: &mut Tx, row: &ExceptionRow) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO vulnerability_exceptions (id, cve_id, scope, account_id, region, namespace, repository, digest, \
         justification, created_by, created_at, expires_at, revoked_at, revoked_by, revoke_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        row.id,
        row.cve_id,
        row.scope,
        row.account_id,
        row.region,
        row.namespace,
        row.repository,
        row.digest,
        row.justification,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.revoked_at,
        row.revoked_by,
        row.revoke_reason,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One exception.
pub async fn get_exception(pool: &PgPool, id: Uuid) -> Result<Option<ExceptionRow>, StoreError> {
    Ok(sqlx::query_as!(
        ExceptionRow,
        "SELECT id, cve_id, scope, account_id, region, namespace, repository, digest, justification, created_by, \
         created_at, expires_at, revoked_at, revoked_by, revoke_reason FROM vulnerability_exceptions WHERE id = $1",
        id,
    )
    .fetch_optional(pool)
    .await?)
}

/// Revokes an active exception; returns it as it is now (None when there is
/// no such exception).
pub async fn revoke_exception(
    tx: &mut Tx,
    id: Uuid,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<ExceptionRow>, StoreError> {
    sqlx::query!(
        "UPDATE vulnerability_exceptions SET revoked_at = $2, revoked_by = $3, revoke_reason = $4 \
         WHERE id = $1 AND revoked_at IS NULL",
        id,
        now,
        by,
        reason,
    )
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query_as!(
        ExceptionRow,
        "SELECT id, cve_id, scope, account_id, region, namespace, repository, digest, justification, created_by, \
         created_at, expires_at, revoked_at, revoked_by, revoke_reason FROM vulnerability_exceptions WHERE id = $1",
        id,
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// What ListVulnerabilityExceptions filters on.
#[derive(Debug, Clone, Default)]
pub struct ExceptionFilter {
    /// Only this vulnerability.
    pub cve_id: Option<String>,
    /// Only this registry (account, region).
    pub registry: Option<(String, String)>,
    /// Only this repository.
    pub repository: Option<String>,
    /// Include expired and revoked ones.
    pub include_inactive: bool,
    /// What the caller may read: org-wide exceptions (they apply to
    /// everyone) and those whose repository or namespace it may read.
    pub visibility: crate::store::Visibility,
}

/// A page of exceptions, newest first; `after` is the last (created_at, id).
pub async fn list_exceptions(
    pool: &PgPool,
    filter: &ExceptionFilter,
    now: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ExceptionRow>, StoreError> {
    let mut query = QueryBuilder::new(
        "SELECT id, cve_id, scope, account_id, region, namespace, repository, digest, justification, created_by, \
         created_at, expires_at, revoked_at, revoked_by, revoke_reason FROM vulnerability_exceptions WHERE TRUE",
    );
    if let Some(cve) = &filter.cve_id {
        query.push(" AND cve_id = ").push_bind(cve.clone());
    }
    if let Some((account, region)) = &filter.registry {
        query.push(" AND account_id = ").push_bind(account.clone());
        query.push(" AND region = ").push_bind(region.clone());
    }
    if let Some(repository) = &filter.repository {
        query.push(" AND repository = ").push_bind(repository.clone());
    }
    // A registry-wide exception (no repository, no namespace) only for a
    // caller who may read the whole registry.
    query.push(" AND (account_id IS NULL OR (true");
    filter.visibility.push_condition(
        &mut query,
        "account_id",
        "region",
        "COALESCE(split_part(repository, '/', 1), namespace)",
    );
    query.push("))");
    if !filter.include_inactive {
        query
            .push(" AND revoked_at IS NULL AND expires_at > ")
            .push_bind(now);
    }
    if let Some((created_at, id)) = after {
        query.push(" AND (created_at, id) < (").push_bind(created_at);
        query.push(", ").push_bind(id).push(")");
    }
    query
        .push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    Ok(query.build_query_as::<ExceptionRow>().fetch_all(pool).await?)
}

/// The exceptions (vulnerability id, expiry) that are not revoked and cover
/// this image: org-wide, its namespace, its repository, or its digest.
/// Expiry is checked by the caller at decision time.
pub async fn covering(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let namespace = repository.split('/').next().unwrap_or(repository);
    let rows = sqlx::query!(
        r#"SELECT cve_id, expires_at FROM vulnerability_exceptions
           WHERE revoked_at IS NULL AND expires_at > now() AND (
                 scope = 'org'
              OR (account_id = $1 AND region = $2 AND (
                     (scope = 'namespace' AND namespace = $3)
                  OR (scope = 'repository' AND repository = $4)
                  OR (scope = 'image' AND repository = $4 AND digest = $5))))"#,
        registry.account_id,
        registry.region,
        namespace,
        repository,
        digest,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.cve_id, row.expires_at)).collect())
}
