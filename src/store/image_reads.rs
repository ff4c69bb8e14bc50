//! Reads of the image inventory: the ResolveImage fast path, one image with
//! its referrers, and keyset-paginated listings and searches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};

use super::StoreError;
use crate::domain::RegistryRef;

/// One cached image.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ImageRow {
    /// AWS account id.
    pub account_id: String,
    /// AWS region.
    pub region: String,
    /// Repository name.
    pub repository: String,
    /// Manifest digest.
    pub digest: String,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// imageSizeInBytes.
    pub size_bytes: Option<i64>,
    /// Push time.
    pub pushed_at: DateTime<Utc>,
    /// Last recorded pull.
    pub last_pulled_at: Option<DateTime<Utc>>,
    /// Manifest media type.
    pub manifest_media_type: Option<String>,
    /// Artifact media type.
    pub artifact_media_type: Option<String>,
    /// ACTIVE / ARCHIVED / ACTIVATING.
    pub status: String,
    /// Subject digest (referrers).
    pub subject_digest: Option<String>,
    /// image / index / artifact / unknown; None until the manifest was read.
    pub kind: Option<String>,
    /// Artifact type.
    pub artifact_type: Option<String>,
    /// Index children.
    pub children: Value,
    /// When the row last changed from a sync.
    pub synced_at: DateTime<Utc>,
}

const COLUMNS: &str = "i.account_id, i.region, i.repository, i.digest, i.tags, i.size_bytes, i.pushed_at, \
     i.last_pulled_at, i.manifest_media_type, i.artifact_media_type, i.status, i.subject_digest, i.kind, \
     i.artifact_type, i.children, i.synced_at";

/// `query_as!(ImageRow, …)` over one repository's images (`$1`..`$3`:
/// account, region, repository): `$tail` follows the repository condition.
/// The column list is [`COLUMNS`]'.
macro_rules! repository_images {
    ($tail:literal, $registry:expr, $repository:expr $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            ImageRow,
            "SELECT i.account_id, i.region, i.repository, i.digest, i.tags, i.size_bytes, i.pushed_at, \
             i.last_pulled_at, i.manifest_media_type, i.artifact_media_type, i.status, i.subject_digest, i.kind, \
             i.artifact_type, i.children, i.synced_at \
             FROM images i WHERE i.account_id = $1 AND i.region = $2 AND i.repository = $3"
                + $tail,
            $registry.account_id,
            $registry.region,
            $repository
            $(, $arg)*
        )
    };
}

/// What ResolveImage answers about a `:tag` or `@digest`, as cached in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The image's digest.
    pub digest: String,
    /// When the answer was last confirmed by a sync.
    pub synced_at: Option<DateTime<Utc>>,
    /// Whether the tag can be moved (false for a digest).
    pub tag_immutable: bool,
}

/// What ResolveImage needs about a tag, in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTag {
    /// The digest the tag points at.
    pub digest: String,
    /// When the repository was last synced completely.
    pub last_synced_at: Option<DateTime<Utc>>,
    /// When the image row last changed (write-through refreshes).
    pub row_synced_at: DateTime<Utc>,
    /// The repository's tag mutability, if the repository is cached.
    pub tag_mutability: Option<String>,
    /// Its exclusion filters.
    pub exclusion_filters: Value,
    /// When those settings were read from ECR (None: unknown).
    pub settings_synced_at: Option<DateTime<Utc>>,
}

/// The digest a tag points at, with the repository's freshness and mutability.
pub async fn resolve_tag(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    tag: &str,
) -> Result<Option<ResolvedTag>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT t.digest, i.synced_at, s.last_synced_at AS "last_synced_at?", r.tag_mutability AS "tag_mutability?",
                  r.exclusion_filters AS "exclusion_filters?", r.settings_synced_at AS "settings_synced_at?"
           FROM image_tags t
           JOIN images i ON i.account_id = t.account_id AND i.region = t.region
                        AND i.repository = t.repository AND i.digest = t.digest
           LEFT JOIN sync_state s ON s.account_id = t.account_id AND s.region = t.region AND s.repository = t.repository
           LEFT JOIN repositories r ON r.account_id = t.account_id AND r.region = t.region AND r.name = t.repository
           WHERE t.account_id = $1 AND t.region = $2 AND t.repository = $3 AND t.tag = $4"#,
        registry.account_id,
        registry.region,
        repository,
        tag,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| ResolvedTag {
        digest: row.digest,
        last_synced_at: row.last_synced_at,
        row_synced_at: row.synced_at,
        tag_mutability: row.tag_mutability,
        exclusion_filters: row.exclusion_filters.unwrap_or(Value::Null),
        settings_synced_at: row.settings_synced_at,
    }))
}

