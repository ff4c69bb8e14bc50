//! The image inventory: `images` (one row per digest) and `image_tags`
//! (tag → digest, the ResolveImage fast path).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{StoreError, Tx};
use crate::domain::{ImageRecord, RegistryRef, RepositoryName};

/// What one ingested page changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Digests new to the cache.
    pub added: u64,
    /// Digests whose listed facts changed.
    pub changed: u64,
}

/// Upserts one page of `DescribeImages` in one statement. Rows whose listed
/// facts are unchanged are not written.
pub async fn upsert_page(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    page: &[ImageRecord],
    synced_at: DateTime<Utc>,
) -> Result<PageCounts, StoreError> {
    if page.is_empty() {
        return Ok(PageCounts::default());
    }
    let digests: Vec<String> = page.iter().map(|i| i.digest.to_string()).collect();
    let tags: Vec<String> = page.iter().map(|i| encode_tags(&i.tags)).collect();
    let sizes: Vec<Option<i64>> = page.iter().map(|i| i.size_bytes).collect();
    let pushed: Vec<Option<DateTime<Utc>>> = page.iter().map(|i| i.pushed_at).collect();
    let pulled: Vec<Option<DateTime<Utc>>> = page.iter().map(|i| i.last_pulled_at).collect();
    let media: Vec<Option<String>> = page.iter().map(|i| i.manifest_media_type.clone()).collect();
    let artifact: Vec<Option<String>> = page.iter().map(|i| i.artifact_media_type.clone()).collect();
    let status: Vec<String> = page.iter().map(|i| i.status.clone()).collect();
    let subject: Vec<Option<String>> = page.iter().map(|i| i.subject_digest.clone()).collect();
    let rows = sqlx::query!(
        r#"INSERT INTO images AS i (account_id, region, repository, digest, tags, size_bytes, pushed_at,
               last_pulled_at, manifest_media_type, artifact_media_type, status, subject_digest, synced_at)
           SELECT $1, $2, $3, u.digest, string_to_array(u.tags, E'\n'), u.size_bytes,
                  COALESCE(u.pushed_at, 'epoch'::timestamptz),
                  u.last_pulled_at, u.media, u.artifact, u.status, u.subject, $13
           FROM UNNEST($4::text[], $5::text[], $6::int8[], $7::timestamptz[], $8::timestamptz[],
                       $9::text[], $10::text[], $11::text[], $12::text[])
                AS u(digest, tags, size_bytes, pushed_at, last_pulled_at, media, artifact, status, subject)
           ON CONFLICT (account_id, region, repository, digest) DO UPDATE SET
               tags = EXCLUDED.tags, size_bytes = EXCLUDED.size_bytes, pushed_at = EXCLUDED.pushed_at,
               last_pulled_at = EXCLUDED.last_pulled_at, manifest_media_type = EXCLUDED.manifest_media_type,
               artifact_media_type = EXCLUDED.artifact_media_type, status = EXCLUDED.status,
               subject_digest = COALESCE(EXCLUDED.subject_digest, i.subject_digest), synced_at = EXCLUDED.synced_at
           WHERE (i.tags, i.size_bytes, i.pushed_at, i.last_pulled_at, i.manifest_media_type,
                  i.artifact_media_type, i.status, i.subject_digest)
                 IS DISTINCT FROM
                 (EXCLUDED.tags, EXCLUDED.size_bytes, EXCLUDED.pushed_at, EXCLUDED.last_pulled_at,
                  EXCLUDED.manifest_media_type, EXCLUDED.artifact_media_type, EXCLUDED.status,
                  -- ECR may leave subjectManifestDigest out; the manifest's subject then stands.
                  COALESCE(EXCLUDED.subject_digest, i.subject_digest))
           RETURNING (xmax = 0) AS "inserted!""#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        &digests,
        &tags,
        &sizes as &[Option<i64>],
        &pushed as &[Option<DateTime<Utc>>],
        &pulled as &[Option<DateTime<Utc>>],
        &media as &[Option<String>],
        &artifact as &[Option<String>],
        &status,
        &subject as &[Option<String>],
        synced_at,
    )
    .fetch_all(&mut **tx)
    .await?;
    let added = rows.iter().filter(|r| r.inserted).count() as u64;
    Ok(PageCounts {
        added,
        changed: rows.len() as u64 - added,
    })
}

