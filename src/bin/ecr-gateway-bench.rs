//! Benchmarks of the inventory (see docs/benchmarks.md for results and commands).
//!
//! - `seed`: fills a database with N images over M repositories through the
//!   real ingest path (deterministic names, tags and digests, push times
//!   spread over two years), so the load commands can build valid requests
//!   without reading the database.
//! - `ingest`: feeds recorded-shape `DescribeImages` pages (SDK `ImageDetail`s)
//!   through the sync's ingest path and reports images per second.
//! - `load`: drives one RPC of a running gateway from C concurrent workers,
//!   closed loop or paced to a target rate, and reports the rate, latency
//!   percentiles, gRPC status codes, the server's RSS and the CPU time the
//!   server and Postgres spent per call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ecr::types::ImageDetail;
use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use ecr_gateway::domain::{RegistryRef, RepositoryName, digest_of};
use ecr_gateway::ecr::image_from_detail;
use ecr_gateway::pb;
use ecr_gateway::store::{Store, images};
use futures::StreamExt as _;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "ecr-gateway benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seed a database (migrated first) with images.
    Seed {
        /// Postgres URL of the database to fill.
        #[arg(long)]
        database_url: String,
        /// Repositories.
        #[arg(long, default_value_t = 1000)]
        repositories: usize,
        /// Images per repository.
        #[arg(long, default_value_t = 1000)]
        images_per_repository: usize,
    },
    /// Add one big repository (`payments/svc-5000`, cached with a lifecycle
    /// policy) for the PreviewCleanup benchmark.
    SeedPreview {
        /// Postgres URL of the seeded database.
        #[arg(long)]
        database_url: String,
        /// Images in the repository.
        #[arg(long, default_value_t = 100_000)]
        images: usize,
    },
    /// Seed a database (migrated first) with audit events straight in SQL,
    /// spread over 30 days, 1,000 principals, 20 event names and 1,000
    /// repositories in 50 namespaces (the LookupAuditEvents benchmark).
    SeedAudit {
        /// Postgres URL of the database to fill.
        #[arg(long)]
        database_url: String,
        /// Events.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
    },
    /// Measure ingest throughput of DescribeImages pages into Postgres.
    Ingest {
        /// Postgres URL of a scratch database.
        #[arg(long)]
        database_url: String,
        /// Repositories to ingest.
        #[arg(long, default_value_t = 100)]
        repositories: usize,
        /// Images per repository.
        #[arg(long, default_value_t = 1000)]
        images_per_repository: usize,
        /// Repositories ingested at once (the sync's `sync.concurrency`).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Drive one RPC of a running gateway.
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// host:port of the gateway.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// What to call.
    #[arg(long, value_enum)]
    rpc: Rpc,
    /// Concurrent workers (each with its own HTTP/2 connection every 16 workers).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Target calls per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seeded repositories (to build requests).
    #[arg(long, default_value_t = 1000)]
    repositories: usize,
    /// Seeded images per repository.
    #[arg(long, default_value_t = 1000)]
    images_per_repository: usize,
    /// Calls spread over this many distinct images (0: all seeded images).
    /// A deploy system resolves the releases it ships, a small hot set.
    #[arg(long, default_value_t = 0)]
    working_set: usize,
    /// Before the timed run, call each image of the working set once (a
    /// deploy system's hot set is warm in steady state).
    #[arg(long)]
    warm: bool,
    /// Server process id, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Rpc {
    /// grpc.health.v1.Health/Check
    Health,
    /// ImageService/ResolveImage by tag
    Resolve,
    /// ImageService/ListImages, first page of 100
    ListFirst,
    /// ImageService/ListImages, the 5th page of 100
    ListDeep,
    /// ImageService/SearchImages by digest
    SearchDigest,
    /// ScanService/CheckDeployment by digest, environment prod
    Check,
    /// CleanupService/PreviewCleanup of the big repository (`seed-preview`), first page
    Preview,
    /// AuditService/LookupAuditEvents by principal, newest 100
    LookupPrincipal,
    /// AuditService/LookupAuditEvents by event name in the last day
    LookupNameDay,
    /// AuditService/LookupAuditEvents by resource ARN prefix (a namespace), mutating calls only
    LookupResourcePrefix,
    /// AuditService/LookupAuditEvents of one principal's errors
    LookupErrors,
    /// AuditService/LookupAuditEvents, no filter (the newest 100)
    LookupNewest,
}