/// `SELECT … FROM images` of one repository, ready for more conditions.
fn images_of(registry: &RegistryRef, repository: &str) -> QueryBuilder<sqlx::Postgres> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM images i WHERE i.account_id = "));
    query.push_bind(registry.account_id.clone());
    query.push(" AND i.region = ").push_bind(registry.region.clone());
    query
        .push(" AND i.repository = ")
        .push_bind(repository.to_owned());
    query
}

/// One image by digest.
pub async fn get(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
) -> Result<Option<ImageRow>, StoreError> {
    Ok(
        repository_images!(" AND i.digest = $4", registry, repository, digest)
            .fetch_optional(pool)
            .await?,
    )
}

/// Artifacts whose subject is `digest`.
pub async fn referrers(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
) -> Result<Vec<ImageRow>, StoreError> {
    Ok(repository_images!(
        " AND i.subject_digest = $4 ORDER BY i.pushed_at DESC, i.digest DESC LIMIT 100",
        registry,
        repository,
        digest,
    )
    .fetch_all(pool)
    .await?)
}

/// Filters of ListImages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageFilter {
    /// Some(true): tagged only; Some(false): untagged only.
    pub tagged: Option<bool>,
    /// LIKE pattern (already translated from a glob) a tag must match.
    pub tag_like: Option<String>,
    /// Pushed at or after.
    pub pushed_after: Option<DateTime<Utc>>,
    /// Pushed before.
    pub pushed_before: Option<DateTime<Utc>>,
    /// ECR status.
    pub status: Option<String>,
    /// Manifest media type.
    pub media_type: Option<String>,
    /// The order.
    pub order: ListOrder,
}

/// Orders of ListImages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum ListOrder {
    /// Newest push first.
    #[default]
    PushedDesc,
    /// By digest.
    Digest,
    /// By first tag, then digest.
    Tag,
}

/// Keyset position of ListImages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPosition {
    /// Push time of the last row (newest-first order).
    pub pushed_at: Option<DateTime<Utc>>,
    /// First tag of the last row (tag order; empty when untagged).
    #[serde(default)]
    pub tag: String,
    /// Digest of the last row.
    pub digest: String,
}

/// A page of one repository's images.
pub async fn list(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    filter: &ImageFilter,
    after: Option<&ListPosition>,
    limit: i64,
) -> Result<Vec<ImageRow>, StoreError> {
    let mut query = images_of(registry, repository);
    match filter.tagged {
        Some(true) => {
            query.push(" AND cardinality(i.tags) > 0");
        }
        Some(false) => {
            query.push(" AND cardinality(i.tags) = 0");
        }
        None => {}
    }
    if let Some(pattern) = &filter.tag_like {
        query.push(" AND EXISTS (SELECT 1 FROM unnest(i.tags) AS t(tag) WHERE t.tag LIKE ");
        query.push_bind(pattern.clone()).push(")");
    }
    if let Some(after_time) = filter.pushed_after {
        query.push(" AND i.pushed_at >= ").push_bind(after_time);
    }
    if let Some(before) = filter.pushed_before {
        query.push(" AND i.pushed_at < ").push_bind(before);
    }
    if let Some(status) = &filter.status {
        query.push(" AND i.status = ").push_bind(status.clone());
    }
    if let Some(media_type) = &filter.media_type {
        query
            .push(" AND i.manifest_media_type = ")
            .push_bind(media_type.clone());
    }
    match filter.order {
        ListOrder::Tag => {
            if let Some(position) = after {
                query.push(" AND (COALESCE(i.tags[1], ''), i.digest) > (");
                query
                    .push_bind(position.tag.clone())
                    .push(", ")
                    .push_bind(position.digest.clone())
                    .push(")");
            }
            query.push(" ORDER BY COALESCE(i.tags[1], ''), i.digest");
        }
        ListOrder::Digest => {
            if let Some(position) = after {
                query.push(" AND i.digest > ").push_bind(position.digest.clone());
            }
            query.push(" ORDER BY i.digest");
        }
        ListOrder::PushedDesc => {
            if let Some(position) = after {
                query.push(" AND (i.pushed_at, i.digest) < (");
                query.push_bind(position.pushed_at.unwrap_or(DateTime::<Utc>::UNIX_EPOCH));
                query.push(", ").push_bind(position.digest.clone()).push(")");
            }
            query.push(" ORDER BY i.pushed_at DESC, i.digest DESC");
        }
    }
    query.push(" LIMIT ").push_bind(limit);
    Ok(query.build_query_as::<ImageRow>().fetch_all(pool).await?)
}

