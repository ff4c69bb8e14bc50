//! The organisation's rules for repositories, as pure functions over a compiled policy.
//!
//! [`OrgPolicyConfig`] is the `[policy]` section as written in TOML;
//! [`OrgPolicy::compile`] checks it (every problem names its config key, e.g.
//! `policy.naming.pattern: …`) and [`OrgPolicy::plan_repository`] checks a
//! [`RepositoryRequest`] against every rule at once, returning the
//! [`RepositorySpec`] to apply or every [`Violation`].
//!
//! # Rule ids
//!
//! Each violation carries a stable rule id, `<area>.<rule>` in lowercase with
//! dashes inside words, e.g. `naming.max-depth`. The area says whose rule it is:
//! `ecr.*`, `oci.*` and `aws.*` are limits of AWS or the OCI spec that no
//! configuration can lift; `naming.*`, `tags.*`, `settings.*`,
//! `lifecycle-policy.*`, `repository-policy.*`, `deploy.*`, `exception.*` and
//! `scanning.*` are the organisation's (or
//! AWS limits checked alongside them). Callers may match on rule ids (the gRPC
//! layer turns them into `FieldViolation.reason`, `naming.max-depth` →
//! `NAMING_MAX_DEPTH`), so an id never changes meaning; a new rule gets a new id.
//! Field paths name the gRPC request field, e.g. `settings.tags["team"]`.

pub mod compliance;
pub mod credentials;
mod encryption;
pub mod gate;
mod lifecycle;
pub mod lifecycle_eval;
pub mod lifecycle_model;
mod naming;
mod org_policy;
pub mod promotion;
pub mod protection;
pub mod remediation;
mod repository_policy;
mod request;
mod settings;
mod tags;
pub mod templates;

pub use crate::config::{
    AllowedValues, DEFAULT_NAMING_PATTERN, EncryptionConfig, EncryptionType, LifecycleTemplates,
    NamingConfig, OrgPolicyConfig, RepositoryPolicyConfig, SettingsConfig, TagConfig,
};
pub use org_policy::{OrgPolicy, PolicyInForce};
pub use request::{RepositoryRequest, RepositorySpec};
pub use tags::{settable_tag_violations, tag_filter_violations};

use regex::Regex;

/// `pattern` compiled to match whole strings, or a problem naming `key`.
fn anchored_regex(key: &str, pattern: &str) -> Result<Regex, String> {
    let problem = |e: regex::Error| format!("{key}: {e}");
    Regex::new(pattern).map_err(problem)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(problem)
}

#[cfg(test)]
mod config_tests;
