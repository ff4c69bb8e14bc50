//! The compiled org policy and the planner that checks a request against every rule.

use super::naming::NamingRules;
use super::repository_policy::RepositoryPolicyRules;
use super::request::{RepositoryRequest, RepositorySpec};
use super::tags::TagRules;
use super::{encryption, lifecycle, settings};
use crate::config::OrgPolicyConfig;
use crate::domain::{AccountId, Encryption, Violation};

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct OrgPolicy {
    pub(super) config: OrgPolicyConfig,
    pub(super) naming: NamingRules,
    pub(super) tags: TagRules,
    pub(super) encryption: Encryption,
    pub(super) repository_policy: RepositoryPolicyRules,
}

impl OrgPolicy {
    /// Compiles the configuration; each problem names the config key, e.g. "policy.naming.pattern: regex parse error ...".
    pub fn compile(config: &OrgPolicyConfig) -> Result<OrgPolicy, Vec<String>> {
        let mut problems = Vec::new();
        let naming = keep(NamingRules::compile(&config.naming), &mut problems);
        let tags = keep(TagRules::compile(&config.tags), &mut problems);
        problems.extend(settings::config_problems(&config.settings));
        let encryption = keep(encryption::compile(&config.settings.encryption), &mut problems);
        problems.extend(lifecycle::config_problems(
            &config.settings.lifecycle_templates,
            &config.naming,
        ));
        let repository_policy = keep(
            RepositoryPolicyRules::compile(&config.repository_policy),
            &mut problems,
        );
        problems.extend(super::gate::config_problems(&config.deploy));
        problems.extend(super::protection::config_problems(&config.cleanup));
        match (naming, tags, encryption, repository_policy) {
            (Some(naming), Some(tags), Some(encryption), Some(repository_policy)) if problems.is_empty() => {
                Ok(OrgPolicy {
                    config: config.clone(),
                    naming,
                    tags,
                    encryption,
                    repository_policy,
                })
            }
            _ => Err(problems),
        }
    }

    /// The configuration this policy was compiled from.
    pub fn config(&self) -> &OrgPolicyConfig {
        &self.config
    }

    /// Checks a whole repository request against every rule, reporting EVERY violation at once; on success returns the spec to apply, with defaults filled in.
    pub fn plan_repository(
        &self,
        request: &RepositoryRequest,
        registry_account: &AccountId,
    ) -> Result<RepositorySpec, Vec<Violation>> {
        let settings = &self.config.settings;
        let mut violations = Vec::new();
        let name = keep(self.naming.check(&request.name), &mut violations);
        let tags = keep(self.tags.check(&request.tags), &mut violations);
        let tag_mutability = settings::effective_mutability(settings, request.tag_mutability);
        violations.extend(settings::mutability_violation(settings, tag_mutability));
        violations.extend(settings::exclusion_filter_violations(
            settings,
            tag_mutability,
            &request.exclusion_filters,
        ));
        let scan_on_push = keep_one(
            settings::scan_on_push(settings, request.scan_on_push),
            &mut violations,
        );
        let encryption = keep_one(
            encryption::plan(&self.encryption, request.encryption.as_ref()),
            &mut violations,
        );
        let namespace = request.name.split('/').next().unwrap_or_default();
        let templates = &settings.lifecycle_templates;
        let lifecycle_policy = keep(
            lifecycle::plan(templates, namespace, request.lifecycle_policy.as_deref()),
            &mut violations,
        );
        let repository_policy = keep(
            self.repository_policy
                .plan(request.repository_policy.as_deref(), registry_account),
            &mut violations,
        );
        match (
            name,
            tags,
            scan_on_push,
            encryption,
            lifecycle_policy,
            repository_policy,
        ) {
            (
                Some(name),
                Some(tags),
                Some(scan_on_push),
                Some(encryption),
                Some(lifecycle_policy),
                Some(repository_policy),
            ) if violations.is_empty() => Ok(RepositorySpec {
                name,
                tags,
                tag_mutability,
                exclusion_filters: request.exclusion_filters.clone(),
                scan_on_push,
                encryption,
                lifecycle_policy,
                repository_policy,
            }),
            _ => Err(violations),
        }
    }
}

/// The org policy in force: swapped whole when SIGHUP reloads the
/// configuration, so every reader sees one compiled policy or the next.
#[derive(Debug)]
pub struct PolicyInForce(arc_swap::ArcSwap<OrgPolicy>);

impl PolicyInForce {
    /// Starts with `policy`.
    pub fn new(policy: OrgPolicy) -> PolicyInForce {
        PolicyInForce(arc_swap::ArcSwap::from_pointee(policy))
    }

    /// The policy now.
    pub fn current(&self) -> std::sync::Arc<OrgPolicy> {
        self.0.load_full()
    }

    /// Puts `policy` in force.
    pub fn replace(&self, policy: OrgPolicy) {
        self.0.store(std::sync::Arc::new(policy));
    }
}

/// The value of `result`, moving its problems into `sink`.
fn keep<T, P>(result: Result<T, Vec<P>>, sink: &mut Vec<P>) -> Option<T> {
    result.map_err(|problems| sink.extend(problems)).ok()
}

/// The value of `result`, moving its one problem into `sink`.
fn keep_one<T, P>(result: Result<T, P>, sink: &mut Vec<P>) -> Option<T> {
    result.map_err(|problem| sink.push(problem)).ok()
}

#[cfg(test)]
#[path = "org_policy_tests.rs"]
mod tests;
