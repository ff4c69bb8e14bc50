//! Image references as deploy systems write them (`ResolveImage`, `CheckDeployment`).
//!
//! Accepted forms, every one naming its image explicitly:
//!
//! - `name:tag`
//! - `name@sha256:<64 hex>`
//! - `name:tag@sha256:<64 hex>`: the digest selects the image, the tag is kept as
//!   [`ImageRef::tag_hint`]
//! - any of the above behind an ECR registry host: `ACCOUNT.dkr.ecr.REGION.amazonaws.com/…`,
//!   `ACCOUNT.dkr.ecr.cn-REGION.amazonaws.com.cn/…` (China regions) or the dual-stack
//!   `ACCOUNT.dkr-ecr.REGION.on.aws/…`.
//!
//! A bare `name` is refused rather than read as `name:latest`: a deploy must say which
//! image. As in Docker, a first path segment holding a `.` or `:` (or `localhost`) is a
//! registry host, so `docker.io/library/nginx:1.27` is refused as not ECR. The tag follows
//! the last `:` after the last `/`, so a port in a host is never mistaken for a tag.
//!
//! The canonical form ([`fmt::Display`]) writes the standard IPv4 host for any accepted
//! host: a dual-stack reference displays as the same registry's `dkr.ecr` host.

use std::fmt;

use super::{AccountId, Digest, ImageTag, RepositoryName, Violation};

/// Field named by every violation of [`ImageRef::parse`].
const FIELD: &str = "reference";
/// Most characters in a reference.
const MAX_LENGTH: usize = 1024;
/// Rule id of an empty reference.
const EMPTY_RULE: &str = "reference.empty";
/// Rule id of a reference over [`MAX_LENGTH`] characters.
const TOO_LONG_RULE: &str = "reference.too-long";
/// Rule id of a registry host that is not an ECR registry.
const HOST_RULE: &str = "reference.host";
/// Rule id of a reference with neither tag nor digest.
const MISSING_SELECTOR_RULE: &str = "reference.missing-tag-or-digest";
/// How a reference looks, for descriptions.
const FORMS: &str = "write `name:tag`, `name@sha256:…` or \
    `ACCOUNT.dkr.ecr.REGION.amazonaws.com/name:tag`";

/// An ECR private registry host: the account that owns it and its region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrHost {
    /// The registry's account, which is also its registry id.
    pub account_id: AccountId,
    /// The registry's region, e.g. `eu-west-1`.
    pub region: String,
}

impl EcrHost {
    /// The registry's standard host name, `ACCOUNT.dkr.ecr.REGION.amazonaws.com` (`.com.cn` in China).
    pub fn hostname(&self) -> String {
        registry_hostname(self.account_id.as_str(), &self.region)
    }
}

impl fmt::Display for EcrHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hostname())
    }
}

/// Where an image reference points: by tag or by digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSelector {
    /// By tag; the image it names can change unless the repository's tags are immutable.
    Tag(ImageTag),
    /// By manifest digest; always the same image.
    Digest(Digest),
}

impl ImageSelector {
    /// The tag or the digest as written, without the `:` or `@` that introduces it.
    pub fn as_str(&self) -> &str {
        match self {
            ImageSelector::Tag(tag) => tag.as_str(),
            ImageSelector::Digest(digest) => digest.as_str(),
        }
    }
}

/// A parsed image reference; see the module documentation for the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Set when the reference was a full ECR URI: the registry host's account and region.
    pub registry: Option<EcrHost>,
    /// The repository, e.g. `payments/api`.
    pub repository: RepositoryName,
    /// The image: the digest when one was given, else the tag.
    pub selector: ImageSelector,
    /// The tag written next to a digest (`name:tag@sha256:…`): informational only, the digest
    /// selects the image and the tag is not checked against it. `None` in every other form.
    pub tag_hint: Option<ImageTag>,
}

impl ImageRef {
    /// Rule id of an empty reference.
    pub const EMPTY_RULE: &'static str = EMPTY_RULE;
    /// Rule id of a reference over 1024 characters.
    pub const TOO_LONG_RULE: &'static str = TOO_LONG_RULE;
    /// Rule id of a registry host that is not an ECR private registry.
    pub const HOST_RULE: &'static str = HOST_RULE;
    /// Rule id of a reference with neither `:tag` nor `@sha256:…`.
    pub const MISSING_SELECTOR_RULE: &'static str = MISSING_SELECTOR_RULE;

