//! ECR's repository creation templates and pull-through cache rules, as plain records.

use std::collections::BTreeMap;

use super::{Encryption, TagMutability, same_document as same_json};

/// The repositories a creation template applies to when ECR creates them.
pub const APPLIED_FOR: [&str; 3] = ["CREATE_ON_PUSH", "PULL_THROUGH_CACHE", "REPLICATION"];

/// One repository creation template (`CreateRepositoryCreationTemplate`):
/// what ECR gives a repository it creates itself under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationTemplate {
    /// The namespace prefix it applies to (`ROOT`: every repository no other template covers).
    pub prefix: String,
    /// Its description.
    pub description: String,
    /// When ECR applies it (`CREATE_ON_PUSH`, `PULL_THROUGH_CACHE`, `REPLICATION`), sorted.
    pub applied_for: Vec<String>,
    /// Tag mutability.
    pub tag_mutability: TagMutability,
    /// Its exclusion filters.
    pub exclusion_filters: Vec<String>,
    /// Encryption.
    pub encryption: Encryption,
    /// Resource tags.
    pub tags: BTreeMap<String, String>,
    /// Lifecycle policy text.
    pub lifecycle_policy: Option<String>,
    /// Repository policy text.
    pub repository_policy: Option<String>,
}

impl CreationTemplate {
    /// The settings in which `other` differs from this one (the description aside).
    pub fn differences(&self, other: &CreationTemplate) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.applied_for != other.applied_for {
            fields.push("applied_for");
        }
        if self.tag_mutability != other.tag_mutability || self.exclusion_filters != other.exclusion_filters {
            fields.push("image_tag_mutability");
        }
        if self.encryption != other.encryption {
            fields.push("encryption");
        }
        if self.tags != other.tags {
            fields.push("tags");
        }
        if !same_json(
            self.lifecycle_policy.as_deref(),
            other.lifecycle_policy.as_deref(),
        ) {
            fields.push("lifecycle_policy");
        }
        if !same_json(
            self.repository_policy.as_deref(),
            other.repository_policy.as_deref(),
        ) {
            fields.push("repository_policy");
        }
        fields
    }
}

/// One pull-through cache rule (`DescribePullThroughCacheRules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullThroughRule {
    /// The ECR repository prefix the cached repositories are created under (`ROOT`: any).
    pub ecr_repository_prefix: String,
    /// The upstream registry's URL.
    pub upstream_registry_url: String,
    /// The upstream registry kind (`docker-hub`, `quay`, `ecr`, …), when ECR says.
    pub upstream_registry: String,
    /// The upstream repository prefix, when set.
    pub upstream_repository_prefix: String,
    /// The Secrets Manager ARN of the upstream credentials, when set (an ARN, not a secret).
    pub credential_arn: String,
}

impl PullThroughRule {
    /// The namespace its repositories are created in (the prefix's first segment).
    pub fn namespace(&self) -> &str {
        self.ecr_repository_prefix.split('/').next().unwrap_or_default()
    }
}
