//! Cached scans (`image_scans`, `scan_findings`) and vulnerability exceptions.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use super::{StoreError, Tx};
use crate::domain::{RegistryRef, ScanReport, Severity};

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
    pub visibility: super::Visibility,
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

/// An image ListVulnerableImages returns.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VulnerableRow {
    /// Account.
    pub account_id: String,
    /// Region.
    pub region: String,
    /// Repository.
    pub repository: String,
    /// Digest.
    pub digest: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Push time.
    pub pushed_at: DateTime<Utc>,
    /// Counts: critical, high, medium, low, informational, undefined.
    pub critical: i32,
    /// HIGH.
    pub high: i32,
    /// MEDIUM.
    pub medium: i32,
    /// LOW.
    pub low: i32,
    /// INFORMATIONAL.
    pub informational: i32,
    /// UNDEFINED.
    pub undefined: i32,
    /// Matching findings, `NAME (SEVERITY)`, at most 20.
    pub matching: Vec<String>,
    /// Whether an active pin holds it.
    pub pinned: bool,
}

/// What ListVulnerableImages looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VulnerableQuery {
    /// Images with this vulnerability id.
    Cve(String),
    /// Images with a finding of one of these severity codes.
    Severities(Vec<i16>),
}

/// A page of affected images that `visibility` lets the caller read, ordered by key; `after`
/// is the last (account, region, repository, digest).
pub async fn vulnerable_images(
    pool: &PgPool,
    visibility: &super::Visibility,
    query_for: &VulnerableQuery,
    after: Option<&(String, String, String, String)>,
    limit: i64,
) -> Result<Vec<VulnerableRow>, StoreError> {
    let mut query = QueryBuilder::new(
        "SELECT s.account_id, s.region, s.repository, s.digest, i.tags, i.pushed_at, s.critical, s.high, s.medium, \
         s.low, s.informational, s.undefined, ARRAY(SELECT f.name || ' (' || (ARRAY['INFORMATIONAL','LOW','MEDIUM',\
         'HIGH','CRITICAL','UNDEFINED'])[f.severity] || ')' FROM scan_findings f WHERE f.account_id = s.account_id \
         AND f.region = s.region AND f.repository = s.repository AND f.digest = s.digest AND ",
    );
    match query_for {
        VulnerableQuery::Cve(cve) => {
            query.push("f.name = ").push_bind(cve.clone());
        }
        VulnerableQuery::Severities(codes) => {
            query.push("f.severity = ANY(").push_bind(codes.clone()).push(")");
        }
    }
    query.push(
        " ORDER BY f.ordinal LIMIT 20) AS matching, EXISTS (SELECT 1 FROM pins p WHERE p.account_id = s.account_id \
         AND p.region = s.region AND p.repository = s.repository AND p.digest = s.digest \
         AND (p.expires_at IS NULL OR p.expires_at > now())) AS pinned \
         FROM image_scans s JOIN images i ON i.account_id = s.account_id \
         AND i.region = s.region AND i.repository = s.repository AND i.digest = s.digest WHERE ",
    );
    match query_for {
        VulnerableQuery::Cve(cve) => {
            query.push(
                "EXISTS (SELECT 1 FROM scan_findings f WHERE f.account_id = s.account_id AND f.region = s.region \
                 AND f.repository = s.repository AND f.digest = s.digest AND f.name = ",
            );
            query.push_bind(cve.clone()).push(")");
        }
        VulnerableQuery::Severities(codes) => {
            let columns: Vec<&str> = codes
                .iter()
                .map(|c| match Severity::from_code(*c) {
                    Severity::Critical => "s.critical > 0",
                    Severity::High => "s.high > 0",
                    Severity::Medium => "s.medium > 0",
                    Severity::Low => "s.low > 0",
                    Severity::Informational => "s.informational > 0",
                    Severity::Undefined => "s.undefined > 0",
                })
                .collect();
            query.push(format!("({})", columns.join(" OR ")));
        }
    }
    visibility.push_condition(
        &mut query,
        "s.account_id",
        "s.region",
        &super::visibility::namespace_of("s.repository"),
    );
    if let Some((account, region, repository, digest)) = after {
        query.push(" AND (s.account_id, s.region, s.repository, s.digest) > (");
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
        .push(" ORDER BY s.account_id, s.region, s.repository, s.digest LIMIT ")
        .push_bind(limit);
    Ok(query.build_query_as::<VulnerableRow>().fetch_all(pool).await?)
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
