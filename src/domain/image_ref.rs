//! Image references as deploy systems write them: `name:tag`,
//! `name@sha256:…`, `name:tag@sha256:…` (the digest wins), or a full ECR URI
//! `ACCOUNT.dkr.ecr.REGION.amazonaws.com/name:tag`. A bare name is refused:
//! deploys must say which image, never an implicit `latest`.

use std::fmt;

use super::{AccountId, Digest, ImageTag, RepositoryName, Violation};

/// Longest reference accepted.
const MAX_REFERENCE: usize = 1024;
/// The field every violation names.
const FIELD: &str = "reference";

/// An ECR registry host: `ACCOUNT.dkr.ecr.REGION.amazonaws.com` (or `.amazonaws.com.cn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrHost {
    /// The registry's account.
    pub account_id: AccountId,
    /// The registry's region.
    pub region: String,
}

/// Which image of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSelector {
    /// By tag.
    Tag(ImageTag),
    /// By manifest digest.
    Digest(Digest),
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Set when the reference was a full ECR URI.
    pub registry: Option<EcrHost>,
    /// The repository.
    pub repository: RepositoryName,
    /// The image.
    pub selector: ImageSelector,
    /// The tag written next to a digest (`name:tag@sha256:…`); informational, the digest wins.
    pub tag_hint: Option<ImageTag>,
}

impl ImageRef {
    /// Parses a reference, reporting every problem at once.
    pub fn parse(text: &str) -> Result<ImageRef, Vec<Violation>> {
        if text.is_empty() {
            return Err(vec![violation(
                "reference.empty",
                "give `name:tag`, `name@sha256:…` or a full ECR URI",
            )]);
        }
        if text.len() > MAX_REFERENCE {
            return Err(vec![violation(
                "reference.too-long",
                format!(
                    "{} characters is more than the {MAX_REFERENCE} a reference may have",
                    text.len()
                ),
            )]);
        }
        let mut violations = Vec::new();
        let (host, path) = split_host(text, &mut violations);
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => (path, Some(digest)),
            None => (path, None),
        };
        let (name, tag) = split_tag(path);
        let repository = RepositoryName::parse(name)
            .map_err(|v| violations.push(refield(v)))
            .ok();
        let tag = tag.and_then(|t| ImageTag::parse(t).map_err(|v| violations.push(refield(v))).ok());
        let digest = digest.and_then(|d| Digest::parse(d).map_err(|v| violations.push(refield(v))).ok());
        let selector = match (&digest, &tag) {
            (Some(digest), _) => Some(ImageSelector::Digest(digest.clone())),
            (None, Some(tag)) => Some(ImageSelector::Tag(tag.clone())),
            (None, None) => {
                if violations.is_empty() {
                    violations.push(violation(
                        "reference.missing-tag-or-digest",
                        format!("`{text}` names no image: add `:tag` or `@sha256:…`"),
                    ));
                }
                None
            }
        };
        match (repository, selector) {
            (Some(repository), Some(selector)) if violations.is_empty() => Ok(ImageRef {
                registry: host,
                repository,
                tag_hint: if digest.is_some() { tag } else { None },
                selector,
            }),
            _ => Err(violations),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.registry {
            write!(
                f,
                "{}.dkr.ecr.{}.amazonaws.com/",
                host.account_id.as_str(),
                host.region
            )?;
        }
        write!(f, "{}", self.repository)?;
        match &self.selector {
            ImageSelector::Tag(tag) => write!(f, ":{}", tag.as_str()),
            ImageSelector::Digest(digest) => {
                if let Some(tag) = &self.tag_hint {
                    write!(f, ":{}", tag.as_str())?;
                }
                write!(f, "@{}", digest.as_str())
            }
        }
    }
}

/// `ACCOUNT.dkr.ecr.REGION.amazonaws.com/name@sha256:…`
pub fn pinned_uri(account_id: &str, region: &str, repository: &RepositoryName, digest: &Digest) -> String {
    format!(
        "{account_id}.dkr.ecr.{region}.amazonaws.com/{repository}@{}",
        digest.as_str()
    )
}

/// Splits off a registry host: the first segment when it has a `.` or `:` (as
/// Docker decides), which must then be an ECR host.
fn split_host<'a>(text: &'a str, violations: &mut Vec<Violation>) -> (Option<EcrHost>, &'a str) {
    let Some((first, rest)) = text.split_once('/') else {
        return (None, text);
    };
    if !first.contains('.') && !first.contains(':') && first != "localhost" {
        return (None, text);
    }
    match parse_ecr_host(first) {
        Some(host) => (Some(host), rest),
        None => {
            violations.push(violation(
                "reference.host",
                format!(
                    "`{first}` is not an ECR registry; only ECR references are accepted: \
                     ACCOUNT.dkr.ecr.REGION.amazonaws.com/name:tag, or name:tag for the default registry"
                ),
            ));
            (None, rest)
        }
    }
}

