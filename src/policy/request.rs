//! What a caller asks for, and what the gateway will apply.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::{Encryption, RepositoryName, TagMutability};

/// What a caller asked for (already decoded from protobuf; nothing validated yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryRequest {
    /// The repository name, as sent.
    pub name: String,
    /// Resource tags, without the gateway's defaults.
    pub tags: BTreeMap<String, String>,
    /// Tag mutability; `None` takes the configured default.
    pub tag_mutability: Option<TagMutability>,
    /// Exclusion filters for a `*_WITH_EXCLUSION` mutability.
    pub exclusion_filters: Vec<String>,
    /// Scan on push; `None` means "as the policy requires".
    pub scan_on_push: Option<bool>,
    /// Encryption; `None` takes the configured one.
    pub encryption: Option<Encryption>,
    /// Lifecycle policy JSON; `None` or blank takes the template.
    pub lifecycle_policy: Option<String>,
    /// Repository policy JSON; `None` or blank means no policy.
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
