//! The gRPC edge: one file per service. Each RPC decodes into domain types,
//! checks identity, calls, records, encodes. Proto types stay in this module.

pub mod access;
pub mod audit;
pub mod call;
pub mod cleanup;
pub mod compliance;
pub mod convert;
pub mod error;
pub mod image;
pub mod mutation;
pub mod page_token;
mod promote;
pub mod repository;
pub mod rpc;
pub mod scan;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::domain::{RepositoryName, Violation};
use crate::ecr::{Registries, Registry};
use crate::store::Store;

/// A list's optional repository filter: empty means none.
pub fn repository_filter(text: &str) -> Result<Option<RepositoryName>, Violation> {
    (!text.is_empty())
        .then(|| RepositoryName::parse(text))
        .transpose()
}

/// Longest repository-name prefix.
const MAX_PREFIX: usize = 256;

/// A repository-name prefix in `field`: at most 256 of the characters names
/// use (a prefix with any other character could never match). Empty passes:
/// where a prefix is required, the caller says so.
pub fn check_prefix(field: &str, prefix: &str) -> Option<Violation> {
    let valid = prefix.len() <= MAX_PREFIX
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
    (!valid).then(|| {
        Violation::new(
            field,
            "repository-prefix.format",
            format!(
                "{:?} is not a repository prefix: use up to {MAX_PREFIX} of a-z 0-9 . _ - / (e.g. `payments/`)",
                prefix.chars().take(64).collect::<String>()
            ),
        )
    })
}

/// Everything handlers share, built once in `server.rs`.
#[derive(Debug)]
pub struct AppState {
    /// The compiled org policy.
    pub policy: Arc<crate::policy::PolicyInForce>,
    /// Who may do what (reloaded on SIGHUP).
    pub authz: Arc<crate::auth::authz::Authorizer>,
    /// Postgres.
    pub store: Store,
    /// ECR clients by alias.
    pub registries: Registries,
    /// The audit writer for finished records.
    pub audit: AuditLog,
    /// How long a mutation owns its `request_id` before a retry may take over.
    pub mutation_lease: Duration,
    /// The inventory sync (on demand and write-through).
    pub syncer: crate::inventory::Syncer,
    /// Wakes the cleanup worker (a run was started or cancelled).
    pub cleanup_wake: Arc<tokio::sync::Notify>,
    /// Wakes the remediation worker (a run was started or cancelled).
    pub remediation_wake: Arc<tokio::sync::Notify>,
    /// The public key of the audit chain's signed digests, when one is configured.
    pub audit_key: Option<ed25519_dalek::VerifyingKey>,
    /// The key that seals page tokens and stream cursors.
    pub page_keys: page_token::PageKeys,
    /// The replica's view of the inventory's change log (WatchImages).
    pub feed: Arc<crate::inventory::ChangeFeed>,
    /// Flips when the server starts to drain: streams end, saying where to resume.
    pub draining: tokio::sync::watch::Receiver<bool>,
}

/// Shared handle to the state.
pub type Shared = Arc<AppState>;

/// A gRPC service over the shared state: each service's file implements its
/// tonic trait for it ([`rpc::unary_rpcs!`]) and names it (`RepositoryApi`, …).
#[derive(Debug, Clone)]
pub struct Api {
    state: Shared,
}

impl Api {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

/// The store's form of what `scope` lets the caller read in `registries`
/// (a registry the scope does not mention shows nothing).
pub fn visibility<'a>(
    scope: &crate::auth::authz::Scope,
    registries: impl IntoIterator<Item = &'a crate::domain::RegistryRef>,
) -> crate::store::Visibility {
    use crate::auth::authz::Access;
    crate::store::Visibility {
        registries: registries
            .into_iter()
            .map(|r| crate::store::VisibleRegistry {
                alias: r.alias.clone(),
                account_id: r.account_id.clone(),
                region: r.region.clone(),
                namespaces: match scope.access(&r.alias) {
                    Some(Access::All) => None,
                    Some(Access::Namespaces(set)) => Some(set.iter().cloned().collect()),
                    None => Some(Vec::new()),
                },
            })
            .collect(),
    }
}

impl AppState {
    /// The key that seals page tokens and stream cursors (read from Postgres
    /// on first use when none is configured).
    pub async fn page_key(&self) -> Result<Arc<page_token::PageKey>, error::ApiError> {
        Ok(self.page_keys.get(&self.store).await?)
    }

    /// Authorizes `call` on one repository, with its tags as the inventory knows them.
    pub async fn authorize_repository(
        &self,
        call: &mut call::Call,
        registry: &crate::domain::RegistryRef,
        name: &str,
    ) -> Result<(), error::ApiError> {
        let tags = self.store.repository_tags(registry, name).await?;
        call.authorize(
            &self.authz,
            &crate::auth::authz::Resource::Repository {
                registry: registry.clone(),
                name: name.to_owned(),
                tags,
            },
        )
    }

    /// Decodes a request's `registry` and `repository`, reporting both problems at once.
    pub fn locate(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<(&Registry, RepositoryName), error::ApiError> {
        match (self.registry(registry), RepositoryName::parse(repository)) {
            (Ok(registry), Ok(name)) => Ok((registry, name)),
            (registry, name) => Err(error::ApiError::InvalidArgument {
                reason: "INVALID_REQUEST",
                violations: [registry.err(), name.err()].into_iter().flatten().collect(),
            }),
        }
    }

    /// The registries a list or search covers: every one for an empty alias,
    /// else the one named (or a violation listing the aliases).
    pub fn registries_named(&self, alias: &str) -> Result<Vec<&Registry>, Violation> {
        if alias.is_empty() {
            Ok(self.registries.all().collect())
        } else {
            self.registry(alias).map(|r| vec![r])
        }
    }

    /// The registry a request names (empty: the default), or a violation listing the aliases.
    pub fn registry(&self, alias: &str) -> Result<&Registry, Violation> {
        self.registries.get(alias).ok_or_else(|| {
            Violation::new(
                "registry",
                "registry.unknown",
                format!(
                    "`{alias}` is not a configured registry; use one of: {} (or leave it empty for the default)",
                    self.registries.aliases().join(", ")
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_use_repository_name_characters() {
        for good in ["payments/", "p", "", "pay_ments.x-y/"] {
            assert!(check_prefix("prefix", good).is_none(), "{good:?}");
        }
        for bad in [
            "Payments/",
            "pay ments",
            "pay*",
            "%",
            "\\",
            "a\u{0}",
            "päy",
            &"a".repeat(257),
        ] {
            let violation = check_prefix("prefix", bad).expect(bad);
            assert_eq!(
                (violation.field.as_str(), violation.rule),
                ("prefix", "repository-prefix.format")
            );
        }
    }
}
