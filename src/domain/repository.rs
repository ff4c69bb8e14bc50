//! Plain records describing repositories as ECR holds them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Encryption, RepositoryName, TagMutability};

/// A registry: one AWS account in one region, known to callers by an alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RegistryRef {
    /// The alias callers use.
    pub alias: String,
    /// The owning AWS account id.
    pub account_id: String,
    /// The AWS region.
    pub region: String,
}

impl RegistryRef {
    /// The repository ARN for `name` in this registry.
    pub fn repository_arn(&self, name: &RepositoryName) -> String {
        format!(
            "arn:aws:ecr:{}:{}:repository/{}",
            self.region, self.account_id, name
        )
    }

    /// The registry host, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
    pub fn host(&self) -> String {
        format!("{}.dkr.ecr.{}.amazonaws.com", self.account_id, self.region)
    }

    /// The repository URI for `name` in this registry.
    pub fn repository_uri(&self, name: &RepositoryName) -> String {
        format!("{}/{}", self.host(), name)
    }
}

/// Everything the gateway manages about one repository, as read from ECR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositoryState {
    /// Repository name.
    pub name: RepositoryName,
    /// Repository ARN.
    pub arn: String,
    /// Repository URI.
    pub uri: String,
    /// When ECR created it.
    pub created_at: Option<DateTime<Utc>>,
    /// Tag mutability.
    pub tag_mutability: TagMutability,
    /// Exclusion filters of the mutability setting.
    pub exclusion_filters: Vec<String>,
    /// Scan on push.
    pub scan_on_push: bool,
    /// Encryption at rest.
    pub encryption: Encryption,
    /// Resource tags.
    pub tags: BTreeMap<String, String>,
    /// Lifecycle policy JSON, if any.
    pub lifecycle_policy: Option<String>,
    /// Repository policy JSON, if any.
    pub repository_policy: Option<String>,
}

/// What the gateway will apply (every rule already checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositorySpec {
    /// The repository name.
    pub name: RepositoryName,
    /// Resource tags, defaults included.
    pub tags: BTreeMap<String, String>,
    /// Tag mutability.
    pub tag_mutability: TagMutability,
    /// Exclusion filters (empty unless the mutability has exclusions).
    pub exclusion_filters: Vec<String>,
    /// Scan on push.
    pub scan_on_push: bool,
    /// Encryption at rest.
    pub encryption: Encryption,
    /// Lifecycle policy JSON, if any (the request's or a template).
    pub lifecycle_policy: Option<String>,
    /// Repository policy JSON, if any.
    pub repository_policy: Option<String>,
}
