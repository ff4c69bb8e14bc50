//! Compliance: a repository as it stands in ECR judged against the org
//! policy, rule by rule. The same rules as [`OrgPolicy::plan_repository`],
//! with no defaults filled in: what a repository lacks is a finding, and
//! each finding says whether the gateway can mend it.

use super::org_policy::OrgPolicy;
use super::{encryption, lifecycle, settings};
use crate::domain::{AccountId, PolicyFinding, RepositoryState, Violation};

/// Rule id of a repository without the lifecycle policy its namespace's template gives.
pub const LIFECYCLE_MISSING: &str = "lifecycle-policy.missing";

/// Every rule id compliance can report, for filters that name one.
pub const RULE_FAMILIES: &[&str] = &[
    "naming.",
    "tags.",
    "settings.",
    "lifecycle-policy.",
    "repository-policy.",
    "cleanup.",
];

/// The longest rule id a filter may name (the longest in use is 40).
const MAX_RULE_ID: usize = 64;

/// What the rules see of a repository whose policies were never read from ECR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoliciesRead {
    /// The cached lifecycle and repository policies are ECR's.
    Yes,
    /// Not read yet: the policy rules are not judged.
    No,
}

impl OrgPolicy {
    /// Every org rule `state` breaks, in a stable order: naming, tags,
    /// settings, encryption, then (when its policies were read) the lifecycle
    /// policy and the repository policy.
    pub fn judge(
        &self,
        state: &RepositoryState,
        registry_account: &AccountId,
        policies: PoliciesRead,
    ) -> Vec<PolicyFinding> {
        let mut findings = Vec::new();
        let name = state.name.as_str();
        if let Err(violations) = self.naming.check(name) {
            findings.extend(violations.into_iter().map(|v| worded(v, name, false)));
        }
        findings.extend(self.tag_findings(state));
        findings.extend(self.setting_findings(state));
        if policies == PoliciesRead::Yes {
            findings.extend(self.lifecycle_findings(state));
            findings.extend(self.repository_policy_findings(state, registry_account));
        }
        findings
    }

    fn tag_findings(&self, state: &RepositoryState) -> Vec<PolicyFinding> {
        self.tags
            .breaches(&state.tags)
            .into_iter()
            .map(|(key, violation)| {
                let actual = key.as_deref().and_then(|k| state.tags.get(k)).cloned();
                let default = key.as_deref().and_then(|k| self.tags.default_of(k));
                match (violation.rule, default) {
                    ("tags.required" | "tags.allowed-values", Some(default)) => {
                        let actual = actual.unwrap_or_default();
                        found(violation, actual, default.to_owned(), true)
                    }
                    ("tags.required", None) => {
                        found(violation, String::new(), "a non-blank value".into(), true)
                    }
                    (_, _) => {
                        let actual = actual.unwrap_or_default();
                        let mendable = violation.rule == "tags.allowed-values";
                        worded(violation, &actual, mendable)
                    }
                }
            })
            .collect()
    }

    fn setting_findings(&self, state: &RepositoryState) -> Vec<PolicyFinding> {
        let config = &self.config.settings;
        let mut findings = Vec::new();
        let mutability = state.tag_mutability;
        if let Some(violation) = settings::mutability_violation(config, mutability) {
            let wanted = config.default_tag_mutability.to_string();
            findings.push(found(violation, mutability.to_string(), wanted, true));
        }
        let filters = state.exclusion_filters.join(", ");
        for violation in settings::exclusion_filter_violations(config, mutability, &state.exclusion_filters) {
            findings.push(worded(violation, &filters, true));
        }
        if let Err(violation) = settings::scan_on_push(config, Some(state.scan_on_push)) {
            findings.push(found(violation, "false".into(), "true".into(), true));
        }
        if let Err(violation) = encryption::plan(&self.encryption, Some(&state.encryption)) {
            let violation = Violation::new(
                violation.field,
                violation.rule,
                format!(
                    "the repository uses {}, but every repository uses {}; ECR fixes encryption at creation, \
                     so only a new repository (with the images copied over) can comply",
                    state.encryption, self.encryption
                ),
            );
            findings.push(found(
                violation,
                state.encryption.to_string(),
                self.encryption.to_string(),
                false,
            ));
        }
        findings
    }

    fn lifecycle_findings(&self, state: &RepositoryState) -> Vec<PolicyFinding> {
        let namespace = state.name.as_str().split('/').next().unwrap_or_default();
        let template = self.config.settings.lifecycle_templates.for_namespace(namespace);
        match (
            state.lifecycle_policy.as_deref().filter(|t| !t.trim().is_empty()),
            template,
        ) {
            (None, None) => Vec::new(),
            (None, Some(template)) => vec![PolicyFinding {
                rule: LIFECYCLE_MISSING.to_owned(),
                field: "settings.lifecycle_policy".to_owned(),
                actual: String::new(),
                wanted: template.to_owned(),
                mendable: true,
                description: format!(
                    "the repository has no lifecycle policy, but repositories of namespace `{namespace}` get the \
                     policy's lifecycle template; apply it (RemediateRepositories or SetLifecyclePolicy)"
                ),
            }],
            (Some(text), template) => lifecycle::violations(text)
                .into_iter()
                .map(|violation| {
                    let wanted = template
                        .map(str::to_owned)
                        .unwrap_or_else(|| violation.description.clone());
                    found(violation, text.to_owned(), wanted, template.is_some())
                })
                .collect(),
        }
    }

    fn repository_policy_findings(&self, state: &RepositoryState, account: &AccountId) -> Vec<PolicyFinding> {
        let text = state.repository_policy.as_deref();
        match self.repository_policy.plan(text, account) {
            Ok(_) => Vec::new(),
            Err(violations) => violations
                .into_iter()
                .map(|v| {
                    let actual = text.unwrap_or_default().to_owned();
                    found(v, actual, "a policy without the statement (or none)".into(), true)
                })
                .collect(),
        }
    }
}

/// A finding whose rule wants a value.
fn found(violation: Violation, actual: String, wanted: String, mendable: bool) -> PolicyFinding {
    PolicyFinding {
        rule: violation.rule.to_owned(),
        field: violation.field,
        actual,
        wanted,
        mendable,
        description: violation.description,
    }
}

/// A finding whose rule wants what its description says.
fn worded(violation: Violation, actual: &str, mendable: bool) -> PolicyFinding {
    let wanted = violation.description.clone();
    found(violation, actual.to_owned(), wanted, mendable)
}

/// True when `rule` is an id compliance may report (a filter's check).
pub fn is_rule_id(rule: &str) -> bool {
    rule.len() <= MAX_RULE_ID
        && RULE_FAMILIES
            .iter()
            .any(|family| rule.strip_prefix(family).is_some_and(|rest| !rest.is_empty()))
        && rule
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))
}

#[cfg(test)]
#[path = "compliance_tests.rs"]
mod tests;
