//! `[access]`: the scoped docker credentials of `RegistryAccessService`.

use serde::{Deserialize, Serialize};

/// Shortest credential STS issues (AssumeRole's `DurationSeconds` minimum).
pub const MIN_CREDENTIAL_SECONDS: u64 = 900;
/// Longest credential any role allows (a role's `MaxSessionDuration` maximum).
pub const MAX_CREDENTIAL_SECONDS: u64 = 12 * 3600;

/// `[access]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Serve `GetRegistryCredentials`. Every registry then needs a
    /// `credentials_role_arn`; the gateway refuses to start without one.
    pub enabled: bool,
    /// A credential's life when the request gives none, in seconds.
    pub default_duration_seconds: u64,
    /// The longest life a caller may ask for: at most the credentials role's
    /// `MaxSessionDuration` (1 h when the gateway itself runs on an assumed
    /// role: AWS caps chained sessions at 1 h), and at most 12 h.
    pub max_duration_seconds: u64,
    /// Credentials each caller may be issued per minute (cached answers
    /// included); beyond it RESOURCE_EXHAUSTED with `RetryInfo`.
    pub per_caller_per_minute: u32,
    /// Answer an identical request of the same caller from memory while the
    /// credential it got has more than half of its life left (0 turns it off;
    /// otherwise the most entries kept).
    pub cache_entries: usize,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            default_duration_seconds: 3600,
            max_duration_seconds: 3600,
            per_caller_per_minute: 30,
            cache_entries: 10_000,
        }
    }
}

/// What is wrong with `[access]`, one line per problem, naming the key.
pub(crate) fn problems(access: &AccessConfig, roles: &[(String, Option<String>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let range = MIN_CREDENTIAL_SECONDS..=MAX_CREDENTIAL_SECONDS;
    if !range.contains(&access.max_duration_seconds) {
        problems.push(format!(
            "access.max_duration_seconds: {} is out of range; STS issues {MIN_CREDENTIAL_SECONDS} to {MAX_CREDENTIAL_SECONDS} seconds",
            access.max_duration_seconds
        ));
    }
    if !(MIN_CREDENTIAL_SECONDS..=access.max_duration_seconds).contains(&access.default_duration_seconds) {
        problems.push(format!(
            "access.default_duration_seconds: {} must be from {MIN_CREDENTIAL_SECONDS} to access.max_duration_seconds ({})",
            access.default_duration_seconds, access.max_duration_seconds
        ));
    }
    if access.per_caller_per_minute == 0 {
        problems.push("access.per_caller_per_minute: must be at least 1".into());
    }
    for (index, (alias, role)) in roles.iter().enumerate() {
        match role {
            None if access.enabled => problems.push(format!(
                "registries[{index}].credentials_role_arn: registry `{alias}` has none, but access.enabled is true; \
                 set the role GetRegistryCredentials assumes (docs/security.md, \"Registry credentials\"), or turn access off"
            )),
            Some(arn) if !is_role_arn(arn) => problems.push(format!(
                "registries[{index}].credentials_role_arn: `{arn}` is not an IAM role ARN like arn:aws:iam::123456789012:role/ecr-gateway-credentials"
            )),
            _ => {}
        }
    }
    problems
}

/// `arn:PARTITION:iam::ACCOUNT:role/NAME`.
fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(
        parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(arn: &str) -> Vec<(String, Option<String>)> {
        vec![("main".into(), Some(arn.into()))]
    }

    #[test]
    fn the_defaults_are_valid_and_off() {
        let access = AccessConfig::default();
        assert!(!access.enabled);
        assert!(problems(&access, &[("main".into(), None)]).is_empty());
    }

    #[test]
    fn enabled_without_a_role_names_the_registry_key() {
        let access = AccessConfig {
            enabled: true,
            ..AccessConfig::default()
        };
        let found = problems(&access, &[("main".into(), None)]);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("registries[0].credentials_role_arn: registry `main` has none"));
    }

    #[test]
    fn a_role_arn_must_be_an_iam_role() {
        let access = AccessConfig::default();
        assert!(problems(&access, &role("arn:aws:iam::123456789012:role/creds")).is_empty());
        assert!(problems(&access, &role("arn:aws-cn:iam::123456789012:role/path/creds")).is_empty());
        for bad in [
            "creds",
            "arn:aws:iam::1234:role/creds",
            "arn:aws:iam::123456789012:user/creds",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:sts::123456789012:role/creds",
        ] {
            assert_eq!(problems(&access, &role(bad)).len(), 1, "{bad}");
        }
    }

    #[test]
    fn durations_are_bounded_by_sts() {
        let access = AccessConfig {
            default_duration_seconds: 600,
            max_duration_seconds: 13 * 3600,
            per_caller_per_minute: 0,
            ..AccessConfig::default()
        };
        let found = problems(&access, &[]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("access.max_duration_seconds"));
        assert!(found[1].starts_with("access.default_duration_seconds"));
        assert!(found[2].starts_with("access.per_caller_per_minute"));
    }
}
