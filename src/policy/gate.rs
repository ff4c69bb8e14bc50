//! The deploy gate: may this image be deployed to this environment? Pure:
//! the caller gathers the facts (from the cache, never from ECR) and this
//! module decides, giving every reason with a stable rule id.
//!
//! Also the checks of vulnerability exceptions (CVE id, expiry window) and of
//! a registry scanning configuration against the org policy.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

pub use crate::config::{DeployConfig, EnvironmentRules};
use crate::domain::Violation;
pub use crate::domain::{Frequency, Severity};

/// Problems in `[policy.deploy]`, each naming its key.
pub fn config_problems(config: &DeployConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if config.environments.is_empty() {
        problems.push("policy.deploy.environments: define at least one environment, e.g. [policy.deploy.environments.prod]".into());
    }
    for name in config.environments.keys() {
        if !valid_environment_name(name) {
            problems.push(format!(
                "policy.deploy.environments.{name}: an environment name is 1-64 lowercase letters, digits, `-` or `_`"
            ));
        }
    }
    if !(1..=3650).contains(&config.max_exception_days) {
        problems.push("policy.deploy.max_exception_days: must be 1 to 3650".into());
    }
    problems
}

fn valid_environment_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// How the image was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// By digest.
    Digest,
    /// By a tag the repository does not let move.
    ImmutableTag(String),
    /// By a tag that can be moved to another image after the check.
    MutableTag(String),
}

/// One finding as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFinding {
    /// CVE id (or other vulnerability id).
    pub name: String,
    /// Severity.
    pub severity: Severity,
}

/// The scan the gate judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateScan {
    /// ECR's status.
    pub status: String,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Counts by severity, as ECR reported them.
    pub counts: BTreeMap<Severity, i32>,
    /// The findings (for exceptions and for the reasons).
    pub findings: Vec<GateFinding>,
}

/// The image the gate judges; `None` when the inventory has no such image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateImage {
    /// When it was pushed.
    pub pushed_at: DateTime<Utc>,
    /// ACTIVE, ARCHIVED or ACTIVATING.
    pub status: String,
    /// Its scan, when the gateway has read one.
    pub scan: Option<GateScan>,
}

/// Why the gate denies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Stable rule id.
    pub rule_id: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The findings behind a severity reason, as `NAME (SEVERITY)`.
    pub findings: Vec<String>,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every reason to deny; empty means allow.
    pub reasons: Vec<Reason>,
    /// Findings not counted because an exception covers them, as `NAME (SEVERITY)`.
    pub excepted: Vec<String>,
}

impl Verdict {
    /// True when nothing blocks.
    pub fn allowed(&self) -> bool {
        self.reasons.is_empty()
    }
}

fn reason(rule_id: &'static str, message: String) -> Reason {
    Reason {
        rule_id,
        message,
        findings: Vec::new(),
    }
}

/// Decides. `excepted_cves` are the ids of the active exceptions that cover
/// this image (upper case).
pub fn decide(
    environment: &str,
    rules: &EnvironmentRules,
    reference: &Reference,
    image: Option<&GateImage>,
    excepted_cves: &[String],
    now: DateTime<Utc>,
) -> Verdict {
    let mut reasons = Vec::new();
    let mut excepted = Vec::new();
    if let Reference::MutableTag(tag) = reference {
        reasons.push(reason(
            "deploy.reference-mutable",
            format!(
                "tag `{tag}` can be moved to another image after this check; deploy by digest \
                 (ResolveImage gives the pinned URI) or use a tag the repository keeps immutable"
            ),
        ));
    }
    let Some(image) = image else {
        reasons.push(reason(
            "deploy.image-unknown",
            "the gateway's inventory has no such image; if it was pushed just now, call \
             ImageService.RefreshInventory and check again"
                .to_owned(),
        ));
        return Verdict { reasons, excepted };
    };
    if image.status != "ACTIVE" {
        reasons.push(reason(
            "deploy.image-archived",
            format!(
                "the image is {}: it cannot be pulled until it is restored to ACTIVE",
                image.status
            ),
        ));
    }
    if rules.max_image_age_days > 0 {
        let age = now - image.pushed_at;
        if age > Duration::days(i64::from(rules.max_image_age_days)) {
            reasons.push(reason(
                "deploy.image-too-old",
                format!(
                    "the image was pushed {} days ago; `{environment}` accepts images at most {} days old: rebuild and push it",
                    age.num_days(),
                    rules.max_image_age_days
                ),
            ));
        }
    }
    let completed = image
        .scan
        .as_ref()
        .filter(|s| s.status == "COMPLETE" || s.status == "ACTIVE");
    match completed {
        None if rules.require_scan => {
            let status = image.scan.as_ref().map_or("NOT_SCANNED", |s| s.status.as_str());
            reasons.push(reason(
                "deploy.scan-missing",
                format!(
                    "`{environment}` requires a completed scan and the image's scan status is {status}; \
                     call ScanService.StartImageScan and check again when it completes"
                ),
            ));
        }
        None => {}
        Some(scan) => {
            if rules.require_scan
                && rules.max_scan_age_days > 0
                && let Some(completed_at) = scan.completed_at
                && now - completed_at > Duration::days(i64::from(rules.max_scan_age_days))
            {
                reasons.push(reason(
                    "deploy.scan-stale",
                    format!(
                        "the last scan completed {} days ago; `{environment}` accepts scans at most {} days old: \
                         call ScanService.StartImageScan",
                        (now - completed_at).num_days(),
                        rules.max_scan_age_days
                    ),
                ));
            }
            let (blocking, covered) = severity_reason(environment, rules, scan, excepted_cves);
            excepted = covered;
            reasons.extend(blocking);
        }
    }
    Verdict { reasons, excepted }
}

