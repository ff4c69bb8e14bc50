//! The compliance tables: the violations in force (`policy_violations`) and
//! each registry's last whole evaluation (`compliance_evaluations`). An
//! evaluation reads its input with [`evaluation_input`], judges it outside
//! (`policy`), and [`replace`] writes only what changed.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::{StoreError, Tx, Visibility};
use crate::domain::{PolicyFinding, RegistryRef, RepositoryState};

/// One cached repository as an evaluation judges it.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The repository as cached.
    pub state: RepositoryState,
    /// When ECR last confirmed it.
    pub synced_at: DateTime<Utc>,
    /// True when its lifecycle and repository policies were read from ECR.
    pub policies_read: bool,
}

/// A stored violation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredViolation {
    /// Registry account.
    pub account_id: String,
    /// Registry region.
    pub region: String,
    /// Repository name.
    pub repository: String,
    /// The finding.
    pub finding: PolicyFinding,
    /// Since when it has been seen.
    pub since: DateTime<Utc>,
}

/// What [`replace`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Violations found for the first time.
    pub added: u64,
    /// Violations whose details changed (their `since` stays).
    pub changed: u64,
    /// Violations no longer found.
    pub removed: u64,
    /// Violations in force after the evaluation.
    pub total: u64,
}

/// Serialises the evaluations of one registry (replicas evaluate after their
/// syncs) until the transaction ends.
pub async fn lock_registry(tx: &mut Tx, registry: &RegistryRef) -> Result<(), StoreError> {
    let key = format!("compliance/{}/{}", registry.account_id, registry.region);
    sqlx::query_scalar!("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// The registry's cached repositories (`only`: just that one), in name order.
pub async fn evaluation_input(
    tx: &mut Tx,
    registry: &RegistryRef,
    only: Option<&str>,
) -> Result<Vec<Judged>, StoreError> {
    let rows = sqlx::query_as!(
        super::repositories::RepositoryRow,
        r#"SELECT account_id, region, name, arn, uri, created_at, tag_mutability, exclusion_filters,
                  scan_on_push, encryption_type, kms_key, tags, lifecycle_policy, repository_policy, synced_at,
                  policies_synced_at
           FROM repositories
           WHERE account_id = $1 AND region = $2 AND ($3::text IS NULL OR name = $3)
           ORDER BY name"#,
        registry.account_id,
        registry.region,
        only,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let policies_read = row.policies_synced_at.is_some();
            row.into_cached().map(|cached| Judged {
                state: cached.state,
                synced_at: cached.synced_at,
                policies_read,
            })
        })
        .collect())
}