/// Makes the repository's tag index and image set exactly what ECR listed:
/// deletes images and tags ECR no longer has, upserts moved or new tags.
/// Returns the digests of the images removed.
pub async fn finish_reconcile(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    seen: &[ImageRecord],
) -> Result<Vec<String>, StoreError> {
    let digests: Vec<String> = seen.iter().map(|i| i.digest.to_string()).collect();
    let (tag_names, tag_digests): (Vec<String>, Vec<String>) = seen
        .iter()
        .flat_map(|i| i.tags.iter().map(move |t| (t.clone(), i.digest.to_string())))
        .unzip();
    let removed: Vec<String> = sqlx::query_scalar!(
        // NOT IN over a subquery is planned as a hashed subplan: linear, not n × m.
        "DELETE FROM images WHERE account_id = $1 AND region = $2 AND repository = $3 \
         AND digest NOT IN (SELECT unnest($4::text[])) RETURNING digest",
        registry.account_id,
        registry.region,
        repository.as_str(),
        &digests,
    )
    .fetch_all(&mut **tx)
    .await?;
    if !removed.is_empty() {
        prune_scans(tx, registry, repository.as_str(), None).await?;
    }
    sqlx::query!(
        // Tags ECR no longer lists; a tag that moved is updated by the upsert below.
        r#"DELETE FROM image_tags WHERE account_id = $1 AND region = $2 AND repository = $3
           AND tag NOT IN (SELECT unnest($4::text[]))"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        &tag_names,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO image_tags AS t (account_id, region, repository, tag, digest)
           SELECT $1, $2, $3, u.tag, u.digest FROM UNNEST($4::text[], $5::text[]) AS u(tag, digest)
           ON CONFLICT (account_id, region, repository, tag) DO UPDATE SET digest = EXCLUDED.digest
           WHERE t.digest <> EXCLUDED.digest"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        &tag_names,
        &tag_digests,
    )
    .execute(&mut **tx)
    .await?;
    Ok(removed)
}

/// Removes every image of a repository, and its tags (the repository is gone).
pub async fn delete_repository(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
) -> Result<u64, StoreError> {
    sqlx::query!(
        "DELETE FROM image_tags WHERE account_id = $1 AND region = $2 AND repository = $3",
        registry.account_id,
        registry.region,
        repository.as_str(),
    )
    .execute(&mut **tx)
    .await?;
    prune_scans(tx, registry, repository.as_str(), Some(None)).await?;
    Ok(sqlx::query!(
        "DELETE FROM images WHERE account_id = $1 AND region = $2 AND repository = $3",
        registry.account_id,
        registry.region,
        repository.as_str(),
    )
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Digests of the repository whose manifest has not been read yet.
pub async fn digests_without_manifest(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT digest FROM images WHERE account_id = $1 AND region = $2 AND repository = $3 AND kind IS NULL
           ORDER BY digest"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
    )
    .fetch_all(&mut **tx)
    .await?)
}

/// What a manifest says about an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestFacts {
    /// The digest.
    pub digest: String,
    /// `image`, `index` or `artifact`.
    pub kind: String,
    /// The artifact type, for artifacts.
    pub artifact_type: Option<String>,
    /// The `subject` digest, for referrers.
    pub subject_digest: Option<String>,
    /// Index children as JSON.
    pub children: Value,
}