/// What SearchImages looks for.
#[derive(Debug, Clone, Serialize)]
pub enum SearchQuery {
    /// Exactly this digest.
    Digest(String),
    /// A tag matching this LIKE pattern.
    TagLike(String),
    /// Repositories whose name starts with this (LIKE-escaped) prefix.
    RepositoryLike(String),
}

/// Keyset position of SearchImages: (account, region, repository, digest).
pub type SearchPosition = (String, String, String, String);

/// A page of images matching `search`, of the repositories `visibility` lets the caller read.
pub async fn search(
    pool: &PgPool,
    visibility: &super::Visibility,
    search: &SearchQuery,
    after: Option<&SearchPosition>,
    limit: i64,
) -> Result<Vec<ImageRow>, StoreError> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM images i WHERE "));
    match search {
        SearchQuery::Digest(digest) => {
            query.push("i.digest = ").push_bind(digest.clone());
        }
        SearchQuery::TagLike(pattern) => {
            query.push("EXISTS (SELECT 1 FROM image_tags t WHERE t.account_id = i.account_id AND t.region = i.region ");
            query.push("AND t.repository = i.repository AND t.digest = i.digest AND t.tag LIKE ");
            query.push_bind(pattern.clone()).push(")");
        }
        SearchQuery::RepositoryLike(pattern) => {
            query.push("i.repository LIKE ").push_bind(pattern.clone());
        }
    }
    visibility.push_condition(
        &mut query,
        "i.account_id",
        "i.region",
        &super::visibility::namespace_of("i.repository"),
    );
    if let Some((account, region, repository, digest)) = after {
        query.push(" AND (i.account_id, i.region, i.repository, i.digest) > (");
        query
            .push_bind(account.clone())
            .push(", ")
            .push_bind(region.clone())
            .push(", ");
        query
            .push_bind(repository.clone())
            .push(", ")
            .push_bind(digest.clone())
            .push(")");
    }
    query
        .push(" ORDER BY i.account_id, i.region, i.repository, i.digest LIMIT ")
        .push_bind(limit);
    Ok(query.build_query_as::<ImageRow>().fetch_all(pool).await?)
}

/// Translates a glob (`*`, `?`) into a LIKE pattern, escaping LIKE's own wildcards.
pub fn glob_to_like(glob: &str) -> String {
    let mut pattern = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => pattern.push('%'),
            '?' => pattern.push('_'),
            '%' | '_' | '\\' => {
                pattern.push('\\');
                pattern.push(c);
            }
            other => pattern.push(other),
        }
    }
    pattern
}

/// Escapes a literal prefix for LIKE and appends `%`.
pub fn prefix_to_like(prefix: &str) -> String {
    glob_to_like(&prefix.replace(['*', '?'], "")) + "%"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns_with_literal_underscores() {
        assert_eq!(glob_to_like("v1.*"), "v1.%");
        assert_eq!(glob_to_like("build_?"), "build\\__");
        assert_eq!(glob_to_like("100%"), "100\\%");
    }

    #[test]
    fn prefixes_match_literally() {
        assert_eq!(prefix_to_like("pay_ments/"), "pay\\_ments/%");
    }
}

/// What the lifecycle evaluator needs about one image.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LifecycleRow {
    /// Digest.
    pub digest: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Push time.
    pub pushed_at: DateTime<Utc>,
    /// Last recorded pull.
    pub last_pulled_at: Option<DateTime<Utc>>,
    /// ACTIVE / ARCHIVED / ACTIVATING.
    pub status: String,
}

/// Every image of a repository, for a cleanup preview.
pub async fn lifecycle_rows(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
) -> Result<Vec<LifecycleRow>, StoreError> {
    Ok(sqlx::query_as!(
        LifecycleRow,
        "SELECT digest, tags, pushed_at, last_pulled_at, status FROM images \
         WHERE account_id = $1 AND region = $2 AND repository = $3",
        registry.account_id,
        registry.region,
        repository,
    )
    .fetch_all(pool)
    .await?)
}
