//! Resource tag rules: defaults first, then required keys, allowed values and AWS's limits.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::naming::backticked;
use crate::config::{AllowedValues, TagConfig};
use crate::domain::Violation;

/// Field of violations about the tag set as a whole.
const FIELD: &str = "settings.tags";
/// AWS's limit on tags per resource.
const MAX_TAGS: usize = 50;
/// AWS's limit on characters in a tag key.
const MAX_KEY_LENGTH: usize = 128;
/// AWS's limit on characters in a tag value.
const MAX_VALUE_LENGTH: usize = 256;
/// Prefix AWS keeps for its own tags (matched without regard to case).
const RESERVED_PREFIX: &str = "aws:";
/// The characters AWS allows in tag keys and values.
const TAG_CHARACTERS: &str = "letters, digits, spaces and `_ . : / = + - @`";

/// AWS's tag text: letters, digits, separators (spaces) and `_ . : / = + - @`.
static TAG_TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$").expect("literal regex"));

/// The tag rules, compiled.
#[derive(Debug, Clone)]
pub(super) struct TagRules {
    config: TagConfig,
    allowed: BTreeMap<String, AllowedRule>,
}

/// One key's allowed values, ready to check.
#[derive(Debug, Clone)]
enum AllowedRule {
    Values(Vec<String>),
    Pattern { source: String, regex: Regex },
}

impl TagRules {
    /// Builds the rules; the defaults must pass them, and each problem names its config key.
    pub(super) fn compile(config: &TagConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut allowed = BTreeMap::new();
        for (key, values) in &config.allowed {
            match compile_allowed(key, values) {
                Ok(rule) => {
                    allowed.insert(key.clone(), rule);
                }
                Err(problem) => problems.push(problem),
            }
        }
        problems.extend(
            config
                .required
                .iter()
                .flat_map(|key| key_violations(key))
                .map(|v| format!("policy.tags.required: {}", v.description)),
        );
        let rules = Self {
            config: config.clone(),
            allowed,
        };
        problems.extend(rules.default_problems());
        match problems.is_empty() {
            true => Ok(rules),
            false => Err(problems),
        }
    }

