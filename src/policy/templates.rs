//! The org policy as ECR repository creation templates (one per managed
//! namespace, or `ROOT` when the policy names none), the difference to the
//! templates ECR has, and the pull-through cache rules the policy forbids.

use super::org_policy::OrgPolicy;
use crate::domain::{APPLIED_FOR, CreationTemplate, PullThroughRule, Violation};

/// The prefix of the template for repositories no other template covers.
pub const ROOT: &str = "ROOT";

/// Where a template stands against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateState {
    /// ECR's template is the policy's.
    InSync,
    /// ECR has no template for the prefix.
    Missing,
    /// ECR's template differs in these settings.
    Drifted(Vec<&'static str>),
    /// ECR has a template for a prefix the policy does not manage (left alone).
    Unmanaged,
}

/// One prefix: what the policy wants there (none: unmanaged), what ECR has, and the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatePlan {
    /// The prefix.
    pub prefix: String,
    /// The template the policy wants.
    pub desired: Option<CreationTemplate>,
    /// The template ECR has.
    pub actual: Option<CreationTemplate>,
    /// How they compare.
    pub state: TemplateState,
}

impl TemplatePlan {
    /// True when syncing writes this template.
    pub fn needs_write(&self) -> bool {
        matches!(self.state, TemplateState::Missing | TemplateState::Drifted(_))
    }
}

impl OrgPolicy {
    /// The templates the policy wants: what `CreateRepository` would apply to
    /// a repository of each namespace that names no settings of its own
    /// (required tags without a default cannot be known, so only the
    /// defaults are set).
    pub fn creation_templates(&self) -> Vec<CreationTemplate> {
        let namespaces = &self.config.naming.namespaces;
        let prefixes: Vec<&str> = match namespaces.is_empty() {
            true => vec![ROOT],
            false => namespaces.iter().map(String::as_str).collect(),
        };
        let settings = &self.config.settings;
        let mutability = settings.default_tag_mutability;
        let filters: Vec<String> = match mutability.has_exclusions() {
            true => settings
                .allowed_exclusion_filters
                .iter()
                .take(settings.max_exclusion_filters)
                .cloned()
                .collect(),
            false => Vec::new(),
        };
        prefixes
            .into_iter()
            .map(|prefix| {
                let namespace = if prefix == ROOT { "" } else { prefix };
                CreationTemplate {
                    prefix: prefix.to_owned(),
                    description: format!(
                        "managed by ecr-gateway: the org policy for repositories ECR creates under `{prefix}`"
                    ),
                    applied_for: APPLIED_FOR.iter().map(|a| (*a).to_owned()).collect(),
                    tag_mutability: mutability,
                    exclusion_filters: filters.clone(),
                    encryption: self.encryption.clone(),
                    tags: self.config.tags.defaults.clone(),
                    lifecycle_policy: settings
                        .lifecycle_templates
                        .for_namespace(namespace)
                        .map(str::to_owned),
                    repository_policy: None,
                }
            })
            .collect()
    }

    /// Each prefix the policy or ECR has a template for, by prefix.
    pub fn plan_templates(&self, actual: &[CreationTemplate]) -> Vec<TemplatePlan> {
        let desired = self.creation_templates();
        let mut plans: Vec<TemplatePlan> = desired
            .into_iter()
            .map(|wanted| {
                let existing = actual.iter().find(|t| t.prefix == wanted.prefix).cloned();
                let state = match &existing {
                    None => TemplateState::Missing,
                    Some(existing) => match wanted.differences(existing) {
                        fields if fields.is_empty() => TemplateState::InSync,
                        fields => TemplateState::Drifted(fields),
                    },
                };
                TemplatePlan {
                    prefix: wanted.prefix.clone(),
                    desired: Some(wanted),
                    actual: existing,
                    state,
                }
            })
            .collect();
        for other in actual {
            if !plans.iter().any(|p| p.prefix == other.prefix) {
                plans.push(TemplatePlan {
                    prefix: other.prefix.clone(),
                    desired: None,
                    actual: Some(other.clone()),
                    state: TemplateState::Unmanaged,
                });
            }
        }
        plans.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        plans
    }

    /// The rule a pull-through cache rule breaks: repositories it creates
    /// must land in a managed namespace (when the policy names namespaces).
    pub fn judge_pull_through(&self, rule: &PullThroughRule) -> Option<Violation> {
        let namespaces = &self.config.naming.namespaces;
        let namespace = rule.namespace();
        let inside = namespaces.is_empty() || namespaces.iter().any(|n| n == namespace);
        (!inside || rule.ecr_repository_prefix == ROOT && !namespaces.is_empty()).then(|| {
            Violation::new(
                "ecr_repository_prefix",
                "pull-through.namespace",
                format!(
                    "the rule creates repositories under `{}`, outside every managed namespace ({}); \
                     give it a prefix inside one, e.g. `{}/{}`",
                    rule.ecr_repository_prefix,
                    namespaces.join(", "),
                    namespaces.first().map(String::as_str).unwrap_or("team"),
                    rule.ecr_repository_prefix
                ),
            )
        })
    }
}

#[cfg(test)]
#[path = "templates_tests.rs"]
mod tests;
