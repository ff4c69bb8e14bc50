//! The repository cache: what ECR said about each repository, and when.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{StoreError, Tx};
use crate::domain::{Encryption, RegistryRef, RepositoryName, RepositoryState, TagMutability};

/// Identifies a repository: registry account, region and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RepositoryKey {
    /// AWS account id.
    pub account_id: String,
    /// AWS region.
    pub region: String,
    /// Repository name.
    pub name: String,
}

/// A cached repository and when it was last confirmed against ECR.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRepository {
    /// Account and region of the registry.
    pub account_id: String,
    /// AWS region.
    pub region: String,
    /// The repository.
    pub state: RepositoryState,
    /// When ECR last confirmed it.
    pub synced_at: DateTime<Utc>,
    /// When its lifecycle and repository policies were read from ECR (`None`: never).
    pub policies_read_at: Option<DateTime<Utc>>,
}

/// Filters of a repository listing.
#[derive(Debug, Clone, Default)]
pub struct RepositoryFilter {
    /// The registries to list and what the caller may read in each.
    pub visibility: super::Visibility,
    /// Name prefix; empty for all.
    pub prefix: String,
    /// Tags every repository must carry.
    pub tags: BTreeMap<String, String>,
    /// Keyset position: list strictly after this key.
    pub after: Option<RepositoryKey>,
    /// Rows to return.
    pub limit: i64,
}

/// Inserts or replaces one repository's cache row: everything in `state` was
/// read from ECR (or set there) by `synced_at`, its tag mutability included.
pub async fn upsert(
    tx: &mut Tx,
    registry: &RegistryRef,
    state: &RepositoryState,
    synced_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (encryption_type, kms_key) = encryption_columns(&state.encryption);
    sqlx::query!(
        r#"INSERT INTO repositories (account_id, region, name, arn, uri, created_at, tag_mutability,
               exclusion_filters, scan_on_push, encryption_type, kms_key, tags, lifecycle_policy,
               repository_policy, synced_at, settings_synced_at, policies_synced_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $15)
           ON CONFLICT (account_id, region, name) DO UPDATE SET
               arn = EXCLUDED.arn, uri = EXCLUDED.uri, created_at = EXCLUDED.created_at,
               tag_mutability = EXCLUDED.tag_mutability, exclusion_filters = EXCLUDED.exclusion_filters,
               scan_on_push = EXCLUDED.scan_on_push, encryption_type = EXCLUDED.encryption_type,
               kms_key = EXCLUDED.kms_key, tags = EXCLUDED.tags, lifecycle_policy = EXCLUDED.lifecycle_policy,
               repository_policy = EXCLUDED.repository_policy, synced_at = EXCLUDED.synced_at,
               settings_synced_at = EXCLUDED.settings_synced_at,
               policies_synced_at = EXCLUDED.policies_synced_at"#,
        registry.account_id,
        registry.region,
        state.name.as_str(),
        state.arn,
        state.uri,
        state.created_at,
        state.tag_mutability.as_ecr_str(),
        Value::from(state.exclusion_filters.clone()),
        state.scan_on_push,
        encryption_type,
        kms_key,
        tags_json(&state.tags),
        state.lifecycle_policy,
        state.repository_policy,
        synced_at,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes what one `DescribeRepositories` of the repository said, read by
/// `read_at`: its settings (tag mutability, exclusion filters, scanning,
/// encryption) and `settings_synced_at`. With `tags` (read by then too) the
/// row's tags and `synced_at` as well; without, a cached row keeps its tags
/// and a new one starts with none. Policies, which it does not read, are kept.
pub async fn refresh_described(
    tx: &mut Tx,
    registry: &RegistryRef,
    state: &RepositoryState,
    tags: Option<&BTreeMap<String, String>>,
    read_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (encryption_type, kms_key) = encryption_columns(&state.encryption);
    sqlx::query!(
        r#"INSERT INTO repositories AS r (account_id, region, name, arn, uri, created_at, tag_mutability,
               exclusion_filters, scan_on_push, encryption_type, kms_key, tags, synced_at, settings_synced_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, COALESCE($12, '{}'::jsonb), $13, $13)
           ON CONFLICT (account_id, region, name) DO UPDATE SET
               arn = EXCLUDED.arn, uri = EXCLUDED.uri, created_at = EXCLUDED.created_at,
               tag_mutability = EXCLUDED.tag_mutability, exclusion_filters = EXCLUDED.exclusion_filters,
               scan_on_push = EXCLUDED.scan_on_push, encryption_type = EXCLUDED.encryption_type,
               kms_key = EXCLUDED.kms_key, settings_synced_at = EXCLUDED.settings_synced_at,
               tags = COALESCE($12, r.tags),
               synced_at = CASE WHEN $12 IS NULL THEN r.synced_at ELSE EXCLUDED.synced_at END"#,
        registry.account_id,
        registry.region,
        state.name.as_str(),
        state.arn,
        state.uri,
        state.created_at,
        state.tag_mutability.as_ecr_str(),
        Value::from(state.exclusion_filters.clone()),
        state.scan_on_push,
        encryption_type,
        kms_key,
        tags.map(tags_json),
        read_at,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether the cache has a row for the repository.
pub async fn exists(pool: &sqlx::PgPool, registry: &RegistryRef, name: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM repositories WHERE account_id = $1 AND region = $2 AND name = $3) AS "exists!""#,
        registry.account_id,
        registry.region,
        name,
    )
    .fetch_one(pool)
    .await?)
}