fn parse_ecr_host(host: &str) -> Option<EcrHost> {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, region) = rest.split_once(".dkr.ecr.")?;
    let account_id = AccountId::parse(account).ok()?;
    let valid_region = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid_region.then(|| EcrHost {
        account_id,
        region: region.to_owned(),
    })
}

/// The tag follows the last `:` after the last `/`.
fn split_tag(path: &str) -> (&str, Option<&str>) {
    let last_segment = path.rfind('/').map_or(0, |i| i + 1);
    match path[last_segment..].rfind(':') {
        Some(i) => (&path[..last_segment + i], Some(&path[last_segment + i + 1..])),
        None => (path, None),
    }
}

fn violation(rule: &'static str, description: impl Into<String>) -> Violation {
    Violation::new(FIELD, rule, description)
}

fn refield(mut violation: Violation) -> Violation {
    violation.field = FIELD.to_owned();
    violation
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn rules(text: &str) -> Vec<&'static str> {
        ImageRef::parse(text)
            .expect_err(text)
            .into_iter()
            .map(|v| v.rule)
            .collect()
    }

    #[test]
    fn name_and_tag_parse() {
        let parsed = ImageRef::parse("payments/api:v1.2.3").expect("valid");
        assert_eq!(parsed.repository.as_str(), "payments/api");
        assert_eq!(
            parsed.selector,
            ImageSelector::Tag(ImageTag::parse("v1.2.3").expect("tag"))
        );
        assert_eq!(parsed.registry, None);
    }

    #[test]
    fn a_digest_wins_over_a_tag_written_next_to_it() {
        let parsed = ImageRef::parse(&format!("payments/api:v1@{DIGEST}")).expect("valid");
        assert!(matches!(parsed.selector, ImageSelector::Digest(_)));
        assert_eq!(parsed.tag_hint.map(|t| t.to_string()), Some("v1".to_owned()));
    }

    #[test]
    fn a_full_ecr_uri_names_its_registry() {
        let parsed =
            ImageRef::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/payments/api:v1").expect("valid");
        let host = parsed.registry.expect("host");
        assert_eq!(
            (host.account_id.as_str(), host.region.as_str()),
            ("123456789012", "eu-west-1")
        );
    }

    #[test]
    fn a_bare_name_must_say_which_image() {
        assert_eq!(rules("payments/api"), vec!["reference.missing-tag-or-digest"]);
    }

    #[test]
    fn other_registries_are_refused() {
        assert!(rules("docker.io/library/nginx:1.27").contains(&"reference.host"));
        assert!(rules("localhost:5000/payments/api:v1").contains(&"reference.host"));
    }

    #[test]
    fn a_bad_name_and_a_bad_tag_are_both_reported() {
        let found = rules("Payments/API:bad tag");
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn empty_and_oversized_references_are_refused() {
        assert_eq!(rules(""), vec!["reference.empty"]);
        assert_eq!(
            rules(&format!("payments/{}:v1", "a".repeat(1100))),
            vec!["reference.too-long"]
        );
    }

    #[test]
    fn a_short_digest_is_refused_as_a_digest_problem() {
        let errors = ImageRef::parse("payments/api@sha256:abc").expect_err("short");
        assert!(errors.iter().all(|v| v.field == "reference"));
        assert!(
            errors.iter().any(|v| v.rule.starts_with("oci.digest")),
            "{errors:?}"
        );
    }

    #[test]
    fn pinned_uris_use_the_registry_host() {
        let name = RepositoryName::parse("payments/api").expect("name");
        let digest = Digest::parse(DIGEST).expect("digest");
        assert_eq!(
            pinned_uri("123456789012", "us-east-1", &name, &digest),
            format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/payments/api@{DIGEST}")
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,300}") {
            let _ = ImageRef::parse(&text);
        }

        #[test]
        fn valid_references_display_back_and_reparse_equal(
            name in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
            with_host in any::<bool>(),
        ) {
            let host = if with_host { "123456789012.dkr.ecr.us-east-1.amazonaws.com/" } else { "" };
            let text = format!("{host}{name}:{tag}");
            prop_assume!(RepositoryName::parse(&name).is_ok());
            let parsed = ImageRef::parse(&text).expect("valid");
            prop_assert_eq!(parsed.to_string(), text.clone());
            prop_assert_eq!(ImageRef::parse(&parsed.to_string()).expect("reparse"), parsed);
        }
    }
}