/// Stores what the manifests said, in one statement.
pub async fn store_manifest_facts(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    facts: &[ManifestFacts],
) -> Result<(), StoreError> {
    if facts.is_empty() {
        return Ok(());
    }
    let digests: Vec<String> = facts.iter().map(|f| f.digest.clone()).collect();
    let kinds: Vec<String> = facts.iter().map(|f| f.kind.clone()).collect();
    let artifact_types: Vec<Option<String>> = facts.iter().map(|f| f.artifact_type.clone()).collect();
    let subjects: Vec<Option<String>> = facts.iter().map(|f| f.subject_digest.clone()).collect();
    let children: Vec<Value> = facts.iter().map(|f| f.children.clone()).collect();
    sqlx::query!(
        r#"UPDATE images AS i SET kind = u.kind, artifact_type = u.artifact_type,
               subject_digest = COALESCE(i.subject_digest, u.subject), children = u.children
           FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
                AS u(digest, kind, artifact_type, subject, children)
           WHERE i.account_id = $1 AND i.region = $2 AND i.repository = $3 AND i.digest = u.digest"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        &digests,
        &kinds,
        &artifact_types as &[Option<String>],
        &subjects as &[Option<String>],
        &children,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Tags travel as one newline-joined string per row (UNNEST cannot take ragged arrays);
/// tags cannot contain newlines.
fn encode_tags(tags: &[String]) -> String {
    tags.join("\n")
}

/// Refreshes one image from a targeted DescribeImages: its row, its tags, and
/// the tags it took from other images of the repository.
pub async fn upsert_one(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    image: &ImageRecord,
    synced_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    upsert_page(tx, registry, repository, std::slice::from_ref(image), synced_at).await?;
    let digest = image.digest.to_string();
    sqlx::query!(
        r#"UPDATE images SET tags = ARRAY(SELECT x FROM unnest(tags) AS x WHERE NOT x = ANY($5) ORDER BY x)
           WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest <> $4 AND tags && $5"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        digest,
        &image.tags,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        r#"DELETE FROM image_tags WHERE account_id = $1 AND region = $2 AND repository = $3
           AND digest = $4 AND NOT (tag = ANY($5))"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        digest,
        &image.tags,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO image_tags AS t (account_id, region, repository, tag, digest)
           SELECT $1, $2, $3, u.tag, $4 FROM UNNEST($5::text[]) AS u(tag)
           ON CONFLICT (account_id, region, repository, tag) DO UPDATE SET digest = EXCLUDED.digest
           WHERE t.digest <> EXCLUDED.digest"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        digest,
        &image.tags,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes one image and its tags (ECR no longer has it).
pub async fn delete_one(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    digest: &str,
) -> Result<bool, StoreError> {
    sqlx::query!(
        "DELETE FROM image_tags WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
        registry.account_id,
        registry.region,
        repository.as_str(),
        digest,
    )
    .execute(&mut **tx)
    .await?;
    prune_scans(tx, registry, repository.as_str(), Some(Some(digest))).await?;
    Ok(sqlx::query!(
        "DELETE FROM images WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
        registry.account_id,
        registry.region,
        repository.as_str(),
        digest,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// Removes a tag ECR no longer has (its image keeps its other tags).
pub async fn untag(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &RepositoryName,
    tag: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"UPDATE images SET tags = array_remove(tags, $4)
           WHERE account_id = $1 AND region = $2 AND repository = $3 AND $4 = ANY(tags)"#,
        registry.account_id,
        registry.region,
        repository.as_str(),
        tag,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "DELETE FROM image_tags WHERE account_id = $1 AND region = $2 AND repository = $3 AND tag = $4",
        registry.account_id,
        registry.region,
        repository.as_str(),
        tag,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes cached scans of images that are gone: `None` — every image of the
/// repository no longer in `images`; `Some(None)` — the whole repository;
/// `Some(Some(digest))` — one image.
async fn prune_scans(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    which: Option<Option<&str>>,
) -> Result<(), StoreError> {
    let (account, region) = (&registry.account_id, &registry.region);
    match which {
        None => {
            sqlx::query!(
                "DELETE FROM scan_findings t WHERE t.account_id = $1 AND t.region = $2 AND t.repository = $3 \
                 AND NOT EXISTS (SELECT 1 FROM images i WHERE i.account_id = t.account_id AND i.region = t.region \
                 AND i.repository = t.repository AND i.digest = t.digest)",
                account,
                region,
                repository,
            )
            .execute(&mut **tx)
            .await?;
            sqlx::query!(
                "DELETE FROM image_scans t WHERE t.account_id = $1 AND t.region = $2 AND t.repository = $3 \
                 AND NOT EXISTS (SELECT 1 FROM images i WHERE i.account_id = t.account_id AND i.region = t.region \
                 AND i.repository = t.repository AND i.digest = t.digest)",
                account,
                region,
                repository,
            )
            .execute(&mut **tx)
            .await?;
        }
        Some(None) => {
            sqlx::query!(
                "DELETE FROM scan_findings WHERE account_id = $1 AND region = $2 AND repository = $3",
                account,
                region,
                repository,
            )
            .execute(&mut **tx)
            .await?;
            sqlx::query!(
                "DELETE FROM image_scans WHERE account_id = $1 AND region = $2 AND repository = $3",
                account,
                region,
                repository,
            )
            .execute(&mut **tx)
            .await?;
        }
        Some(Some(digest)) => {
            sqlx::query!(
                "DELETE FROM scan_findings WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
                account,
                region,
                repository,
                digest,
            )
            .execute(&mut **tx)
            .await?;
            sqlx::query!(
                "DELETE FROM image_scans WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
                account,
                region,
                repository,
                digest,
            )
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}