/// Makes the registry's stored violations (`only`: of that repository) equal
/// to `findings` (per repository name), writing only the differences: a
/// violation found again keeps its `since`.
pub async fn replace(
    tx: &mut Tx,
    registry: &RegistryRef,
    only: Option<&str>,
    findings: &BTreeMap<String, Vec<PolicyFinding>>,
    now: DateTime<Utc>,
) -> Result<Replaced, StoreError> {
    let stored = sqlx::query!(
        r#"SELECT repository, rule, field, actual, wanted, mendable, description
           FROM policy_violations
           WHERE account_id = $1 AND region = $2 AND ($3::text IS NULL OR repository = $3)"#,
        registry.account_id,
        registry.region,
        only,
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut old: HashMap<(String, String, String), PolicyFinding> = stored
        .into_iter()
        .map(|r| {
            let key = (r.repository, r.rule.clone(), r.field.clone());
            let finding = PolicyFinding {
                rule: r.rule,
                field: r.field,
                actual: r.actual,
                wanted: r.wanted,
                mendable: r.mendable,
                description: r.description,
            };
            (key, finding)
        })
        .collect();
    let mut writes = Rows::default();
    let mut counts = Replaced::default();
    for (repository, list) in findings {
        for finding in list {
            let key = (repository.clone(), finding.rule.clone(), finding.field.clone());
            match old.remove(&key) {
                Some(previous) if previous == *finding => {}
                Some(_) => {
                    counts.changed += 1;
                    writes.push(repository, finding);
                }
                None => {
                    counts.added += 1;
                    writes.push(repository, finding);
                }
            }
            counts.total += 1;
        }
    }
    writes.upsert(tx, registry, now).await?;
    counts.removed = old.len() as u64;
    let (repositories, rules, fields): (Vec<String>, Vec<String>, Vec<String>) = {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for (repository, rule, field) in old.into_keys() {
            columns.0.push(repository);
            columns.1.push(rule);
            columns.2.push(field);
        }
        columns
    };
    sqlx::query!(
        r#"DELETE FROM policy_violations pv
           USING UNNEST($3::text[], $4::text[], $5::text[]) AS gone(repository, rule, field)
           WHERE pv.account_id = $1 AND pv.region = $2
             AND pv.repository = gone.repository AND pv.rule = gone.rule AND pv.field = gone.field"#,
        registry.account_id,
        registry.region,
        &repositories,
        &rules,
        &fields,
    )
    .execute(&mut **tx)
    .await?;
    Ok(counts)
}

/// The columns of the violations to insert or update.
#[derive(Default)]
struct Rows {
    repository: Vec<String>,
    rule: Vec<String>,
    field: Vec<String>,
    actual: Vec<String>,
    wanted: Vec<String>,
    mendable: Vec<bool>,
    description: Vec<String>,
}

impl Rows {
    fn push(&mut self, repository: &str, finding: &PolicyFinding) {
        self.repository.push(repository.to_owned());
        self.rule.push(finding.rule.clone());
        self.field.push(finding.field.clone());
        self.actual.push(finding.actual.clone());
        self.wanted.push(finding.wanted.clone());
        self.mendable.push(finding.mendable);
        self.description.push(finding.description.clone());
    }

    async fn upsert(
        &self,
        tx: &mut Tx,
        registry: &RegistryRef,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if self.repository.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            r#"INSERT INTO policy_violations
                   (account_id, region, repository, rule, field, actual, wanted, mendable, description, since)
               SELECT $1, $2, u.repository, u.rule, u.field, u.actual, u.wanted, u.mendable, u.description, $10
               FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[], $9::text[])
                    AS u(repository, rule, field, actual, wanted, mendable, description)
               ON CONFLICT (account_id, region, repository, rule, field) DO UPDATE SET
                   actual = EXCLUDED.actual, wanted = EXCLUDED.wanted, mendable = EXCLUDED.mendable,
                   description = EXCLUDED.description"#,
            registry.account_id,
            registry.region,
            &self.repository,
            &self.rule,
            &self.field,
            &self.actual,
            &self.wanted,
            &self.mendable,
            &self.description,
            now,
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Records a whole-registry evaluation.
pub async fn record_evaluation(
    tx: &mut Tx,
    registry: &RegistryRef,
    evaluated_at: DateTime<Utc>,
    input_synced_at: Option<DateTime<Utc>>,
    repositories: u64,
    violations: u64,
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"INSERT INTO compliance_evaluations
               (account_id, region, evaluated_at, input_synced_at, repositories, violations)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (account_id, region) DO UPDATE SET
               evaluated_at = EXCLUDED.evaluated_at, input_synced_at = EXCLUDED.input_synced_at,
               repositories = EXCLUDED.repositories, violations = EXCLUDED.violations"#,
        registry.account_id,
        registry.region,
        evaluated_at,
        input_synced_at,
        repositories as i64,
        violations as i64,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// When the registries were last evaluated whole, and the oldest ECR
/// confirmation of what was judged: the oldest of each over `registries`
/// (`None` when one of them was never evaluated).
pub async fn freshness(
    pool: &sqlx::PgPool,
    registries: &[RegistryRef],
) -> Result<Option<(DateTime<Utc>, Option<DateTime<Utc>>)>, StoreError> {
    let accounts: Vec<String> = registries.iter().map(|r| r.account_id.clone()).collect();
    let regions: Vec<String> = registries.iter().map(|r| r.region.clone()).collect();
    let rows = sqlx::query!(
        r#"SELECT e.evaluated_at AS "evaluated_at?", e.input_synced_at
           FROM UNNEST($1::text[], $2::text[]) AS r(account_id, region)
           LEFT JOIN compliance_evaluations e USING (account_id, region)"#,
        &accounts,
        &regions,
    )
    .fetch_all(pool)
    .await?;
    let mut oldest: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = None;
    for row in rows {
        let Some(evaluated_at) = row.evaluated_at else {
            return Ok(None);
        };
        let input = row.input_synced_at;
        oldest = Some(match oldest {
            None => (evaluated_at, input),
            Some((at, synced)) => (at.min(evaluated_at), min_option(synced, input)),
        });
    }
    Ok(oldest)
}

fn min_option(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Filters of a violation listing.
#[derive(Debug, Clone, Default)]
pub struct ViolationFilter {
    /// The registries to list and what the caller may read in each.
    pub visibility: Visibility,
    /// Repository name prefix; empty for all.
    pub prefix: String,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only mendable (true) or unmendable (false) violations.
    pub mendable: Option<bool>,
    /// Keyset position (account, region, repository, rule, field): list strictly after it.
    pub after: Option<(String, String, String, String, String)>,
    /// Rows to return.
    pub limit: i64,
}

/// A page of violations in (account, region, repository, rule, field) order.
pub async fn list(pool: &sqlx::PgPool, filter: &ViolationFilter) -> Result<Vec<StoredViolation>, StoreError> {
    let mut query = sqlx::QueryBuilder::new(
        "SELECT pv.account_id, pv.region, pv.repository, pv.rule, pv.field, pv.actual, pv.wanted, pv.mendable,
                pv.description, pv.since
         FROM policy_violations pv WHERE pv.repository LIKE ",
    );
    query.push_bind(format!("{}%", super::repositories::escape_like(&filter.prefix)));
    // A name sorts after its prefix: the primary key's scan starts there.
    query
        .push(" AND pv.repository >= ")
        .push_bind(filter.prefix.clone());
    filter.visibility.push_condition(
        &mut query,
        "pv.account_id",
        "pv.region",
        &super::visibility::namespace_of("pv.repository"),
    );
    if let Some(rule) = &filter.rule {
        query.push(" AND pv.rule = ").push_bind(rule.clone());
    }
    if let Some(mendable) = filter.mendable {
        query.push(" AND pv.mendable = ").push_bind(mendable);
    }
    if let Some((account, region, repository, rule, field)) = filter.after.clone() {
        query
            .push(" AND (pv.account_id, pv.region, pv.repository, pv.rule, pv.field) > (")
            .push_bind(account)
            .push(", ")
            .push_bind(region)
            .push(", ")
            .push_bind(repository)
            .push(", ")
            .push_bind(rule)
            .push(", ")
            .push_bind(field)
            .push(")");
    }
    query
        .push(" ORDER BY pv.account_id, pv.region, pv.repository, pv.rule, pv.field LIMIT ")
        .push_bind(filter.limit);
    let rows = query.build_query_as::<ViolationRow>().fetch_all(pool).await?;
    Ok(rows.into_iter().map(ViolationRow::into_stored).collect())
}

#[derive(sqlx::FromRow)]
struct ViolationRow {
    account_id: String,
    region: String,
    repository: String,
    rule: String,
    field: String,
    actual: String,
    wanted: String,
    mendable: bool,
    description: String,
    since: DateTime<Utc>,
}

impl ViolationRow {
    fn into_stored(self) -> StoredViolation {
        StoredViolation {
            account_id: self.account_id,
            region: self.region,
            repository: self.repository,
            since: self.since,
            finding: PolicyFinding {
                rule: self.rule,
                field: self.field,
                actual: self.actual,
                wanted: self.wanted,
                mendable: self.mendable,
                description: self.description,
            },
        }
    }
}

/// Counts of one rule or namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// The rule id or namespace.
    pub key: String,
    /// Violations.
    pub violations: i64,
    /// Repositories with at least one.
    pub repositories: i64,
    /// Mendable violations.
    pub mendable: i64,
}

/// What `GetComplianceSummary` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Visible cached repositories.
    pub repositories: i64,
    /// Of those, with a violation.
    pub violating: i64,
    /// Violations.
    pub violations: i64,
    /// Per rule.
    pub rules: Vec<Count>,
    /// Per namespace.
    pub namespaces: Vec<Count>,
}

/// Counts over the visible repositories whose names start with `prefix`:
/// the repositories, then the violations per rule and per namespace in one
/// pass over them (grouped per repository first, so that a repository with
/// two violations of one rule counts once among that rule's repositories).
pub async fn summary(
    pool: &sqlx::PgPool,
    visibility: &Visibility,
    prefix: &str,
) -> Result<Summary, StoreError> {
    let pattern = format!("{}%", super::repositories::escape_like(prefix));
    let repositories = {
        let mut query = sqlx::QueryBuilder::new("SELECT count(*) FROM repositories r WHERE r.name LIKE ");
        query.push_bind(pattern.clone());
        visibility.push_condition(
            &mut query,
            "r.account_id",
            "r.region",
            &super::visibility::namespace_of("r.name"),
        );
        query.build_query_scalar::<i64>().fetch_one(pool).await?
    };
    let mut query = sqlx::QueryBuilder::new(
        "WITH v AS MATERIALIZED (
             SELECT pv.account_id, pv.region, pv.repository, pv.rule, pv.mendable
             FROM policy_violations pv WHERE pv.repository LIKE ",
    );
    query.push_bind(pattern);
    visibility.push_condition(
        &mut query,
        "pv.account_id",
        "pv.region",
        &super::visibility::namespace_of("pv.repository"),
    );
    query.push(
        "), by_rule AS (
             SELECT rule, count(*) AS n, count(*) FILTER (WHERE mendable) AS m
             FROM v GROUP BY account_id, region, repository, rule
         ), by_repository AS (
             SELECT split_part(repository, '/', 1) AS namespace, count(*) AS n, count(*) FILTER (WHERE mendable) AS m
             FROM v GROUP BY account_id, region, repository
         )
         SELECT true AS is_rule, rule AS key, sum(n)::bigint AS violations, count(*) AS repositories,
                sum(m)::bigint AS mendable
         FROM by_rule GROUP BY rule
         UNION ALL
         SELECT false, namespace, sum(n)::bigint, count(*), sum(m)::bigint FROM by_repository GROUP BY namespace
         ORDER BY 1, 2",
    );
    let rows = query.build_query_as::<SummaryRow>().fetch_all(pool).await?;
    let (rules, namespaces): (Vec<SummaryRow>, Vec<SummaryRow>) = rows.into_iter().partition(|r| r.is_rule);
    let count = |r: SummaryRow| Count {
        key: r.key,
        violations: r.violations,
        repositories: r.repositories,
        mendable: r.mendable,
    };
    let rules: Vec<Count> = rules.into_iter().map(count).collect();
    let namespaces: Vec<Count> = namespaces.into_iter().map(count).collect();
    Ok(Summary {
        repositories,
        violating: namespaces.iter().map(|c| c.repositories).sum(),
        violations: rules.iter().map(|c| c.violations).sum(),
        rules,
        namespaces,
    })
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    is_rule: bool,
    key: String,
    violations: i64,
    repositories: i64,
    mendable: i64,
}

/// Violations in force per (rule, namespace), for the gauge.
pub async fn counts_by_rule_and_namespace(
    pool: &sqlx::PgPool,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT rule, split_part(repository, '/', 1) AS "namespace!", count(*) AS "count!"
           FROM policy_violations GROUP BY 1, 2 ORDER BY 1, 2"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.rule, r.namespace, r.count)).collect())
}