    /// Parses a reference, reporting every problem at once, each under the field `reference`.
    ///
    /// Violations of the repository, tag, digest and account grammars keep their own rule ids.
    pub fn parse(s: &str) -> Result<ImageRef, Vec<Violation>> {
        check_length(s).map_err(|violation| vec![violation])?;
        let mut violations = Vec::new();
        let parts = Parts::split(strip_scheme(s, &mut violations));
        let registry = keep(parts.host.map(parse_host), &mut violations);
        let repository = keep(Some(RepositoryName::parse(parts.name)), &mut violations);
        let tag = keep(parts.tag.map(ImageTag::parse), &mut violations);
        let digest = keep(parts.digest.map(Digest::parse), &mut violations);
        if parts.tag.is_none() && parts.digest.is_none() {
            violations.push(missing_selector(s));
        }
        match (repository, selector(tag, digest)) {
            (Some(repository), Some((selector, tag_hint))) if violations.is_empty() => Ok(ImageRef {
                registry,
                repository,
                selector,
                tag_hint,
            }),
            _ => Err(violations),
        }
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        match &self.selector {
            ImageSelector::Digest(digest) => Some(digest),
            ImageSelector::Tag(_) => None,
        }
    }

    /// The tag: the selector's, or the hint written next to a digest.
    pub fn tag(&self) -> Option<&ImageTag> {
        match &self.selector {
            ImageSelector::Tag(tag) => Some(tag),
            ImageSelector::Digest(_) => self.tag_hint.as_ref(),
        }
    }
}

/// Canonical form: `[HOST/]name:tag`, `[HOST/]name@sha256:…` or `[HOST/]name:tag@sha256:…`.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.registry {
            write!(f, "{host}/")?;
        }
        write!(f, "{}", self.repository)?;
        if let Some(tag) = self.tag() {
            write!(f, ":{tag}")?;
        }
        match self.digest() {
            Some(digest) => write!(f, "@{digest}"),
            None => Ok(()),
        }
    }
}

/// The URI that pulls exactly `digest`: `ACCOUNT.dkr.ecr.REGION.amazonaws.com/name@sha256:…`
/// (`.amazonaws.com.cn` for China regions).
pub fn pinned_uri(account_id: &str, region: &str, repository: &RepositoryName, digest: &Digest) -> String {
    format!("{}/{repository}@{digest}", registry_hostname(account_id, region))
}

/// The standard registry host of an account in a region.
fn registry_hostname(account_id: &str, region: &str) -> String {
    format!("{account_id}.dkr.ecr.{region}.{}", standard_domain(region))
}

/// The DNS suffix of a region's partition, as the `dkr.ecr` host uses it.
fn standard_domain(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// The pieces of a reference as written, before any is parsed.
struct Parts<'a> {
    host: Option<&'a str>,
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// Splits `[host/]name[:tag][@digest]`.
    fn split(s: &'a str) -> Parts<'a> {
        let (host, path) = split_host(s);
        let (name_and_tag, digest) = match path.rsplit_once('@') {
            Some((before, digest)) => (before, Some(digest)),
            None => (path, None),
        };
        let (name, tag) = split_tag(name_and_tag);
        Parts {
            host,
            name,
            tag,
            digest,
        }
    }
}

/// Drops a URL scheme such as `https://`, recording that a reference has none.
fn strip_scheme<'a>(s: &'a str, violations: &mut Vec<Violation>) -> &'a str {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s;
    };
    violations.push(Violation::new(
        FIELD,
        HOST_RULE,
        format!("a reference has no URL scheme: remove `{scheme}://`; {FORMS}"),
    ));
    rest
}

/// Splits off a registry host the way Docker does: the first segment when it holds a `.` or
/// `:` or is `localhost`.
fn split_host(s: &str) -> (Option<&str>, &str) {
    match s.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, s),
    }
}

/// The tag follows the last `:` after the last `/`.
fn split_tag(path: &str) -> (&str, Option<&str>) {
    let segment_start = path.rfind('/').map_or(0, |slash| slash + 1);
    match path[segment_start..].rfind(':') {
        Some(colon) => {
            let (name, tag) = path.split_at(segment_start + colon);
            (name, Some(&tag[1..]))
        }
        None => (path, None),
    }
}

/// Pairs the selector with the tag hint: a digest wins and keeps the tag as a hint.
fn selector(tag: Option<ImageTag>, digest: Option<Digest>) -> Option<(ImageSelector, Option<ImageTag>)> {
    match (digest, tag) {
        (Some(digest), hint) => Some((ImageSelector::Digest(digest), hint)),
        (None, Some(tag)) => Some((ImageSelector::Tag(tag), None)),
        (None, None) => None,
    }
}

fn check_length(s: &str) -> Result<(), Violation> {
    let length = s.chars().count();
    if length == 0 {
        return Err(Violation::new(
            FIELD,
            EMPTY_RULE,
            format!("the reference is empty; {FORMS}"),
        ));
    }
    if length > MAX_LENGTH {
        return Err(Violation::new(
            FIELD,
            TOO_LONG_RULE,
            format!("the reference has {length} characters; a reference has at most {MAX_LENGTH}"),
        ));
    }
    Ok(())
}

