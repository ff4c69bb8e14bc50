//! What a caller asks for; what the gateway will apply, [`RepositorySpec`],
//! is a plain record of `domain`.

use std::collections::BTreeMap;

pub use crate::domain::RepositorySpec;
use crate::domain::{Encryption, TagMutability};

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
