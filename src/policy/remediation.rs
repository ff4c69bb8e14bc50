//! Remediation: what the gateway would change in ECR to make a repository
//! meet the org policy, and what it cannot change. The plan is the
//! repository's own state with each mendable finding put right, so applying
//! it (`Registry::converge_repository`) touches nothing else: no tag is
//! removed, a repository policy loses only the statements the guard forbids.

use std::collections::BTreeMap;

use super::compliance::{LIFECYCLE_MISSING, PoliciesRead};
use super::org_policy::OrgPolicy;
use crate::domain::{AccountId, PolicyFinding, RepositorySpec, RepositoryState};

/// One setting a remediation changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mend {
    /// The rules it puts right.
    pub rules: Vec<String>,
    /// The setting.
    pub field: String,
    /// Its value now ("" when absent).
    pub before: String,
    /// Its value after.
    pub after: String,
}

/// What remediating one repository would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remedy {
    /// The repository as it should be (its current state, mended).
    pub spec: RepositorySpec,
    /// The changes, in the order they are applied.
    pub mends: Vec<Mend>,
    /// What stays broken: findings ECR does not let the gateway change, and
    /// required tags that have neither a default nor a given value.
    pub left: Vec<PolicyFinding>,
}

impl Remedy {
    /// True when applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.mends.is_empty()
    }
}

impl OrgPolicy {
    /// The remedy of `state`: the findings of [`OrgPolicy::judge`] put right
    /// where they can be, with `given` values for tags (a required tag
    /// without a default needs one), and the policy's default tags added to
    /// a repository without them (adoption: `managed-by`). With `only`
    /// non-empty, only findings of those rule ids are mended. With
    /// `policies` [`PoliciesRead::No`] the state's policies are not known, so
    /// neither is judged nor changed.
    pub fn remedy(
        &self,
        state: &RepositoryState,
        registry_account: &AccountId,
        given: &BTreeMap<String, String>,
        only: &[String],
        policies: PoliciesRead,
    ) -> Remedy {
        let findings = self.judge(state, registry_account, policies);
        let wanted = |f: &PolicyFinding| only.is_empty() || only.iter().any(|r| r == &f.rule);
        let mut spec = spec_of(state);
        let mut mends = Vec::new();
        let mut left = Vec::new();
        let mut tag_rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for finding in findings {
            if !finding.mendable || !wanted(&finding) {
                left.push(finding);
                continue;
            }
            let mended = match finding.rule.as_str() {
                "tags.required" | "tags.allowed-values" => {
                    let key = tag_key(&finding.field);
                    let value = key.as_deref().and_then(|k| {
                        given
                            .get(k)
                            .map(String::as_str)
                            .or_else(|| self.tags.default_of(k))
                    });
                    match (key, value) {
                        (Some(key), Some(value)) if !value.trim().is_empty() => {
                            spec.tags.insert(key.clone(), value.to_owned());
                            tag_rules.entry(key).or_default().push(finding.rule.clone());
                            true
                        }
                        _ => false,
                    }
                }
                "settings.tag-mutability"
                | "settings.exclusion-filter-count"
                | "settings.exclusion-filter-grammar"
                | "settings.exclusion-filter-allowed" => {
                    self.mend_mutability(state, &mut spec, &finding, &mut mends)
                }
                "settings.scan-on-push" => {
                    spec.scan_on_push = true;
                    mends.push(mend(&finding, "false", "true"));
                    true
                }
                LIFECYCLE_MISSING => {
                    spec.lifecycle_policy = Some(finding.wanted.clone());
                    mends.push(mend(&finding, "", &finding.wanted));
                    true
                }
                rule if rule.starts_with("lifecycle-policy.") => {
                    let namespace = state.name.as_str().split('/').next().unwrap_or_default();
                    let template = self.config.settings.lifecycle_templates.for_namespace(namespace);
                    match template {
                        Some(template) => {
                            spec.lifecycle_policy = Some(template.to_owned());
                            merge_or_push(&mut mends, &finding, &finding.actual, template);
                            true
                        }
                        None => false,
                    }
                }
                rule if rule.starts_with("repository-policy.") => {
                    let text = state.repository_policy.as_deref().unwrap_or_default();
                    let repaired = self.repository_policy.repaired(text, registry_account);
                    let after = repaired.clone().unwrap_or_default();
                    spec.repository_policy = repaired;
                    merge_or_push(&mut mends, &finding, text, &after);
                    true
                }
                _ => false,
            };
            if !mended {
                left.push(finding);
            }
        }
        // Adoption: the policy's default tags on a repository made elsewhere.
        for (key, value) in &self.config.tags.defaults {
            if !spec.tags.contains_key(key) {
                spec.tags.insert(key.clone(), value.clone());
                tag_rules
                    .entry(key.clone())
                    .or_default()
                    .push("tags.default".into());
            }
        }
        for (key, rules) in tag_rules {
            mends.push(Mend {
                rules,
                field: format!("settings.tags[{key:?}]"),
                before: state.tags.get(&key).cloned().unwrap_or_default(),
                after: spec.tags.get(&key).cloned().unwrap_or_default(),
            });
        }
        Remedy { spec, mends, left }
    }

