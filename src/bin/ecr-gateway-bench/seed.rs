//! The seeded inventory: deterministic repository names, tags and digests,
//! recorded-shape `DescribeImages` pages fed through the sync's ingest path
//! (`seed`, `ingest`), and the big repository with a lifecycle policy that
//! the PreviewCleanup benchmark reads (`seed-preview`).

use std::time::{Duration, Instant};

use aws_sdk_ecr::types::ImageDetail;
use chrono::{TimeZone, Utc};
use ecr_gateway::domain::{RegistryRef, RepositoryName, digest_of};
use ecr_gateway::ecr::image_from_detail;
use ecr_gateway::store::{Store, images};
use futures::StreamExt as _;

/// The registry seeded images belong to (the dev/bench configuration's main registry).
fn registry() -> RegistryRef {
    RegistryRef {
        alias: "main".into(),
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
    }
}

pub(crate) fn repository_name(r: usize) -> String {
    let team = if r.is_multiple_of(2) { "payments" } else { "search" };
    format!("{team}/svc-{r:04}")
}

fn seed_of(r: usize, i: usize) -> String {
    format!("{}#{i}", repository_name(r))
}

pub(crate) fn digest(r: usize, i: usize) -> String {
    digest_of(seed_of(r, i).as_bytes()).to_string()
}

/// Every 5th image is untagged; the others carry a semver tag, every 10th also `build-N`.
pub(crate) fn tags(i: usize) -> Vec<String> {
    match i % 10 {
        4 | 9 => Vec::new(),
        0 => vec![format!("v1.{}.{}", i / 100, i % 100), format!("build-{i}")],
        _ => vec![format!("v1.{}.{}", i / 100, i % 100)],
    }
}

/// A page of `ImageDetail`s as DescribeImages returns them.
fn recorded_page(r: usize, range: std::ops::Range<usize>) -> Vec<ImageDetail> {
    let start = Utc
        .with_ymd_and_hms(2024, 11, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
        .timestamp();
    range
        .map(|i| {
            let pushed = start + (i as i64) * 60_000 + r as i64;
            ImageDetail::builder()
                .registry_id("123456789012")
                .repository_name(repository_name(r))
                .image_digest(digest(r, i))
                .set_image_tags(Some(tags(i)))
                .image_size_in_bytes(20_000_000 + (i as i64) * 1_000)
                .image_pushed_at(aws_smithy_types::DateTime::from_secs(pushed))
                .image_manifest_media_type("application/vnd.docker.distribution.manifest.v2+json")
                .artifact_media_type("application/vnd.docker.container.image.v1+json")
                .build()
        })
        .collect()
}

/// Time spent in each ingest step, summed over repositories.
#[derive(Default, Debug)]
struct StepTimes {
    upsert: Duration,
    reconcile: Duration,
    commit: Duration,
}

async fn ingest_repository(store: &Store, r: usize, per_repository: usize) -> anyhow::Result<usize> {
    let mut times = StepTimes::default();
    let count = ingest_timed(store, r, per_repository, &mut times).await?;
    mark_seeded(store, r).await?;
    Ok(count)
}

async fn ingest_timed(
    store: &Store,
    r: usize,
    per_repository: usize,
    times: &mut StepTimes,
) -> anyhow::Result<usize> {
    let registry = registry();
    let name = RepositoryName::parse(&repository_name(r)).map_err(|v| anyhow::anyhow!("{v}"))?;
    let mut records = Vec::with_capacity(per_repository);
    for page_start in (0..per_repository).step_by(1000) {
        let page = recorded_page(r, page_start..(page_start + 1000).min(per_repository));
        records.extend(page.iter().filter_map(|d| image_from_detail(&name, d)));
    }
    let now = Utc::now();
    let mut tx = store.begin().await?;
    let started = Instant::now();
    for page in records.chunks(1000) {
        images::upsert_page(&mut tx, &registry, &name, page, now).await?;
    }
    times.upsert += started.elapsed();
    let started = Instant::now();
    images::finish_reconcile(&mut tx, &registry, &name, &records).await?;
    times.reconcile += started.elapsed();
    let started = Instant::now();
    tx.commit().await?;
    times.commit += started.elapsed();
    Ok(records.len())
}

/// Marks a seeded repository's manifests read and the repository synced (seed only).
async fn mark_seeded(store: &Store, r: usize) -> anyhow::Result<()> {
    let registry = registry();
    let name = repository_name(r);
    let mut tx = store.begin().await?;
    sqlx::query("UPDATE images SET kind = 'image' WHERE account_id = $1 AND region = $2 AND repository = $3")
        .bind(&registry.account_id)
        .bind(&registry.region)
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    // Every image scanned: most clean, one in ten with a HIGH finding, one in
    // fifty with a CRITICAL one (the gate reads these).
    sqlx::query(
        "INSERT INTO image_scans (account_id, region, repository, digest, status, completed_at, critical, high, fetched_at)
         SELECT account_id, region, repository, digest, 'COMPLETE', now() - interval '1 day',
                (hashtext(digest) % 50 = 0)::int, (hashtext(digest) % 10 = 0)::int, now()
         FROM images WHERE account_id = $1 AND region = $2 AND repository = $3",
    )
    .bind(&registry.account_id)
    .bind(&registry.region)
    .bind(&name)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO scan_findings (account_id, region, repository, digest, ordinal, name, severity)
         SELECT account_id, region, repository, digest, 0, 'CVE-2024-' || (1000 + abs(hashtext(digest)) % 9000), 5
         FROM image_scans WHERE account_id = $1 AND region = $2 AND repository = $3 AND critical > 0
         UNION ALL
         SELECT account_id, region, repository, digest, 1, 'CVE-2023-' || (1000 + abs(hashtext(digest)) % 9000), 4
         FROM image_scans WHERE account_id = $1 AND region = $2 AND repository = $3 AND high > 0",
    )
    .bind(&registry.account_id)
    .bind(&registry.region)
    .bind(&name)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sync_state (account_id, region, repository, last_synced_at) VALUES ($1, $2, $3, now())
         ON CONFLICT (account_id, region, repository) DO UPDATE SET last_synced_at = now()",
    )
    .bind(&registry.account_id)
    .bind(&registry.region)
    .bind(&name)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn connect(database_url: &str, connections: u32) -> anyhow::Result<Store> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(database_url)
        .await?;
    let store = Store::from_pool(pool);
    store.migrate().await?;
    Ok(store)
}