    /// The request's tags over the defaults, or every tag rule they break.
    pub(super) fn check(
        &self,
        requested: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Vec<Violation>> {
        let mut tags = self.config.defaults.clone();
        tags.extend(requested.iter().map(|(k, v)| (k.clone(), v.clone())));
        let violations = self.violations(&tags);
        match violations.is_empty() {
            true => Ok(tags),
            false => Err(violations),
        }
    }

    fn violations(&self, tags: &BTreeMap<String, String>) -> Vec<Violation> {
        self.breaches(tags)
            .into_iter()
            .map(|(_, violation)| violation)
            .collect()
    }

    /// Every rule `tags` break, as given (no defaults added), each with the
    /// key it is about (`None`: the set as a whole).
    pub(super) fn breaches(&self, tags: &BTreeMap<String, String>) -> Vec<(Option<String>, Violation)> {
        let mut breaches: Vec<(Option<String>, Violation)> = count_violation(tags.len())
            .into_iter()
            .map(|v| (None, v))
            .collect();
        for (key, value) in tags {
            let of_key = key_violations(key)
                .into_iter()
                .chain(value_violations(FIELD, key, value))
                .chain(self.allowed_violation(key, value));
            breaches.extend(of_key.map(|v| (Some(key.clone()), v)));
        }
        for key in self.missing_required(tags) {
            breaches.push((Some(key.to_owned()), required_violation(key)));
        }
        breaches
    }

    /// The default value of `key`, if the policy gives one.
    pub(super) fn default_of(&self, key: &str) -> Option<&str> {
        self.config.defaults.get(key).map(String::as_str)
    }

    fn missing_required<'a>(&'a self, tags: &'a BTreeMap<String, String>) -> impl Iterator<Item = &'a str> {
        self.config
            .required
            .iter()
            .filter(|key| tags.get(*key).is_none_or(|value| value.trim().is_empty()))
            .map(String::as_str)
    }

    fn allowed_violation(&self, key: &str, value: &str) -> Option<Violation> {
        let expected = match self.allowed.get(key)? {
            AllowedRule::Values(values) if values.iter().any(|v| v == value) => return None,
            AllowedRule::Pattern { regex, .. } if regex.is_match(value) => return None,
            AllowedRule::Values(values) => format!("use one of: {}", backticked(values)),
            AllowedRule::Pattern { source, .. } => format!("the value must match `{source}`"),
        };
        Some(Violation::new(
            key_field(key),
            "tags.allowed-values",
            format!("`{key}` = `{value}` is not allowed; {expected}"),
        ))
    }

    fn default_problems(&self) -> Vec<String> {
        let defaults = &self.config.defaults;
        let mut violations: Vec<Violation> = count_violation(defaults.len()).into_iter().collect();
        for (key, value) in defaults {
            violations.extend(key_violations(key));
            violations.extend(value_violations(FIELD, key, value));
            violations.extend(self.allowed_violation(key, value));
        }
        violations
            .into_iter()
            .map(|v| format!("policy.tags.defaults: {}", v.description))
            .collect()
    }
}

fn required_violation(key: &str) -> Violation {
    Violation::new(
        key_field(key),
        "tags.required",
        format!("every repository carries the tag `{key}` with a non-blank value; add it to settings.tags"),
    )
}

fn compile_allowed(key: &str, values: &AllowedValues) -> Result<AllowedRule, String> {
    let config_key = format!("policy.tags.allowed.{key}");
    match values {
        AllowedValues::Values { values } if values.is_empty() => Err(format!(
            "{config_key}: `values` is empty, so no value could pass; list at least one"
        )),
        AllowedValues::Values { values } => Ok(AllowedRule::Values(values.clone())),
        AllowedValues::Pattern { pattern } => {
            super::anchored_regex(&format!("{config_key}.pattern"), pattern).map(|regex| {
                AllowedRule::Pattern {
                    source: pattern.clone(),
                    regex,
                }
            })
        }
    }
}

/// `settings.tags["key"]`, escaped like a JSON string.
fn key_field(key: &str) -> String {
    field_of(FIELD, key)
}

/// `field["key"]`, escaped like a JSON string.
fn field_of(field: &str, key: &str) -> String {
    format!("{field}[{key:?}]")
}

/// AWS's limits on a tag filter's keys and values (e.g. ListRepositories'
/// `tag_filter`): a filter outside them could never match. Keys under `aws:`
/// are fine here: AWS's own tags can be filtered on.
pub fn tag_filter_violations(field: &str, tags: &BTreeMap<String, String>) -> Vec<Violation> {
    tags.iter()
        .flat_map(|(key, value)| {
            let mut violations = aws_key_violations(field, key);
            violations.extend(value_violations(field, key, value));
            violations
        })
        .collect()
}

/// AWS's limits on tags the gateway would set (e.g. RemediateRepositories'
/// `tags`): a filter's rules, and no key under `aws:`, which AWS reserves.
pub fn settable_tag_violations(field: &str, tags: &BTreeMap<String, String>) -> Vec<Violation> {
    let mut violations = tag_filter_violations(field, tags);
    for key in tags.keys() {
        if key
            .get(..RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
        {
            violations.push(Violation::new(
                field_of(field, key),
                "tags.reserved-prefix",
                format!(
                    "`{key}` starts with `aws:`, which AWS reserves for its own tags; choose a key without it"
                ),
            ));
        }
    }
    violations
}

fn count_violation(count: usize) -> Option<Violation> {
    (count > MAX_TAGS).then(|| {
        Violation::new(
            FIELD,
            "tags.count",
            format!("{count} tags, counting the gateway's defaults; AWS allows at most {MAX_TAGS} per repository: remove {}", count - MAX_TAGS),
        )
    })
}

fn key_violations(key: &str) -> Vec<Violation> {
    let mut violations = aws_key_violations(FIELD, key);
    if key
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
    {
        violations.push(Violation::new(
            key_field(key),
            "tags.reserved-prefix",
            format!(
                "`{key}` starts with `aws:`, which AWS reserves for its own tags; choose a key without it"
            ),
        ));
    }
    violations
}

/// AWS's limits on a tag key: length and characters.
fn aws_key_violations(field: &str, key: &str) -> Vec<Violation> {
    let mut violations = Vec::new();
    let length = key.chars().count();
    if !(1..=MAX_KEY_LENGTH).contains(&length) {
        violations.push(Violation::new(
            field_of(field, key),
            "tags.key-length",
            format!("the tag key has {length} characters; AWS tag keys have 1 to {MAX_KEY_LENGTH}"),
        ));
    }
    if !TAG_TEXT.is_match(key) {
        violations.push(Violation::new(
            field_of(field, key),
            "tags.key-characters",
            format!("the tag key {key:?} has characters AWS does not allow; use {TAG_CHARACTERS}"),
        ));
    }
    violations
}

/// AWS's limits on a tag value: length and characters.
fn value_violations(field: &str, key: &str, value: &str) -> Vec<Violation> {
    let mut violations = Vec::new();
    let length = value.chars().count();
    if length > MAX_VALUE_LENGTH {
        violations.push(Violation::new(
            field_of(field, key),
            "tags.value-length",
            format!(
                "the value of {key:?} has {length} characters; AWS tag values have at most {MAX_VALUE_LENGTH}"
            ),
        ));
    }
    if !TAG_TEXT.is_match(value) {
        violations.push(Violation::new(
            field_of(field, key),
            "tags.value-characters",
            format!("the value of {key:?} has characters AWS does not allow; use {TAG_CHARACTERS}"),
        ));
    }
    violations
}

#[cfg(test)]
#[path = "tags_tests.rs"]
mod tests;