/// Replaces a registry's rows with what a full listing of ECR returned, in one
/// transaction: rows are upserted in one statement (policies, which a listing
/// does not read, are kept), and rows ECR no longer has are removed. A row
/// written after the listing began (`synced_at`: a create or update through
/// the gateway, a read-through) is newer than the listing and stays as it is.
pub async fn replace_registry(
    tx: &mut Tx,
    registry: &RegistryRef,
    states: &[RepositoryState],
    synced_at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let names: Vec<String> = states.iter().map(|s| s.name.to_string()).collect();
    let arns: Vec<String> = states.iter().map(|s| s.arn.clone()).collect();
    let uris: Vec<String> = states.iter().map(|s| s.uri.clone()).collect();
    let created: Vec<Option<DateTime<Utc>>> = states.iter().map(|s| s.created_at).collect();
    let mutability: Vec<String> = states
        .iter()
        .map(|s| s.tag_mutability.as_ecr_str().to_owned())
        .collect();
    let filters: Vec<Value> = states
        .iter()
        .map(|s| Value::from(s.exclusion_filters.clone()))
        .collect();
    let scan: Vec<bool> = states.iter().map(|s| s.scan_on_push).collect();
    let (enc_types, kms_keys): (Vec<String>, Vec<Option<String>>) = states
        .iter()
        .map(|s| {
            let (t, k) = encryption_columns(&s.encryption);
            (t.to_owned(), k)
        })
        .unzip();
    let tags: Vec<Value> = states.iter().map(|s| tags_json(&s.tags)).collect();
    sqlx::query!(
        r#"INSERT INTO repositories (account_id, region, name, arn, uri, created_at, tag_mutability,
               exclusion_filters, scan_on_push, encryption_type, kms_key, tags, synced_at, settings_synced_at)
           SELECT $1, $2, u.name, u.arn, u.uri, u.created_at, u.tag_mutability, u.exclusion_filters,
                  u.scan_on_push, u.encryption_type, u.kms_key, u.tags, $13, $13
           FROM UNNEST($3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::jsonb[],
                       $9::bool[], $10::text[], $11::text[], $12::jsonb[])
                AS u(name, arn, uri, created_at, tag_mutability, exclusion_filters, scan_on_push,
                     encryption_type, kms_key, tags)
           ON CONFLICT (account_id, region, name) DO UPDATE SET
               arn = EXCLUDED.arn, uri = EXCLUDED.uri, created_at = EXCLUDED.created_at,
               tag_mutability = EXCLUDED.tag_mutability, exclusion_filters = EXCLUDED.exclusion_filters,
               scan_on_push = EXCLUDED.scan_on_push, encryption_type = EXCLUDED.encryption_type,
               kms_key = EXCLUDED.kms_key, tags = EXCLUDED.tags, synced_at = EXCLUDED.synced_at,
               settings_synced_at = EXCLUDED.settings_synced_at
           WHERE repositories.synced_at <= EXCLUDED.synced_at"#,
        registry.account_id,
        registry.region,
        &names,
        &arns,
        &uris,
        &created as &[Option<DateTime<Utc>>],
        &mutability,
        &filters,
        &scan,
        &enc_types,
        &kms_keys as &[Option<String>],
        &tags,
        synced_at,
    )
    .execute(&mut **tx)
    .await?;
    let removed = sqlx::query!(
        r#"DELETE FROM repositories
           WHERE account_id = $1 AND region = $2 AND NOT (name = ANY($3)) AND synced_at < $4"#,
        registry.account_id,
        registry.region,
        &names,
        synced_at,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(removed)
}