    fn mend_mutability(
        &self,
        state: &RepositoryState,
        spec: &mut RepositorySpec,
        finding: &PolicyFinding,
        mends: &mut Vec<Mend>,
    ) -> bool {
        let settings = &self.config.settings;
        let target = match settings.allowed_tag_mutability.contains(&state.tag_mutability) {
            true => state.tag_mutability,
            false => settings.default_tag_mutability,
        };
        let filters: Vec<String> = match target.has_exclusions() {
            false => Vec::new(),
            true => state
                .exclusion_filters
                .iter()
                .filter(|f| {
                    super::settings::is_valid_exclusion_filter(f)
                        && (settings.allowed_exclusion_filters.is_empty()
                            || settings.allowed_exclusion_filters.contains(f))
                })
                .take(settings.max_exclusion_filters)
                .cloned()
                .collect(),
        };
        if target.has_exclusions() && filters.is_empty() {
            return false;
        }
        spec.tag_mutability = target;
        spec.exclusion_filters = filters;
        let before = describe_mutability(state.tag_mutability, &state.exclusion_filters);
        let after = describe_mutability(target, &spec.exclusion_filters);
        merge_or_push(mends, finding, &before, &after);
        true
    }
}

/// The spec that leaves `state` as it is.
fn spec_of(state: &RepositoryState) -> RepositorySpec {
    RepositorySpec {
        name: state.name.clone(),
        tags: state.tags.clone(),
        tag_mutability: state.tag_mutability,
        exclusion_filters: state.exclusion_filters.clone(),
        scan_on_push: state.scan_on_push,
        encryption: state.encryption.clone(),
        lifecycle_policy: state.lifecycle_policy.clone(),
        repository_policy: state.repository_policy.clone(),
    }
}

fn mend(finding: &PolicyFinding, before: &str, after: &str) -> Mend {
    Mend {
        rules: vec![finding.rule.clone()],
        field: finding.field.clone(),
        before: before.to_owned(),
        after: after.to_owned(),
    }
}

/// One mend per setting: a second finding about the same setting adds its rule.
fn merge_or_push(mends: &mut Vec<Mend>, finding: &PolicyFinding, before: &str, after: &str) {
    let field = setting_of(&finding.field);
    match mends.iter_mut().find(|m| setting_of(&m.field) == field) {
        Some(existing) => {
            if !existing.rules.contains(&finding.rule) {
                existing.rules.push(finding.rule.clone());
            }
            existing.after = after.to_owned();
        }
        None => mends.push(Mend {
            rules: vec![finding.rule.clone()],
            field: field.to_owned(),
            before: before.to_owned(),
            after: after.to_owned(),
        }),
    }
}

/// `settings.image_tag_mutability_exclusion_filters[0]` → the setting it is part of.
fn setting_of(field: &str) -> &str {
    match field {
        f if f.starts_with("settings.image_tag_mutability") => "settings.image_tag_mutability",
        f => f.split('[').next().unwrap_or(f),
    }
}

fn describe_mutability(mutability: crate::domain::TagMutability, filters: &[String]) -> String {
    match filters.is_empty() {
        true => mutability.to_string(),
        false => format!("{mutability} ({})", filters.join(", ")),
    }
}

/// The key of a `settings.tags["KEY"]` field.
fn tag_key(field: &str) -> Option<String> {
    let quoted = field.strip_prefix("settings.tags[")?.strip_suffix(']')?;
    serde_json::from_str::<String>(quoted).ok()
}

#[cfg(test)]
#[path = "remediation_tests.rs"]
mod tests;
