//! Scoped docker credentials as pure functions: the request's scope checked
//! against every rule at once ([`CredentialRequest::check`]), and the STS
//! session policy, session name and source identity that narrow the
//! credentials role to that scope ([`session_policy`], [`session_name`]).
//!
//! ECR's `GetAuthorizationToken` cannot be scoped to a resource: the token
//! carries the permissions of whoever asked for it. So the gateway asks with
//! an assumed session whose inline policy allows only the scoped repositories;
//! ECR checks that session's permissions at every pull and push, and the token
//! stops working when the session ends.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::domain::{RepositoryName, Violation};

/// What STS accepts as an inline session policy, in characters (AWS: "The
/// plaintext … can't exceed 2,048 characters"); the packed form is checked
/// by STS itself (`PackedPolicyTooLarge`).
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;
/// Most repositories and prefixes one request may name (a larger scope would
/// not fit in a session policy anyway).
pub const MAX_SCOPE_ENTRIES: usize = 50;

/// The ECR actions a docker pull needs.
pub const PULL_ACTIONS: [&str; 3] = [
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
];
/// The ECR actions a docker push adds.
pub const PUSH_ACTIONS: [&str; 4] = [
    "ecr:PutImage",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
];

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Pull images.
    Pull,
    /// Push and pull images.
    Push,
}

impl Access {
    /// The Cedar action a caller needs for this access on each scope entry.
    pub fn action(self) -> &'static str {
        match self {
            Access::Pull => "PullImages",
            Access::Push => "PushImages",
        }
    }

    /// `PULL` or `PUSH`, for the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Pull => "PULL",
            Access::Push => "PUSH",
        }
    }
}

/// A request for a credential, as the caller wrote it.
#[derive(Debug, Clone)]
pub struct CredentialRequest<'a> {
    /// `repositories`.
    pub repositories: &'a [String],
    /// `repository_prefixes`.
    pub prefixes: &'a [String],
    /// The duration asked for, if any.
    pub duration: Option<Duration>,
}

/// Limits the request is checked against.
#[derive(Debug, Clone)]
pub struct CredentialLimits<'a> {
    /// The team namespaces of `policy.naming.namespaces` (empty: any).
    pub namespaces: &'a [String],
    /// The life of a credential when none is asked for.
    pub default_duration: Duration,
    /// The longest life allowed.
    pub max_duration: Duration,
    /// The shortest life STS issues.
    pub min_duration: Duration,
}

/// A checked scope: what the session policy will allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialScope {
    /// Whole repositories.
    pub repositories: BTreeSet<RepositoryName>,
    /// Prefixes, each inside one namespace (`payments/`, `payments/batch-`).
    pub prefixes: BTreeSet<String>,
    /// How long the credential lives.
    pub duration: Duration,
}

impl CredentialRequest<'_> {
    /// The scope, or every violation at once (fields named as in the request).
    pub fn check(&self, limits: &CredentialLimits<'_>) -> Result<CredentialScope, Vec<Violation>> {
        let mut violations = Vec::new();
        if self.repositories.is_empty() && self.prefixes.is_empty() {
            violations.push(Violation::new(
                "repositories",
                "credentials.scope-empty",
                "name at least one repository (repositories) or repository prefix (repository_prefixes, e.g. `payments/`)",
            ));
        }
        if self.repositories.len() + self.prefixes.len() > MAX_SCOPE_ENTRIES {
            violations.push(Violation::new(
                "repositories",
                "credentials.scope-size",
                format!(
                    "{} repositories and prefixes given; at most {MAX_SCOPE_ENTRIES}: use a prefix such as `payments/`",
                    self.repositories.len() + self.prefixes.len()
                ),
            ));
        }
        let mut repositories = BTreeSet::new();
        for (index, raw) in self.repositories.iter().enumerate() {
            match RepositoryName::parse(raw) {
                Ok(name) => {
                    repositories.insert(name);
                }
                Err(mut violation) => {
                    violation.field = format!("repositories[{index}]");
                    violations.push(violation);
                }
            }
        }
        let mut prefixes = BTreeSet::new();
        for (index, prefix) in self.prefixes.iter().enumerate() {
            match check_prefix(prefix, limits.namespaces) {
                Ok(()) => {
                    prefixes.insert(prefix.clone());
                }
                Err((rule, description)) => {
                    violations.push(Violation::new(
                        format!("repository_prefixes[{index}]"),
                        rule,
                        description,
                    ));
                }
            }
        }
        let duration = self.duration.unwrap_or(limits.default_duration);
        if duration < limits.min_duration || duration > limits.max_duration {
            violations.push(Violation::new(
                "duration",
                "credentials.duration-range",
                format!(
                    "{} s is out of range; ask for {} to {} s (access.max_duration_seconds), or leave it unset for {} s",
                    duration.as_secs(),
                    limits.min_duration.as_secs(),
                    limits.max_duration.as_secs(),
                    limits.default_duration.as_secs()
                ),
            ));
        }
        if violations.is_empty() {
            Ok(CredentialScope {
                repositories,
                prefixes,
                duration,
            })
        } else {
            Err(violations)
        }
    }
}