/// The severity reason, if a denied severity remains after exceptions, and
/// the findings exceptions covered.
fn severity_reason(
    environment: &str,
    rules: &EnvironmentRules,
    scan: &GateScan,
    excepted_cves: &[String],
) -> (Option<Reason>, Vec<String>) {
    let mut summary = Vec::new();
    let mut findings = Vec::new();
    let mut covered = Vec::new();
    for severity in &rules.deny_severities {
        let (excepted, listed): (Vec<&GateFinding>, Vec<&GateFinding>) = scan
            .findings
            .iter()
            .filter(|f| f.severity == *severity)
            .partition(|f| is_excepted(&f.name, excepted_cves));
        // ECR's count wins when it says more than the findings listed.
        let reported = scan.counts.get(severity).copied().unwrap_or(0);
        let count = (reported - excepted.len() as i32).max(listed.len() as i32);
        covered.extend(excepted.iter().map(|f| label(f)));
        if count > 0 {
            summary.push(format!("{count} {}", severity.as_str()));
            findings.extend(listed.iter().map(|f| label(f)));
        }
    }
    let reason = (!summary.is_empty()).then(|| Reason {
        rule_id: "deploy.severity-threshold",
        message: format!(
            "`{environment}` blocks {} findings and the image has {}; fix them and rebuild, or ask for a \
             time-boxed exception (ScanService.CreateVulnerabilityException)",
            rules
                .deny_severities
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            summary.join(", ")
        ),
        findings,
    });
    (reason, covered)
}

fn label(finding: &GateFinding) -> String {
    format!("{} ({})", finding.name, finding.severity.as_str())
}