/// Parses an ECR registry host; anything else breaks [`HOST_RULE`].
fn parse_host(host: &str) -> Result<EcrHost, Vec<Violation>> {
    let lowered = host.to_ascii_lowercase();
    let Some((account, region, domain)) = split_ecr_host(&lowered) else {
        return Err(vec![Violation::new(FIELD, HOST_RULE, foreign_host_problem(host))]);
    };
    let mut violations = Vec::new();
    let account_id = keep(Some(AccountId::parse(account)), &mut violations);
    if let Some(problem) = region_problem(region, domain) {
        violations.push(Violation::new(FIELD, HOST_RULE, problem));
    }
    match account_id {
        Some(account_id) if violations.is_empty() => Ok(EcrHost {
            account_id,
            region: region.to_owned(),
        }),
        _ => Err(violations),
    }
}

/// The DNS suffixes of ECR private registry hosts, after `ACCOUNT.`, `dkr.ecr.REGION` or
/// `dkr-ecr.REGION`.
const ECR_HOSTS: [(&str, &str); 3] = [
    ("dkr.ecr.", ".amazonaws.com"),
    ("dkr.ecr.", ".amazonaws.com.cn"),
    ("dkr-ecr.", ".on.aws"),
];

/// `(account, region, domain)` of a host shaped like an ECR registry host.
fn split_ecr_host(host: &str) -> Option<(&str, &str, &'static str)> {
    let (account, rest) = host.split_once('.')?;
    ECR_HOSTS.iter().find_map(|(prefix, domain)| {
        let region = rest.strip_prefix(prefix)?.strip_suffix(domain)?;
        Some((account, region, *domain))
    })
}

/// Why `region` is not an AWS region name, or does not belong under `domain`.
fn region_problem(region: &str, domain: &str) -> Option<String> {
    if !is_region_name(region) {
        return Some(format!(
            "`{region}` in the registry host is not an AWS region such as `us-east-1`; {FORMS}"
        ));
    }
    let china_domain = domain == ".amazonaws.com.cn";
    (china_domain != region.starts_with("cn-")).then(|| {
        format!(
            "region `{region}` is not served under `{domain}`; its registry host ends in `.{}`",
            standard_domain(region)
        )
    })
}

/// `xx-name[-name…]-N`, e.g. `us-east-1`, `us-gov-west-1`, `cn-northwest-1`.
fn is_region_name(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let is_word = |part: &&str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase());
    match parts.as_slice() {
        [area, words @ .., number] if !words.is_empty() => {
            area.len() == 2
                && is_word(area)
                && words.iter().all(is_word)
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Describes a registry host that is not ECR's, suggesting the form to use.
fn foreign_host_problem(host: &str) -> String {
    let lowered = host.to_ascii_lowercase();
    let why = if lowered == "public.ecr.aws" {
        "ECR Public is not served by this gateway".to_owned()
    } else if lowered.contains(".dkr.ecr-fips.") {
        "FIPS registry hosts are not accepted; use the same registry's `dkr.ecr` host".to_owned()
    } else {
        format!("`{host}` is not an ECR registry host")
    };
    format!(
        "{why}; only ECR references are accepted: {FORMS} (a first path segment holding `.` or `:` \
         is read as a registry host)"
    )
}

fn missing_selector(s: &str) -> Violation {
    Violation::new(
        FIELD,
        MISSING_SELECTOR_RULE,
        format!(
            "`{s}` names no image: add `:tag` or `@sha256:…`, e.g. `{s}:v1.2.3`; \
             there is no implicit `latest`"
        ),
    )
}

/// Keeps a parsed value, or records its violations, re-fielded to `reference`, and keeps nothing.
fn keep<T, E: IntoViolations>(parsed: Option<Result<T, E>>, violations: &mut Vec<Violation>) -> Option<T> {
    match parsed? {
        Ok(value) => Some(value),
        Err(found) => {
            violations.extend(found.into_violations().into_iter().map(refield));
            None
        }
    }
}

/// One violation or several, as a list.
trait IntoViolations {
    fn into_violations(self) -> Vec<Violation>;
}

impl IntoViolations for Violation {
    fn into_violations(self) -> Vec<Violation> {
        vec![self]
    }
}

impl IntoViolations for Vec<Violation> {
    fn into_violations(self) -> Vec<Violation> {
        self
    }
}

/// The same violation, reported against the `reference` field.
fn refield(violation: Violation) -> Violation {
    Violation {
        field: FIELD.to_owned(),
        ..violation
    }
}

#[cfg(test)]
#[path = "image_ref_tests.rs"]
mod tests;