/// Event names of the seeded audit trail.
const AUDIT_NAMES: [&str; 20] = [
    "ResolveImage",
    "CheckDeployment",
    "ListImages",
    "GetImage",
    "SearchImages",
    "GetRepository",
    "ListRepositories",
    "CreateRepository",
    "UpdateRepository",
    "DeleteRepository",
    "PinImage",
    "UnpinImage",
    "DeleteImages",
    "PreviewCleanup",
    "RunCleanup",
    "GetScanFindings",
    "StartImageScan",
    "RefreshInventory",
    "SetLifecyclePolicy",
    "BatchDeleteImage",
];

async fn seed_audit(database_url: &str, events: u64) -> anyhow::Result<()> {
    let store = connect(database_url, 4).await?;
    store.migrate().await?;
    let chunk = 1_000_000u64;
    let base = Utc::now();
    let mut start = 0;
    while start < events {
        let end = (start + chunk).min(events);
        let began = Instant::now();
        // Times rise with g over 30 days and event ids are UUIDv7 of that
        // time (as the gateway writes them), so rows arrive in index order.
        // Each dimension comes from its own hash of g, so that they are
        // independent: a principal has errors, a namespace has mutations.
        sqlx::query(
            "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, principal, \
             principal_type, groups, auth_method, source_ip, user_agent, registry_alias, account_id, region, \
             gateway_request_id, request_parameters, response_elements, error_code, error_message, resources, \
             finalized_at) \
             SELECT (substr(x.hex, 1, 12) || '7' || substr(x.m, 1, 3) || '8' || substr(x.m, 4, 15))::uuid, x.t, \
                    $3[(1 + x.name)::int], 'ecr-gateway', x.name < 14, \
                    CASE WHEN x.failed THEN 'failed' ELSE 'succeeded' END, \
                    'user-' || x.principal || '@example.com', 'User', ARRAY['team-' || x.team], 'insecure-dev', \
                    '10.0.' || (g % 250) || '.' || (g % 200), 'grpc-go/1.60', 'main', '123456789012', 'us-east-1', \
                    gen_random_uuid(), \
                    jsonb_build_object('repositoryName', 'team-' || x.team || '/svc-' || x.svc), \
                    CASE WHEN x.failed THEN NULL ELSE '{\"ok\": true}'::jsonb END, \
                    CASE WHEN x.failed THEN 'InvalidArgument' END, \
                    CASE WHEN x.failed THEN 'repository: not a repository name' END, \
                    jsonb_build_array(jsonb_build_object('type', 'AWS::ECR::Repository', 'ARN', \
                      'arn:aws:ecr:us-east-1:123456789012:repository/team-' || x.team || '/svc-' || x.svc)), \
                    x.t \
             FROM generate_series($1::bigint, $2::bigint - 1) g \
             CROSS JOIN LATERAL (SELECT t, \
                    lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') AS hex, md5(g::text) AS m, \
                    (hashint8extended(g, 1) & 9223372036854775807) % 20 AS name, \
                    (hashint8extended(g, 2) & 9223372036854775807) % 1000 AS principal, \
                    (hashint8extended(g, 3) & 9223372036854775807) % 25 = 0 AS failed, \
                    (hashint8extended(g, 4) & 9223372036854775807) % 50 AS team, \
                    (hashint8extended(g, 5) & 9223372036854775807) % 20 AS svc \
                 FROM (SELECT $5::timestamptz - interval '30 days' + (g::float8 / $4) * interval '30 days' AS t) tt) x",
        )
        .bind(start as i64)
        .bind(end as i64)
        .bind(AUDIT_NAMES.to_vec())
        .bind(events as f64)
        .bind(base)
        .execute(store.pool())
        .await?;
        println!(
            "audit events {start}..{end} in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        start = end;
    }
    sqlx::query("ANALYZE audit_events").execute(store.pool()).await?;
    Ok(())
}

/// The registry seeded images belong to (the dev/bench configuration's main registry).
fn registry() -> RegistryRef {
    RegistryRef {
        alias: "main".into(),
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
    }
}

fn repository_name(r: usize) -> String {
    let team = if r.is_multiple_of(2) { "payments" } else { "search" };
    format!("{team}/svc-{r:04}")
}

fn seed_of(r: usize, i: usize) -> String {
    format!("{}#{i}", repository_name(r))
}

fn digest(r: usize, i: usize) -> String {
    digest_of(seed_of(r, i).as_bytes()).to_string()
}

/// Every 5th image is untagged; the others carry a semver tag, every 10th also `build-N`.
fn tags(i: usize) -> Vec<String> {
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

async fn connect(database_url: &str, connections: u32) -> anyhow::Result<Store> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(database_url)
        .await?;
    let store = Store::from_pool(pool);
    store.migrate().await?;
    Ok(store)
}

async fn seed(database_url: &str, repositories: usize, per_repository: usize) -> anyhow::Result<()> {
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

async fn ingest(
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
const PREVIEW_REPOSITORY: usize = 5000;

/// Three rules as a platform team writes them: untagged images go after 14
/// days, `build-` images beyond the newest 500, and anything beyond the
/// newest 20,000.
const PREVIEW_POLICY: &str = r#"{"rules":[
 {"rulePriority":1,"description":"untagged after 14 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},
 {"rulePriority":2,"description":"keep 500 builds","selection":{"tagStatus":"tagged","tagPrefixList":["build-"],"countType":"imageCountMoreThan","countNumber":500},"action":{"type":"expire"}},
 {"rulePriority":3,"description":"keep the newest 20000","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":20000},"action":{"type":"expire"}}]}"#;

async fn seed_preview(database_url: &str, images: usize) -> anyhow::Result<()> {
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

/// What the workers measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    codes: BTreeMap<String, u64>,
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let LoadArgs {
        target,
        rpc,
        concurrency,
        seconds,
        rate,
        repositories,
        images_per_repository: per_repository,
        working_set,
        warm,
        server_pid,
    } = args;
    let mut channels = Vec::new();
    for _ in 0..concurrency.div_ceil(16) {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{target}"))?
                .connect()
                .await?,
        );
    }
    let deep_tokens = if rpc == Rpc::ListDeep {
        deep_tokens(&channels[0], repositories.min(200)).await?
    } else {
        Vec::new()
    };
    let deep_tokens = Arc::new(deep_tokens);
    if warm && working_set > 0 {
        let channel = channels[0].clone();
        let failed = futures::stream::iter(0..working_set)
            .map(|n| {
                let (channel, deep_tokens) = (channel.clone(), deep_tokens.clone());
                async move { call(&channel, rpc, n, repositories, per_repository, &deep_tokens).await }
            })
            .buffer_unordered(concurrency)
            .filter(|code| std::future::ready(code != "OK"))
            .count()
            .await;
        anyhow::ensure!(failed == 0, "{failed} warm-up calls failed");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let rss_before = server_pid.and_then(rss_kib);
    let cpu_before = server_pid.and_then(cpu_ticks).zip(postgres_ticks());
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let channel = channels[w / 16].clone();
        let (tally, counter, deep_tokens) = (tally.clone(), counter.clone(), deep_tokens.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Tally::default();
            // Each caller makes one call per period, and the callers' periods
            // are staggered across it, so that calls arrive evenly: started
            // in phase, all callers fired at once, and a paced run measured
            // how long the server takes to drain a burst of `concurrency`
            // calls, not its latency at the rate.
            let mut pace = (rate > 0).then(|| {
                let period = Duration::from_secs_f64(concurrency as f64 / rate as f64);
                let phase = period.mul_f64(w as f64 / concurrency as f64);
                let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            while Instant::now() < deadline {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let mut n = counter.fetch_add(1, Ordering::Relaxed) as usize;
                if working_set > 0 {
                    n %= working_set;
                }
                let started = Instant::now();
                let code = call(&channel, rpc, n, repositories, per_repository, &deep_tokens).await;
                local
                    .latencies_us
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                *local.codes.entry(code).or_default() += 1;
            }
            let mut tally = tally.lock().await;
            tally.latencies_us.extend(local.latencies_us);
            for (code, count) in local.codes {
                *tally.codes.entry(code).or_default() += count;
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let rss_after = server_pid.and_then(rss_kib);
    let cpu_after = server_pid.and_then(cpu_ticks).zip(postgres_ticks());
    let mut tally = tally.lock().await;
    tally.latencies_us.sort_unstable();
    let calls = tally.latencies_us.len();
    let pct = |p: f64| {
        tally
            .latencies_us
            .get(((calls as f64 * p) as usize).min(calls.saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{rpc:?}: {calls} calls in {seconds} s = {:.0}/s (concurrency {concurrency}{}{}), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, codes {:?}{}{}",
        calls as f64 / seconds as f64,
        if rate > 0 {
            format!(", paced at {rate}/s")
        } else {
            String::new()
        },
        if working_set > 0 {
            format!(", working set {working_set} images")
        } else {
            String::new()
        },
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        tally.codes,
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => format!(
                ", server RSS {:.1} MiB before, {:.1} MiB after",
                b as f64 / 1024.0,
                a as f64 / 1024.0
            ),
            _ => String::new(),
        },
        match (cpu_before, cpu_after) {
            (Some((server_0, postgres_0)), Some((server_1, postgres_1))) if calls > 0 => format!(
                ", CPU per call: server {:.0} µs, Postgres {:.0} µs",
                (server_1 - server_0) as f64 * TICK_US / calls as f64,
                (postgres_1 - postgres_0) as f64 * TICK_US / calls as f64,
            ),
            _ => String::new(),
        }
    );
    Ok(())
}

/// Microseconds per clock tick of /proc/*/stat (USER_HZ is 100 on Linux).
const TICK_US: f64 = 10_000.0;

/// User and system CPU ticks a process has used.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks used by every Postgres process on this machine (the server's
/// backends, WAL writer, checkpointer, autovacuum): what the calls cost the
/// database, when nothing else uses it during the run.
fn postgres_ticks() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let is_postgres =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres");
        if is_postgres {
            total += cpu_ticks(pid).unwrap_or(0);
        }
    }
    Some(total)
}

fn with_identity<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-ecr-gateway-principal",
        tonic::metadata::MetadataValue::from_static("bench"),
    );
    // The benchmark reads every namespace: a platform admin under deploy/policies.
    request.metadata_mut().insert(
        "x-ecr-gateway-groups",
        tonic::metadata::MetadataValue::from_static("platform-admins"),
    );
    request
}

async fn call(
    channel: &tonic::transport::Channel,
    rpc: Rpc,
    n: usize,
    repositories: usize,
    per_repository: usize,
    deep_tokens: &[(String, String)],
) -> String {
    // Spread requests over the seeded set with a multiplicative hash.
    let spread = n.wrapping_mul(2_654_435_761) % (repositories * per_repository);
    let (r, mut i) = (spread / per_repository, spread % per_repository);
    if tags(i).is_empty() {
        i = (i + 1) % per_repository;
    }
    let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
    let result = match rpc {
        Rpc::Health => tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ()),
        Rpc::Resolve => {
            let tag = tags(i).into_iter().next().unwrap_or_default();
            images
                .resolve_image(with_identity(pb::ResolveImageRequest {
                    reference: format!("{}:{tag}", repository_name(r)),
                    ..Default::default()
                }))
                .await
                .map(|_| ())
        }
        Rpc::ListFirst => images
            .list_images(with_identity(pb::ListImagesRequest {
                repository: repository_name(r),
                page_size: 100,
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        Rpc::ListDeep => {
            let (repository, token) = &deep_tokens[n % deep_tokens.len()];
            images
                .list_images(with_identity(pb::ListImagesRequest {
                    repository: repository.clone(),
                    page_size: 100,
                    page_token: token.clone(),
                    ..Default::default()
                }))
                .await
                .map(|_| ())
        }
        Rpc::Check => pb::scan_service_client::ScanServiceClient::new(channel.clone())
            .check_deployment(with_identity(pb::CheckDeploymentRequest {
                reference: format!("{}@{}", repository_name(r), digest(r, i)),
                environment: "prod".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        Rpc::Preview => pb::cleanup_service_client::CleanupServiceClient::new(channel.clone())
            .preview_cleanup(with_identity(pb::PreviewCleanupRequest {
                repository: repository_name(PREVIEW_REPOSITORY),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        Rpc::LookupPrincipal
        | Rpc::LookupNameDay
        | Rpc::LookupResourcePrefix
        | Rpc::LookupErrors
        | Rpc::LookupNewest => {
            let mut request = pb::LookupAuditEventsRequest::default();
            match rpc {
                Rpc::LookupPrincipal => request.principal = format!("user-{}@example.com", spread % 1000),
                Rpc::LookupNameDay => {
                    request.event_name = AUDIT_NAMES[spread % AUDIT_NAMES.len()].into();
                    request.start_time = Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - 86_400,
                        nanos: 0,
                    });
                }
                Rpc::LookupResourcePrefix => {
                    request.resource_arn = format!(
                        "arn:aws:ecr:us-east-1:123456789012:repository/team-{}/",
                        spread % 50
                    );
                    request.resource_prefix = true;
                    request.read_only = pb::ReadOnlyFilter::False as i32;
                }
                Rpc::LookupErrors => {
                    request.principal = format!("user-{}@example.com", spread % 1000);
                    request.error_code = "*".into();
                }
                _ => {}
            }
            pb::audit_service_client::AuditServiceClient::new(channel.clone())
                .lookup_audit_events(with_identity(request))
                .await
                .map(|_| ())
        }
        Rpc::SearchDigest => images
            .search_images(with_identity(pb::SearchImagesRequest {
                digest: digest(r, i),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => "OK".into(),
        Err(status) => format!("{:?}", status.code()),
    }
}

/// Tokens of the 5th page of 100 for the first `count` repositories.
async fn deep_tokens(
    channel: &tonic::transport::Channel,
    count: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut client = pb::image_service_client::ImageServiceClient::new(channel.clone());
    let mut tokens = Vec::new();
    for r in 0..count {
        let mut token = String::new();
        for _ in 0..4 {
            let page = client
                .list_images(with_identity(pb::ListImagesRequest {
                    repository: repository_name(r),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            token = page.next_page_token;
        }
        tokens.push((repository_name(r), token));
    }
    Ok(tokens)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Seed {
            database_url,
            repositories,
            images_per_repository,
        } => seed(&database_url, repositories, images_per_repository).await,
        Command::SeedPreview { database_url, images } => seed_preview(&database_url, images).await,
        Command::SeedAudit { database_url, events } => seed_audit(&database_url, events).await,
        Command::Ingest {
            database_url,
            repositories,
            images_per_repository,
            concurrency,
        } => ingest(&database_url, repositories, images_per_repository, concurrency).await,
        Command::Load(args) => load(args).await,
    }
}