fn is_excepted(name: &str, excepted_cves: &[String]) -> bool {
    excepted_cves.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Checks a vulnerability id: `CVE-YYYY-NNNN…`, `GHSA-xxxx-xxxx-xxxx`, or an
/// Amazon Linux advisory (`ALAS-…`, `ALAS2-…`, `ALAS2023-…`). Returns it
/// normalised (upper case, GHSA ids lower case after the prefix as GitHub writes them).
pub fn parse_vulnerability_id(field: &str, raw: &str) -> Result<String, Violation> {
    let id = raw.trim();
    let upper = id.to_ascii_uppercase();
    let cve = || {
        let mut parts = upper.splitn(3, '-');
        parts.next() == Some("CVE")
            && parts
                .next()
                .is_some_and(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|n| (4..=19).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let ghsa = || {
        let parts: Vec<&str> = id.split('-').collect();
        parts.len() == 4
            && parts[0].eq_ignore_ascii_case("GHSA")
            && parts[1..]
                .iter()
                .all(|p| p.len() == 4 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    let alas = || {
        upper.starts_with("ALAS")
            && upper.len() <= 40
            && upper
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && upper.contains('-')
    };
    if cve() || alas() {
        Ok(upper)
    } else if ghsa() {
        Ok(format!("GHSA{}", &id[4..].to_ascii_lowercase()))
    } else {
        Err(Violation::new(
            field,
            "exception.cve-id",
            format!(
                "`{}` is not a vulnerability id; use CVE-YYYY-NNNN (e.g. CVE-2024-3094), GHSA-xxxx-xxxx-xxxx or ALAS-…",
                raw.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// Checks an exception's expiry: required, in the future, at most
/// `max_days` ahead.
pub fn check_expiry(
    field: &str,
    expires_at: Option<DateTime<Utc>>,
    max_days: u32,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Violation> {
    let Some(expires_at) = expires_at else {
        return Err(Violation::new(
            field,
            "exception.expiry-required",
            format!("an exception must expire; give a time within {max_days} days"),
        ));
    };
    if expires_at <= now {
        return Err(Violation::new(
            field,
            "exception.expiry-past",
            format!(
                "{} is in the past; give a time within the next {max_days} days",
                expires_at.to_rfc3339()
            ),
        ));
    }
    if expires_at > now + Duration::days(i64::from(max_days)) {
        return Err(Violation::new(
            field,
            "exception.expiry-too-far",
            format!(
                "{} is more than {max_days} days ahead (policy.deploy.max_exception_days); \
                 give an earlier time and renew the exception when it runs out",
                expires_at.to_rfc3339()
            ),
        ));
    }
    Ok(expires_at)
}

/// Checks a registry scanning configuration against ECR's rules and, when
/// the org policy requires scan on push, that every managed namespace (or,
/// with no namespaces configured, every repository) is covered by a rule that
/// scans on push or continuously.
pub fn scanning_violations(
    enhanced: bool,
    rules: &[(Frequency, Vec<String>)],
    namespaces: &[String],
    require_scan_on_push: bool,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    if rules.len() > 2 {
        violations.push(Violation::new(
            "rules",
            "scanning.rule-count",
            "ECR takes at most 2 rules: one SCAN_ON_PUSH and one CONTINUOUS_SCAN",
        ));
    }
    for (i, (frequency, filters)) in rules.iter().enumerate() {
        if rules[..i].iter().any(|(earlier, _)| earlier == frequency) {
            violations.push(Violation::new(
                format!("rules[{i}].frequency"),
                "scanning.duplicate-frequency",
                "ECR takes one rule per frequency; put every repository filter of this frequency in one rule",
            ));
        }
        if !enhanced && *frequency == Frequency::Continuous {
            violations.push(Violation::new(
                format!("rules[{i}].frequency"),
                "scanning.continuous-needs-enhanced",
                "CONTINUOUS_SCAN needs scan_type SCAN_TYPE_ENHANCED; basic scanning scans on push",
            ));
        }
        if *frequency == Frequency::Manual {
            violations.push(Violation::new(
                format!("rules[{i}].frequency"),
                "scanning.frequency",
                "a rule scans SCAN_FREQUENCY_SCAN_ON_PUSH or SCAN_FREQUENCY_CONTINUOUS_SCAN; \
                 repositories no rule matches are scanned manually",
            ));
        }
        if filters.is_empty() || filters.len() > 100 {
            violations.push(Violation::new(
                format!("rules[{i}].repository_filters"),
                "scanning.filters",
                "give 1 to 100 repository filters, e.g. \"payments/*\" or \"*\"",
            ));
        }
        for (j, filter) in filters.iter().enumerate() {
            let ok = (1..=256).contains(&filter.len())
                && filter
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./*".contains(&b));
            if !ok {
                violations.push(Violation::new(
                    format!("rules[{i}].repository_filters[{j}]"),
                    "scanning.filter-syntax",
                    "a filter is 1-256 characters: lowercase letters, digits, `-`, `_`, `.`, `/` and `*` wildcards",
                ));
            }
        }
    }
    if require_scan_on_push {
        let scanning: Vec<&String> = rules
            .iter()
            .filter(|(f, _)| *f != Frequency::Manual)
            .flat_map(|(_, filters)| filters)
            .collect();
        let covers = |prefix: &str| {
            scanning.iter().any(|filter| match filter.find('*') {
                Some(star) => star == filter.len() - 1 && prefix.starts_with(&filter[..star]),
                None => false,
            })
        };
        if namespaces.is_empty() {
            if !covers("") {
                violations.push(Violation::new(
                    "rules",
                    "scanning.require-scan-on-push",
                    "the org policy requires every repository to be scanned on push: add a rule with filter \"*\"",
                ));
            }
        } else {
            for namespace in namespaces {
                if !covers(&format!("{namespace}/")) {
                    violations.push(Violation::new(
                        "rules",
                        "scanning.require-scan-on-push",
                        format!(
                            "the org policy requires namespace `{namespace}` to be scanned on push: \
                             add the filter \"{namespace}/*\" (or \"*\") to a scan-on-push or continuous rule"
                        ),
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
