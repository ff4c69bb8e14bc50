//! ECR repository names.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::Violation;

/// Field named by violations of [`RepositoryName::parse`].
const FIELD: &str = "repository";
/// Rule id of a name outside 2–256 characters.
const LENGTH_RULE: &str = "ecr.repository-name.length";
/// Rule id of a name outside ECR's (the OCI distribution) grammar.
const GRAMMAR_RULE: &str = "ecr.repository-name.grammar";
/// Fewest characters ECR accepts.
const MIN_LENGTH: usize = 2;
/// Most characters ECR accepts.
const MAX_LENGTH: usize = 256;

/// One path segment: lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
const SEGMENT_PATTERN: &str = "[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*";

static SEGMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{SEGMENT_PATTERN}$")).expect("literal regex"));

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!("^{SEGMENT_PATTERN}(?:/{SEGMENT_PATTERN})*$")).expect("literal regex")
});

/// A repository name ECR accepts: 2–256 characters of `/`-separated lowercase segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepositoryName(String);

impl RepositoryName {
    /// Rule id of a name outside 2–256 characters.
    pub const LENGTH_RULE: &'static str = LENGTH_RULE;
    /// Rule id of a name outside ECR's grammar.
    pub const GRAMMAR_RULE: &'static str = GRAMMAR_RULE;

    /// Parses ECR's grammar; the violation points at the first offending segment or character.
    pub fn parse(s: &str) -> Result<RepositoryName, Violation> {
        let length = s.chars().count();
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
            return Err(Violation::new(FIELD, LENGTH_RULE, length_problem(s, length)));
        }
        if NAME.is_match(s) {
            Ok(RepositoryName(s.to_owned()))
        } else {
            Err(Violation::new(FIELD, GRAMMAR_RULE, grammar_problem(s)))
        }
    }

    /// True when `s` could be one `/`-separated segment of a name, e.g. a team namespace.
    pub fn is_valid_segment(s: &str) -> bool {
        SEGMENT.is_match(s)
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated path segments, namespace first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The first path segment (the team namespace).
    pub fn namespace(&self) -> &str {
        self.segments().next().unwrap_or(&self.0)
    }

    /// Everything after `namespace/`, or `None` when the name is a single segment.
    pub fn path_after_namespace(&self) -> Option<&str> {
        self.0.split_once('/').map(|(_, rest)| rest)
    }
}

fn length_problem(s: &str, length: usize) -> String {
    match length {
        0 => "the repository name is empty; give a name such as `team/service`".to_owned(),
        n if n < MIN_LENGTH => {
            format!("`{s}` has {n} character; ECR repository names have {MIN_LENGTH} to {MAX_LENGTH}")
        }
        n => {
            format!("the name has {n} characters; ECR repository names have at most {MAX_LENGTH}: shorten it")
        }
    }
}

/// Describes why `s` fails the grammar, suggesting the lowercase form when case is all that is wrong.
fn grammar_problem(s: &str) -> String {
    let lowered = s.to_lowercase();
    if lowered != s && NAME.is_match(&lowered) {
        return format!("`{s}` has uppercase letters; ECR repository names are lowercase: use `{lowered}`");
    }
    let mut offset = 0;
    for (index, segment) in s.split('/').enumerate() {
        if let Some(problem) = segment_problem(segment, offset) {
            return format!("segment {} `{segment}` of `{s}`: {problem}", index + 1);
        }
        offset += segment.chars().count() + 1;
    }
    format!("`{s}` is not a valid repository name; use lowercase segments like `team/service`")
}

/// Why one segment fails the grammar; `offset` is its character position in the whole name.
fn segment_problem(segment: &str, offset: usize) -> Option<String> {
    const JOINERS: &str = "join lowercase letters and digits with a single `.`, `_`, `__` or dashes";
    if segment.is_empty() {
        return Some("is empty; remove the leading, trailing or doubled `/`".to_owned());
    }
    if let Some((at, c)) = segment.chars().enumerate().find(|(_, c)| !is_name_char(*c)) {
        let position = offset + at + 1;
        return Some(match c.is_ascii_uppercase() {
            true => format!("character {position} `{c}` is uppercase; names are lowercase"),
            false => format!("character {position} `{c}` is not allowed; {JOINERS}"),
        });
    }
    let first = segment.chars().next().filter(|c| !c.is_ascii_alphanumeric());
    let last = segment.chars().last().filter(|c| !c.is_ascii_alphanumeric());
    if let Some(c) = first.or(last) {
        return Some(format!(
            "starts or ends with `{c}`; a segment starts and ends with a lowercase letter or digit"
        ));
    }
    bad_separator(segment).map(|run| format!("`{run}` is not a separator; {JOINERS}"))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
}

/// The first run of separators that is not `.`, `_`, `__` or dashes only.
fn bad_separator(segment: &str) -> Option<&str> {
    segment
        .split(|c: char| c.is_ascii_alphanumeric())
        .filter(|run| !run.is_empty())
        .find(|run| !matches!(*run, "." | "_" | "__") && !run.chars().all(|c| c == '-'))
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RepositoryName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RepositoryName {
    type Error = Violation;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        RepositoryName::parse(&value)
    }
}

impl From<RepositoryName> for String {
    fn from(value: RepositoryName) -> Self {
        value.0
    }
}

#[cfg(test)]
#[path = "repository_name_tests.rs"]
mod tests;
