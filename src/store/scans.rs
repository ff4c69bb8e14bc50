//! Cached scans (`image_scans`, `scan_findings`) and vulnerability exceptions.
//!
//! This file holds the scan summaries and findings (stored from ECR's
//! report, read for an image, a page, the gate) and what the deploy gate
//! caches; the exceptions are in `scans/exceptions.rs`, ListVulnerableImages'
//! query in `scans/vulnerable.rs`.

mod exceptions;
mod vulnerable;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};

use super::{StoreError, Tx};
use crate::domain::{RegistryRef, ScanReport, Severity};

pub use exceptions::{
    ExceptionFilter, ExceptionRow, covering, get_exception, insert_exception, list_exceptions,
    revoke_exception,
};
pub use vulnerable::{VulnerableQuery, VulnerableRow, vulnerable_images};

/// One cached scan summary.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScanRow {
    /// Repository.
    pub repository: String,
    /// Digest.
    pub digest: String,
    /// ECR's status or NOT_SCANNED.
    pub status: String,
    /// ECR's description.
    pub description: Option<String>,
    /// Completion time.
    pub completed_at: Option<DateTime<Utc>>,
    /// Vulnerability source update time.
    pub vulnerability_source_updated_at: Option<DateTime<Utc>>,
    /// CRITICAL count.
    pub critical: i32,
    /// HIGH count.
    pub high: i32,
    /// MEDIUM count.
    pub medium: i32,
    /// LOW count.
    pub low: i32,
    /// INFORMATIONAL count.
    pub informational: i32,
    /// UNDEFINED count.
    pub undefined: i32,
    /// When the gateway read it.
    pub fetched_at: DateTime<Utc>,
}

impl ScanRow {
    /// The count of one severity.
    pub fn count(&self, severity: Severity) -> i32 {
        match severity {
            Severity::Critical => self.critical,
            Severity::High => self.high,
            Severity::Medium => self.medium,
            Severity::Low => self.low,
            Severity::Informational => self.informational,
            Severity::Undefined => self.undefined,
        }
    }
}

/// One cached finding.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FindingRow {
    /// Position in ECR's answer.
    pub ordinal: i32,
    /// Vulnerability id.
    pub name: String,
    /// Severity code (see [`Severity::code`]).
    pub severity: i16,
    /// Description.
    pub description: Option<String>,
    /// URI.
    pub uri: Option<String>,
    /// Package.
    pub package_name: Option<String>,
    /// Package version.
    pub package_version: Option<String>,
    /// Fixing version.
    pub fixed_in_version: Option<String>,
    /// Score.
    pub score: Option<f64>,
}

/// Replaces an image's cached scan and findings with what ECR reported.
pub async fn store_report(
    tx: &mut Tx,
    registry: &RegistryRef,
    repository: &str,
    report: &ScanReport,
    fetched_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let count = |severity: Severity| {
        report
            .counts
            .iter()
            .filter(|(s, _)| *s == severity)
            .map(|(_, n)| *n)
            .sum::<i32>()
    };
    sqlx::query!(
        r#"INSERT INTO image_scans AS s (account_id, region, repository, digest, status, description, completed_at,
               vulnerability_source_updated_at, critical, high, medium, low, informational, undefined, fetched_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           ON CONFLICT (account_id, region, repository, digest) DO UPDATE SET
               status = EXCLUDED.status, description = EXCLUDED.description, completed_at = EXCLUDED.completed_at,
               vulnerability_source_updated_at = EXCLUDED.vulnerability_source_updated_at,
               critical = EXCLUDED.critical, high = EXCLUDED.high, medium = EXCLUDED.medium, low = EXCLUDED.low,
               informational = EXCLUDED.informational, undefined = EXCLUDED.undefined, fetched_at = EXCLUDED.fetched_at"#,
        registry.account_id,
        registry.region,
        repository,
        report.digest,
        report.status,
        report.description,
        report.completed_at,
        report.vulnerability_source_updated_at,
        count(Severity::Critical),
        count(Severity::High),
        count(Severity::Medium),
        count(Severity::Low),
        count(Severity::Informational),
        count(Severity::Undefined),
        fetched_at,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "DELETE FROM scan_findings WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
        registry.account_id,
        registry.region,
        repository,
        report.digest,
    )
    .execute(&mut **tx)
    .await?;
    if report.findings.is_empty() {
        return Ok(());
    }
    let f = &report.findings;
    let ordinals: Vec<i32> = (0..f.len() as i32).collect();
    let names: Vec<String> = f.iter().map(|x| x.name.clone()).collect();
    let severities: Vec<i16> = f.iter().map(|x| x.severity.code()).collect();
    let descriptions: Vec<Option<String>> = f.iter().map(|x| x.description.clone()).collect();
    let uris: Vec<Option<String>> = f.iter().map(|x| x.uri.clone()).collect();
    let packages: Vec<Option<String>> = f.iter().map(|x| x.package_name.clone()).collect();
    let versions: Vec<Option<String>> = f.iter().map(|x| x.package_version.clone()).collect();
    let fixed: Vec<Option<String>> = f.iter().map(|x| x.fixed_in_version.clone()).collect();
    let scores: Vec<Option<f64>> = f.iter().map(|x| x.score).collect();
    sqlx::query!(
        r#"INSERT INTO scan_findings (account_id, region, repository, digest, ordinal, name, severity, description,
               uri, package_name, package_version, fixed_in_version, score)
           SELECT $1, $2, $3, $4, u.* FROM UNNEST($5::int4[], $6::text[], $7::int2[], $8::text[], $9::text[],
               $10::text[], $11::text[], $12::text[], $13::float8[]) AS u"#,
        registry.account_id,
        registry.region,
        repository,
        report.digest,
        &ordinals,
        &names,
        &severities,
        &descriptions as &[Option<String>],
        &uris as &[Option<String>],
        &packages as &[Option<String>],
        &versions as &[Option<String>],
        &fixed as &[Option<String>],
        &scores as &[Option<f64>],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The cached scan of one image.
pub async fn get(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
) -> Result<Option<ScanRow>, StoreError> {
    Ok(sqlx::query_as!(
        ScanRow,
        "SELECT repository, digest, status, description, completed_at, vulnerability_source_updated_at, critical, \
         high, medium, low, informational, undefined, fetched_at FROM image_scans \
         WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
        registry.account_id,
        registry.region,
        repository,
        digest,
    )
    .fetch_optional(pool)
    .await?)
}

/// Digests of the repository whose scan should be read, at most `limit`:
/// never read first, then those last seen unfinished (IN_PROGRESS, PENDING),
/// then those ECR had not scanned an hour or more ago, then completed scans
/// read more than a day ago (continuous scanning updates findings); newest
/// pushes first within each group.
pub async fn digests_to_refresh(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT i.digest FROM images i
           LEFT JOIN image_scans s ON s.account_id = i.account_id AND s.region = i.region
                                  AND s.repository = i.repository AND s.digest = i.digest
           WHERE i.account_id = $1 AND i.region = $2 AND i.repository = $3 AND i.status = 'ACTIVE'
             AND (i.kind IS NULL OR i.kind = 'image')
             AND (s.digest IS NULL OR s.status IN ('IN_PROGRESS', 'PENDING')
                  OR (s.status = 'NOT_SCANNED' AND s.fetched_at < now() - interval '1 hour')
                  OR s.fetched_at < now() - interval '1 day')
           ORDER BY (CASE WHEN s.digest IS NULL THEN 0 WHEN s.status IN ('IN_PROGRESS', 'PENDING') THEN 1
                          WHEN s.status = 'NOT_SCANNED' THEN 2 ELSE 3 END),
                    i.pushed_at DESC, i.digest DESC LIMIT $4"#,
        registry.account_id,
        registry.region,
        repository,
        limit,
    )
    .fetch_all(pool)
    .await?)
}

