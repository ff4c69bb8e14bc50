//! ListVulnerableImages' query: the cached images with a vulnerability id
//! or a finding of given severities, that the caller may read.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};

use crate::domain::Severity;
use crate::store::StoreError;

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
    visibility: &crate::store::Visibility,
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
        &crate::store::visibility::namespace_of("s.repository"),
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