pub(crate) async fn seed(
    database_url: &str,
    repositories: usize,
    per_repository: usize,
) -> anyhow::Result<()> {
    let store = connect(database_url, 4).await?;
    let started = Instant::now();
    let mut total = 0;
    for r in 0..repositories {
        total += ingest_repository(&store, r, per_repository).await?;
        if (r + 1).is_multiple_of(100) {
            println!(
                "seeded {} repositories, {total} images, {:.0?}",
                r + 1,
                started.elapsed()
            );
        }
    }
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    println!("seeded {total} images in {:.1?}", started.elapsed());
    Ok(())
}

pub(crate) async fn ingest(
    database_url: &str,
    repositories: usize,
    per_repository: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let store = connect(database_url, concurrency as u32 + 1).await?;
    sqlx::query("TRUNCATE images, image_tags, sync_state CASCADE")
        .execute(store.pool())
        .await?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<(usize, StepTimes)>> = futures::stream::iter(0..repositories)
        .map(|r| {
            let store = store.clone();
            async move {
                let mut times = StepTimes::default();
                let count = ingest_timed(&store, r, per_repository, &mut times).await?;
                Ok((count, times))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut total = 0;
    let mut times = StepTimes::default();
    for result in results {
        let (count, t) = result?;
        total += count;
        times.upsert += t.upsert;
        times.reconcile += t.reconcile;
        times.commit += t.commit;
    }
    println!(
        "ingested {total} images ({repositories} repositories, pages of 1000, {concurrency} at once) in {elapsed:.2?}: {:.0} images/s (time summed over repositories: {times:?})",
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// The repository `seed-preview` fills.
pub(crate) const PREVIEW_REPOSITORY: usize = 5000;

/// Three rules as a platform team writes them: untagged images go after 14
/// days, `build-` images beyond the newest 500, and anything beyond the
/// newest 20,000.
const PREVIEW_POLICY: &str = r#"{"rules":[
 {"rulePriority":1,"description":"untagged after 14 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},
 {"rulePriority":2,"description":"keep 500 builds","selection":{"tagStatus":"tagged","tagPrefixList":["build-"],"countType":"imageCountMoreThan","countNumber":500},"action":{"type":"expire"}},
 {"rulePriority":3,"description":"keep the newest 20000","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":20000},"action":{"type":"expire"}}]}"#;

pub(crate) async fn seed_preview(database_url: &str, images: usize) -> anyhow::Result<()> {
    let store = connect(database_url, 4).await?;
    let started = Instant::now();
    let count = ingest_repository(&store, PREVIEW_REPOSITORY, images).await?;
    let registry = registry();
    sqlx::query(
        "INSERT INTO repositories (account_id, region, name, arn, uri, tag_mutability, scan_on_push, encryption_type, \
         lifecycle_policy, synced_at) VALUES ($1, $2, $3, 'arn:aws:ecr:us-east-1:123456789012:repository/' || $3, \
         '123456789012.dkr.ecr.us-east-1.amazonaws.com/' || $3, 'IMMUTABLE', true, 'AES256', $4, now()) \
         ON CONFLICT (account_id, region, name) DO UPDATE SET lifecycle_policy = EXCLUDED.lifecycle_policy",
    )
    .bind(&registry.account_id)
    .bind(&registry.region)
    .bind(repository_name(PREVIEW_REPOSITORY))
    .bind(PREVIEW_POLICY)
    .execute(store.pool())
    .await?;
    sqlx::query("ANALYZE images").execute(store.pool()).await?;
    println!(
        "seeded {} with {count} images and a 3-rule lifecycle policy in {:.1?}",
        repository_name(PREVIEW_REPOSITORY),
        started.elapsed()
    );
    Ok(())
}