/// A page of an image's findings, most severe first (UNDEFINED last), then in
/// ECR's order; `after` is the last (rank, ordinal) of the previous page.
pub async fn findings_page(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
    severities: &[i16],
    after: Option<(i16, i32)>,
    limit: i64,
) -> Result<Vec<FindingRow>, StoreError> {
    // rank: CRITICAL 0 … INFORMATIONAL 4, UNDEFINED 5.
    let mut query = QueryBuilder::new(
        "SELECT ordinal, name, severity, description, uri, package_name, package_version, fixed_in_version, score \
         FROM scan_findings WHERE account_id = ",
    );
    query.push_bind(registry.account_id.clone());
    query.push(" AND region = ").push_bind(registry.region.clone());
    query.push(" AND repository = ").push_bind(repository.to_owned());
    query.push(" AND digest = ").push_bind(digest.to_owned());
    if !severities.is_empty() {
        query
            .push(" AND severity = ANY(")
            .push_bind(severities.to_vec())
            .push(")");
    }
    const RANK: &str = "(CASE WHEN severity = 6 THEN 5 ELSE 5 - severity END)";
    if let Some((rank, ordinal)) = after {
        query.push(format!(" AND ({RANK}, ordinal) > ("));
        query.push_bind(rank).push("::int, ").push_bind(ordinal).push(")");
    }
    query
        .push(format!(" ORDER BY {RANK}, ordinal LIMIT "))
        .push_bind(limit);
    Ok(query.build_query_as::<FindingRow>().fetch_all(pool).await?)
}

/// The rank used by [`findings_page`]'s order.
pub fn rank(severity: i16) -> i16 {
    if severity == 6 { 5 } else { 5 - severity }
}

/// Every finding of an image as (name, severity code), for the gate.
pub async fn gate_findings(
    pool: &PgPool,
    registry: &RegistryRef,
    repository: &str,
    digest: &str,
) -> Result<Vec<(String, i16)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT name, severity FROM scan_findings WHERE account_id = $1 AND region = $2 AND repository = $3 \
         AND digest = $4 ORDER BY ordinal",
        registry.account_id,
        registry.region,
        repository,
        digest,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.name, row.severity)).collect())
}

/// What the deploy gate needs about one image, as cached in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployFacts {
    /// The digest.
    pub digest: String,
    /// Whether the tag asked for is immutable (false for a digest).
    pub tag_immutable: bool,
    /// ACTIVE / ARCHIVED / ACTIVATING.
    pub status: String,
    /// Push time.
    pub pushed_at: DateTime<Utc>,
    /// The cached scan.
    pub scan: Option<ScanRow>,
    /// Every finding as (name, severity code).
    pub findings: Vec<(String, i16)>,
    /// Unrevoked exceptions covering the image: (vulnerability id, expiry).
    pub exceptions: Vec<(String, DateTime<Utc>)>,
}