/// Names of the registry's cached repositories.
pub async fn names(pool: &sqlx::PgPool, registry: &RegistryRef) -> Result<Vec<RepositoryName>, StoreError> {
    let names = sqlx::query_scalar!(
        "SELECT name FROM repositories WHERE account_id = $1 AND region = $2 ORDER BY name",
        registry.account_id,
        registry.region,
    )
    .fetch_all(pool)
    .await?;
    Ok(names
        .iter()
        .filter_map(|n| RepositoryName::parse(n).ok())
        .collect())
}

/// How many repositories of the registry the cache has.
pub async fn count(pool: &sqlx::PgPool, registry: &RegistryRef) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM repositories WHERE account_id = $1 AND region = $2"#,
        registry.account_id,
        registry.region,
    )
    .fetch_one(pool)
    .await?)
}

/// Removes one repository's row.
pub async fn delete(tx: &mut Tx, registry: &RegistryRef, name: &RepositoryName) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM repositories WHERE account_id = $1 AND region = $2 AND name = $3",
        registry.account_id,
        registry.region,
        name.as_str(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One cached repository, if the cache has it.
pub async fn get(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    name: &RepositoryName,
) -> Result<Option<CachedRepository>, StoreError> {
    let row = sqlx::query_as!(
        RepositoryRow,
        r#"SELECT account_id, region, name, arn, uri, created_at, tag_mutability, exclusion_filters,
                  scan_on_push, encryption_type, kms_key, tags, lifecycle_policy, repository_policy, synced_at,
                  policies_synced_at
           FROM repositories WHERE account_id = $1 AND region = $2 AND name = $3"#,
        registry.account_id,
        registry.region,
        name.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(RepositoryRow::into_cached))
}

/// A page of cached repositories in (account, region, name) order, of
/// those the filter's visibility lets the caller read.
pub async fn list(
    pool: &sqlx::PgPool,
    filter: &RepositoryFilter,
) -> Result<Vec<CachedRepository>, StoreError> {
    let pattern = format!("{}%", escape_like(&filter.prefix));
    let after = filter.after.clone().unwrap_or(RepositoryKey {
        account_id: String::new(),
        region: String::new(),
        name: String::new(),
    });
    let mut query = sqlx::QueryBuilder::new(
        "SELECT r.account_id, r.region, r.name, r.arn, r.uri, r.created_at, r.tag_mutability,
                r.exclusion_filters, r.scan_on_push, r.encryption_type, r.kms_key, r.tags,
                r.lifecycle_policy, r.repository_policy, r.synced_at, r.policies_synced_at
         FROM repositories r
         WHERE r.name LIKE ",
    );
    query.push_bind(pattern);
    query
        .push(" AND r.tags @> ")
        .push_bind(tags_json(&filter.tags))
        .push("::jsonb");
    filter.visibility.push_condition(
        &mut query,
        "r.account_id",
        "r.region",
        &super::visibility::namespace_of("r.name"),
    );
    query
        .push(" AND (r.account_id, r.region, r.name) > (")
        .push_bind(after.account_id)
        .push(", ")
        .push_bind(after.region)
        .push(", ")
        .push_bind(after.name)
        .push(") ORDER BY r.account_id, r.region, r.name LIMIT ")
        .push_bind(filter.limit);
    let rows = query.build_query_as::<RepositoryRow>().fetch_all(pool).await?;
    Ok(rows.into_iter().filter_map(RepositoryRow::into_cached).collect())
}

/// Escapes LIKE's wildcards (`_` is common in repository names).
pub(super) fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[derive(sqlx::FromRow)]
pub(super) struct RepositoryRow {
    pub(super) account_id: String,
    pub(super) region: String,
    pub(super) name: String,
    pub(super) arn: String,
    pub(super) uri: String,
    pub(super) created_at: Option<DateTime<Utc>>,
    pub(super) tag_mutability: String,
    pub(super) exclusion_filters: Value,
    pub(super) scan_on_push: bool,
    pub(super) encryption_type: String,
    pub(super) kms_key: Option<String>,
    pub(super) tags: Value,
    pub(super) lifecycle_policy: Option<String>,
    pub(super) repository_policy: Option<String>,
    pub(super) synced_at: DateTime<Utc>,
    /// When the policies were last read from ECR (NULL: never).
    pub(super) policies_synced_at: Option<DateTime<Utc>>,
}

impl RepositoryRow {
    pub(super) fn into_cached(self) -> Option<CachedRepository> {
        let Ok(name) = RepositoryName::parse(&self.name) else {
            tracing::error!(name = %self.name, "cached repository name no longer parses; ignoring the row");
            return None;
        };
        let encryption = match self.encryption_type.as_str() {
            "KMS" => Encryption::Kms { key: self.kms_key },
            _ => Encryption::Aes256,
        };
        let tags = match self.tags {
            Value::Object(map) => map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                .collect(),
            _ => BTreeMap::new(),
        };
        let exclusion_filters = match self.exclusion_filters {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Some(CachedRepository {
            account_id: self.account_id,
            region: self.region,
            synced_at: self.synced_at,
            policies_read_at: self.policies_synced_at,
            state: RepositoryState {
                name,
                arn: self.arn,
                uri: self.uri,
                created_at: self.created_at,
                tag_mutability: TagMutability::from_ecr_str(&self.tag_mutability)
                    .unwrap_or(TagMutability::Mutable),
                exclusion_filters,
                scan_on_push: self.scan_on_push,
                encryption,
                tags,
                lifecycle_policy: self.lifecycle_policy,
                repository_policy: self.repository_policy,
            },
        })
    }
}

fn encryption_columns(encryption: &Encryption) -> (&'static str, Option<String>) {
    match encryption {
        Encryption::Aes256 => ("AES256", None),
        Encryption::Kms { key } => ("KMS", key.clone()),
    }
}

fn tags_json(tags: &BTreeMap<String, String>) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

/// A repository's cached policies and when they were read (`None`: no row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicies {
    /// Lifecycle policy text.
    pub lifecycle_policy: Option<String>,
    /// Repository policy text.
    pub repository_policy: Option<String>,
    /// When they were read from ECR; `None`: never.
    pub read_at: Option<DateTime<Utc>>,
}

/// The repository's cached policies, if the cache has the repository.
pub async fn policies(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    name: &RepositoryName,
) -> Result<Option<CachedPolicies>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT lifecycle_policy, repository_policy, policies_synced_at
           FROM repositories WHERE account_id = $1 AND region = $2 AND name = $3"#,
        registry.account_id,
        registry.region,
        name.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| CachedPolicies {
        lifecycle_policy: r.lifecycle_policy,
        repository_policy: r.repository_policy,
        read_at: r.policies_synced_at,
    }))
}

