//! Retention: events chained longer ago than `[audit] retention` are
//! archived, then purged. Each step takes the oldest run of the chain (at
//! most [`BATCH`] links) whose links were all chained before the cutoff and
//! have reached every configured sink, checks that run against the chain,
//! signs its last link (when a key is configured), writes it to
//! `archive_dir/audit-<first>-<last>.jsonl` in the form `audit export`
//! writes (synced and renamed into place), and only then records the purge
//! and deletes the run's events and links in one transaction.
//!
//! A crash between the archive and the purge leaves an archive that the next
//! step writes again; a crash during the purge's transaction leaves nothing.
//! After a purge the remaining chain starts from the purge's recorded hash,
//! so `VerifyAuditLog` still checks it, and the archives chain into each
//! other: `audit verify` over the archives and a later export, in order,
//! checks the whole history.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::chain::{self, Link};
use super::digest;
use crate::store::Store;
use crate::store::audit_trail::{self, Purge};

/// Most links archived and purged per step (and per archive file).
pub const BATCH: i64 = 10_000;

/// What retention keeps and where it archives.
#[derive(Clone)]
pub struct Retention {
    /// Events chained longer ago than this are purged.
    pub max_age: Duration,
    /// Where archives are written.
    pub archive_dir: PathBuf,
    /// The configured sinks (their cursor names): nothing is purged before every one has it.
    pub sinks: Vec<String>,
    /// Signs the last link of each archive, so that the archive is covered by a digest.
    pub key: Option<ed25519_dalek::SigningKey>,
}

impl Retention {
    /// The retention `[audit]` configures (None: keep every event). The
    /// configuration is checked when it loads.
    pub fn configured(
        config: &crate::config::AuditConfig,
        key: Option<ed25519_dalek::SigningKey>,
    ) -> Option<Retention> {
        Some(Retention {
            max_age: config.retention_age()?,
            archive_dir: config.archive_dir.clone()?,
            sinks: super::sink::configured(config)
                .iter()
                .map(super::sink::Target::name)
                .collect(),
            key,
        })
    }
}

/// One step's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// The first sequence purged.
    pub from: i64,
    /// The last sequence purged.
    pub through: i64,
    /// Events removed.
    pub events: u64,
    /// The archive written.
    pub archive: PathBuf,
}

/// Archives and purges the oldest run of expired events, if there is one.
pub async fn purge_step(
    store: &Store,
    retention: &Retention,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Purged>> {
    let pool = store.pool();
    let age = chrono::Duration::from_std(retention.max_age)?;
    let cutoff = now - age;
    let after = audit_trail::last_purge(pool).await?.map_or(0, |p| p.through_seq);
    let Some(through) = audit_trail::purgeable_through(pool, after, cutoff, &retention.sinks, BATCH).await?
    else {
        return Ok(None);
    };
    let rows = audit_trail::chain_range(pool, after + 1, through).await?;
    let start = audit_trail::hash_at(pool, after).await?.map(|hash| (after, hash));
    let links: Vec<Link> = rows.iter().map(Link::from_row).collect();
    let verification = chain::verify(&links, start);
    if let Some((sequence, event, problem)) = verification.first_bad {
        anyhow::bail!(
            "not purging: the chain is broken at sequence {sequence} (event {event}: {}); run VerifyAuditLog and \
             investigate before any event is removed",
            problem.describe()
        );
    }
    if rows.len() as i64 != through - after {
        anyhow::bail!(
            "not purging: sequences {}..={through} should hold {} links but {} were read",
            after + 1,
            through - after,
            rows.len()
        );
    }
    let hash = verification.last_hash;
    if let Some(key) = &retention.key {
        audit_trail::insert_digest(pool, &digest::sign(key, through, &hash, now)).await?;
    }
    let digests = audit_trail::digests_between(pool, after + 1, through).await?;
    let mut bytes = Vec::with_capacity(rows.len() * 1024);
    chain::write_export(&mut bytes, &rows, &digests)?;
    let name = format!("audit-{:012}-{:012}.jsonl", after + 1, through);
    let path = retention.archive_dir.join(&name);
    write_durably(&path, &bytes)?;
    let purge = Purge {
        from_seq: after + 1,
        through_seq: through,
        through_hash: hash,
        cutoff,
        archive: name,
        archive_sha256: hex::encode(Sha256::digest(&bytes)),
        purged_at: now,
    };
    let events = audit_trail::purge(pool, &purge).await?;
    tracing::info!(
        from = purge.from_seq,
        through = purge.through_seq,
        events,
        archive = %path.display(),
        "audit retention: archived and purged"
    );
    Ok(Some(Purged {
        from: purge.from_seq,
        through,
        events,
        archive: path,
    }))
}

/// Purges until nothing more has expired; returns every step's work.
pub async fn purge_all(
    store: &Store,
    retention: &Retention,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Purged>> {
    let mut done = Vec::new();
    while let Some(step) = purge_step(store, retention, now).await? {
        done.push(step);
    }
    Ok(done)
}

/// Runs [`purge_all`] every `interval` until `stop` flips. Several replicas
/// may run it: the database accepts a purge only if it continues the last
/// one, so a replica that loses the race fails its step and tries again later.
pub async fn run_retention(
    store: Store,
    retention: Retention,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // Step by step, so that shutdown waits for one step at most.
        while !*stop.borrow() {
            match purge_step(&store, &retention, Utc::now()).await {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!("audit retention: {error:#}; trying again in {interval:?}");
                    break;
                }
            }
        }
        if !crate::tasks::pause(interval, &mut stop).await {
            return;
        }
    }
}

/// Writes `bytes` to `path` so that it survives a crash once this returns:
/// a temporary file beside it, synced, renamed over it, and the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("jsonl.partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