/// A prefix stays inside one namespace: `ns/` or `ns/rest`, of name characters.
fn check_prefix(prefix: &str, namespaces: &[String]) -> Result<(), (&'static str, String)> {
    let valid_characters = !prefix.is_empty()
        && prefix.len() <= 256
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b));
    if !valid_characters {
        return Err((
            "repository-prefix.format",
            format!(
                "{:?} is not a repository prefix: use up to 256 of a-z 0-9 . _ - / (e.g. `payments/`)",
                prefix.chars().take(64).collect::<String>()
            ),
        ));
    }
    let Some((namespace, _)) = prefix.split_once('/') else {
        return Err((
            "credentials.prefix-namespace",
            format!(
                "`{prefix}` could match repositories of several namespaces; end the namespace with `/`, e.g. `{prefix}/`"
            ),
        ));
    };
    if namespace.is_empty() || (!namespaces.is_empty() && !namespaces.iter().any(|n| n == namespace)) {
        return Err((
            "credentials.prefix-namespace",
            format!(
                "`{namespace}` is not a team namespace; prefixes start with one of: {}",
                namespaces.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The AWS partition of `region` (`aws`, `aws-cn`, `aws-us-gov`).
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The ARNs the scope covers in registry `account`/`region`: one per
/// repository, and `repository/PREFIX*` per prefix.
pub fn resource_arns(account: &str, region: &str, scope: &CredentialScope) -> Vec<String> {
    let base = format!("arn:{}:ecr:{region}:{account}:repository/", partition(region));
    scope
        .repositories
        .iter()
        .map(|name| format!("{base}{}", name.as_str()))
        .chain(scope.prefixes.iter().map(|prefix| format!("{base}{prefix}*")))
        .collect()
}

/// The inline session policy: `ecr:GetAuthorizationToken` (which cannot be
/// scoped), and the pull (and, for push, the push) actions on exactly the
/// scope's ARNs. Minified JSON, as sent to STS.
pub fn session_policy(account: &str, region: &str, scope: &CredentialScope, access: Access) -> String {
    let mut actions: Vec<&str> = PULL_ACTIONS.to_vec();
    if access == Access::Push {
        actions.extend(PUSH_ACTIONS);
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DockerLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Sid": "Scope", "Effect": "Allow", "Action": actions, "Resource": resource_arns(account, region, scope)},
        ]
    })
    .to_string()
}

/// The session policy, or a violation saying to use a prefix when it is
/// longer than STS accepts.
pub fn fitting_session_policy(
    account: &str,
    region: &str,
    scope: &CredentialScope,
    access: Access,
) -> Result<String, Violation> {
    let policy = session_policy(account, region, scope, access);
    if policy.chars().count() > MAX_SESSION_POLICY_CHARS {
        return Err(Violation::new(
            "repositories",
            "credentials.session-policy-size",
            format!(
                "this scope makes a session policy of {} characters; STS accepts {MAX_SESSION_POLICY_CHARS}: \
                 name fewer repositories, or a prefix that covers them (e.g. `payments/`)",
                policy.chars().count()
            ),
        ));
    }
    Ok(policy)
}

/// Characters STS allows in a `RoleSessionName` and a `SourceIdentity`: `[\w+=,.@-]`.
fn sts_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// A `RoleSessionName` / `SourceIdentity` (2-64 characters of `[\w+=,.@-]`)
/// that names the caller, so that the account's own CloudTrail ties each
/// docker push and pull to the gateway's caller. Characters STS refuses
/// become `-`; a long principal keeps its start and gets a hash of the whole.
pub fn session_name(principal: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let safe: String = principal
        .chars()
        .map(|c| if sts_safe(c) { c } else { '-' })
        .collect();
    let safe = if safe.len() < 2 {
        format!("caller-{safe}")
    } else {
        safe
    };
    if safe.len() <= 64 && safe == principal {
        return safe;
    }
    // Altered or long: keep it unique to the principal with a hash suffix.
    let hash = hex::encode(&Sha256::digest(principal.as_bytes())[..4]);
    let keep: String = safe.chars().take(64 - 1 - hash.len()).collect();
    format!("{keep}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CredentialLimits<'static> {
        static NAMESPACES: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["payments".to_owned(), "search".to_owned()]);
        CredentialLimits {
            namespaces: &NAMESPACES,
            default_duration: Duration::from_secs(3600),
            max_duration: Duration::from_secs(3600),
            min_duration: Duration::from_secs(900),
        }
    }

    fn scope(repositories: &[&str], prefixes: &[&str]) -> CredentialScope {
        let repositories: Vec<String> = repositories.iter().map(|s| s.to_string()).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        CredentialRequest {
            repositories: &repositories,
            prefixes: &prefixes,
            duration: None,
        }
        .check(&limits())
        .expect("valid scope")
    }

    fn rules(repositories: &[&str], prefixes: &[&str], duration: Option<u64>) -> Vec<(String, &'static str)> {
        let repositories: Vec<String> = repositories.iter().map(|s| s.to_string()).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        CredentialRequest {
            repositories: &repositories,
            prefixes: &prefixes,
            duration: duration.map(Duration::from_secs),
        }
        .check(&limits())
        .expect_err("invalid")
        .into_iter()
        .map(|v| (v.field, v.rule))
        .collect()
    }

    #[test]
    fn a_pull_policy_allows_login_and_the_pull_actions_on_exactly_the_scope() {
        let policy = session_policy(
            "123456789012",
            "us-east-1",
            &scope(&["payments/api"], &["payments/batch-"]),
            Access::Pull,
        );
        assert_eq!(
            policy,
            r#"{"Version":"2012-10-17","Statement":[{"Sid":"DockerLogin","Effect":"Allow","Action":"ecr:GetAuthorizationToken","Resource":"*"},{"Sid":"Scope","Effect":"Allow","Action":["ecr:BatchGetImage","ecr:GetDownloadUrlForLayer","ecr:BatchCheckLayerAvailability"],"Resource":["arn:aws:ecr:us-east-1:123456789012:repository/payments/api","arn:aws:ecr:us-east-1:123456789012:repository/payments/batch-*"]}]}"#
        );
    }

    #[test]
    fn a_push_policy_adds_the_push_actions_and_nothing_else() {
        let policy: serde_json::Value = serde_json::from_str(&session_policy(
            "123456789012",
            "us-east-1",
            &scope(&[], &["payments/"]),
            Access::Push,
        ))
        .expect("json");
        let actions: Vec<&str> = policy["Statement"][1]["Action"]
            .as_array()
            .expect("actions")
            .iter()
            .map(|a| a.as_str().expect("str"))
            .collect();
        assert_eq!(actions.len(), 7);
        for action in PULL_ACTIONS.iter().chain(&PUSH_ACTIONS) {
            assert!(actions.contains(action), "{action}");
        }
        assert_eq!(
            policy["Statement"][1]["Resource"],
            json!(["arn:aws:ecr:us-east-1:123456789012:repository/payments/*"])
        );
    }

    #[test]
    fn arns_follow_the_partition_of_the_region() {
        let arns = resource_arns("123456789012", "cn-north-1", &scope(&["payments/api"], &[]));
        assert_eq!(
            arns,
            ["arn:aws-cn:ecr:cn-north-1:123456789012:repository/payments/api"]
        );
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("eu-west-1"), "aws");
    }

    #[test]
    fn every_violation_is_reported_at_once_naming_its_field() {
        assert_eq!(
            rules(
                &["Payments/API", "payments/api"],
                &["pay", "other/", "payments/*"],
                Some(60)
            ),
            [
                ("repositories[0]".to_owned(), "ecr.repository-name.grammar"),
                (
                    "repository_prefixes[0]".to_owned(),
                    "credentials.prefix-namespace"
                ),
                (
                    "repository_prefixes[1]".to_owned(),
                    "credentials.prefix-namespace"
                ),
                ("repository_prefixes[2]".to_owned(), "repository-prefix.format"),
                ("duration".to_owned(), "credentials.duration-range"),
            ]
        );
    }

    #[test]
    fn an_empty_scope_and_a_long_duration_are_refused() {
        assert_eq!(
            rules(&[], &[], Some(7200)),
            [
                ("repositories".to_owned(), "credentials.scope-empty"),
                ("duration".to_owned(), "credentials.duration-range"),
            ]
        );
        assert_eq!(
            rules(&[], &[""], None),
            [("repository_prefixes[0]".to_owned(), "repository-prefix.format")]
        );
    }

    #[test]
    fn durations_default_and_stay_within_the_limits() {
        assert_eq!(scope(&["payments/api"], &[]).duration, Duration::from_secs(3600));
        for ok in [900, 1800, 3600] {
            let repositories = vec!["payments/api".to_owned()];
            let checked = CredentialRequest {
                repositories: &repositories,
                prefixes: &[],
                duration: Some(Duration::from_secs(ok)),
            }
            .check(&limits())
            .expect("in range");
            assert_eq!(checked.duration.as_secs(), ok);
        }
        assert_eq!(rules(&["payments/api"], &[], Some(899)).len(), 1);
        assert_eq!(rules(&["payments/api"], &[], Some(3601)).len(), 1);
    }

    #[test]
    fn a_scope_too_large_for_sts_says_to_use_a_prefix() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("payments/service-number-{i:03}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let violation =
            fitting_session_policy("123456789012", "us-east-1", &scope(&names, &[]), Access::Push)
                .expect_err("too big");
        assert_eq!(violation.rule, "credentials.session-policy-size");
        assert!(violation.description.contains("prefix"));
        assert!(
            fitting_session_policy(
                "123456789012",
                "us-east-1",
                &scope(&names[..5], &[]),
                Access::Push
            )
            .is_ok()
        );
    }

    #[test]
    fn too_many_scope_entries_are_refused() {
        let names: Vec<String> = (0..51).map(|i| format!("payments/s{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            rules(&names, &[], None),
            [("repositories".to_owned(), "credentials.scope-size")]
        );
    }

    #[test]
    fn session_names_are_what_sts_accepts_and_name_the_caller() {
        assert_eq!(session_name("alice@example.com"), "alice@example.com");
        assert_eq!(session_name("deploy-bot"), "deploy-bot");
        let odd = session_name("spiffe://corp/ns/prod/sa/deployer");
        assert!(odd.starts_with("spiffe---corp-ns-prod-sa-deployer-"), "{odd}");
        let long = session_name(&"x".repeat(100));
        assert_eq!(long.len(), 64);
        assert_ne!(session_name(&"x".repeat(100)), session_name(&"x".repeat(101)));
        let short = session_name("a");
        assert!(short.len() >= 2);
        for name in [odd, long, short, session_name("ünïcode user")] {
            assert!(
                (2..=64).contains(&name.len()) && name.chars().all(sts_safe),
                "{name}"
            );
        }
    }
}