/// Writes the policies as read from ECR by `read_at` (a missing row stays missing).
pub async fn write_policies(
    tx: &mut Tx,
    registry: &RegistryRef,
    name: &RepositoryName,
    lifecycle_policy: Option<&str>,
    repository_policy: Option<&str>,
    read_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE repositories SET lifecycle_policy = $4, repository_policy = $5, policies_synced_at = $6
           WHERE account_id = $1 AND region = $2 AND name = $3"#,
        registry.account_id,
        registry.region,
        name.as_str(),
        lifecycle_policy,
        repository_policy,
        read_at,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The registry's cached repositories by name, as a listing of ECR would
/// compare them (settings and tags), each with when ECR last confirmed it.
pub async fn cached_states(
    tx: &mut Tx,
    registry: &RegistryRef,
) -> Result<std::collections::HashMap<String, (RepositoryState, DateTime<Utc>)>, StoreError> {
    let rows = sqlx::query_as!(
        RepositoryRow,
        r#"SELECT account_id, region, name, arn, uri, created_at, tag_mutability, exclusion_filters,
                  scan_on_push, encryption_type, kms_key, tags, lifecycle_policy, repository_policy, synced_at,
                  policies_synced_at
           FROM repositories WHERE account_id = $1 AND region = $2"#,
        registry.account_id,
        registry.region,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(RepositoryRow::into_cached)
        .map(|cached| (cached.state.name.to_string(), (cached.state, cached.synced_at)))
        .collect())
}

/// One cached repository as [`cached_states`] gives it (inside `tx`).
pub async fn cached_state(
    tx: &mut Tx,
    registry: &RegistryRef,
    name: &RepositoryName,
) -> Result<Option<(RepositoryState, DateTime<Utc>)>, StoreError> {
    let row = sqlx::query_as!(
        RepositoryRow,
        r#"SELECT account_id, region, name, arn, uri, created_at, tag_mutability, exclusion_filters,
                  scan_on_push, encryption_type, kms_key, tags, lifecycle_policy, repository_policy, synced_at,
                  policies_synced_at
           FROM repositories WHERE account_id = $1 AND region = $2 AND name = $3"#,
        registry.account_id,
        registry.region,
        name.as_str(),
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row
        .and_then(RepositoryRow::into_cached)
        .map(|cached| (cached.state, cached.synced_at)))
}
