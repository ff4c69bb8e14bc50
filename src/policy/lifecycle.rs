//! Lifecycle policy rules: ECR's checks of the policy JSON, every problem reported at once,
//! and the template a new repository gets when its request has no policy.
//!
//! [`read_policy`] turns text into the rules of a [`LifecyclePolicy`]. Its checks follow the
//! AWS pages "Lifecycle policy properties in Amazon ECR" (fields, required combinations) and
//! "Automate the cleanup of images by using lifecycle policies in Amazon ECR" (evaluation
//! rules that constrain whole policies); the 100–30,720 character limit is `PutLifecyclePolicy`'s.
//! Where AWS documents no limit (e.g. `description` length), none is invented.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::lifecycle_model::{
    CountCriterion, LifecyclePolicy, LifecycleRule, RuleAction, Selection, StorageClass, TagFilter,
    TagPattern, TagSelection,
};
use crate::config::{LifecycleTemplates, NamingConfig};
use crate::domain::Violation;

#[path = "lifecycle_checks.rs"]
mod checks;
use checks::*;

/// Field of every lifecycle violation in repository requests and templates.
const FIELD: &str = "settings.lifecycle_policy";
/// ECR's shortest lifecycle policy text.
const MIN_LENGTH: usize = 100;
/// ECR's longest lifecycle policy text.
const MAX_LENGTH: usize = 30_720;
/// ECR's most rules in one policy.
const MAX_RULES: usize = 50;
/// ECR's limit of `*` wildcards in one `tagPatternList` entry.
const MAX_PATTERN_WILDCARDS: usize = 4;
/// Largest `rulePriority` or `countNumber`: ECR's integers are 32-bit.
const MAX_INTEGER: u64 = i32::MAX as u64;
/// Days an image must stay archived before a lifecycle rule may expire it.
const MIN_ARCHIVED_DAYS: u32 = 90;

const RULE_FIELDS: &[&str] = &["rulePriority", "description", "selection", "action"];
const SELECTION_FIELDS: &[&str] = &[
    "tagStatus",
    "tagPatternList",
    "tagPrefixList",
    "storageClass",
    "countType",
    "countUnit",
    "countNumber",
];
const ACTION_FIELDS: &[&str] = &["type", "targetStorageClass"];
const TAG_STATUSES: &[&str] = &["tagged", "untagged", "any"];
const STORAGE_CLASSES: &[&str] = &["standard", "archive"];
const COUNT_TYPES: &[&str] = &[
    "imageCountMoreThan",
    "sinceImagePushed",
    "sinceImagePulled",
    "sinceImageTransitioned",
];
const ACTION_TYPES: &[&str] = &["expire", "transition"];
const TARGET_STORAGE_CLASSES: &[&str] = &["archive"];

/// The request's lifecycle policy, else the namespace's template, else the org-wide one.
pub(super) fn plan(
    templates: &LifecycleTemplates,
    namespace: &str,
    requested: Option<&str>,
) -> Result<Option<String>, Vec<Violation>> {
    match requested.filter(|text| !text.trim().is_empty()) {
        None => Ok(templates.for_namespace(namespace).map(str::to_owned)),
        Some(text) => {
            let violations = violations(text);
            match violations.is_empty() {
                true => Ok(Some(text.to_owned())),
                false => Err(violations),
            }
        }
    }
}

/// Every `lifecycle-policy.*` problem of `text`, fields under `settings.lifecycle_policy`.
pub(super) fn violations(text: &str) -> Vec<Violation> {
    LifecyclePolicy::parse(text, FIELD).err().unwrap_or_default()
}

/// The rules of `text`, or every problem with it; fields are named under `prefix`.
pub(super) fn read_policy(text: &str, prefix: &str) -> Result<Vec<LifecycleRule>, Vec<Violation>> {
    let mut problems = Problems(length_violation(text, prefix).into_iter().collect());
    let document = match serde_json::from_str::<Value>(text) {
        Ok(document) => document,
        Err(error) => {
            let problem = format!("the lifecycle policy is not valid JSON: {error}");
            problems.add(prefix, "lifecycle-policy.json", problem);
            return Err(problems.0);
        }
    };
    let (top, rules) = match document_rules(&document) {
        Ok(found) => found,
        Err(problem) => {
            problems.add(prefix, "lifecycle-policy.json", problem);
            return Err(problems.0);
        }
    };
    problems.unknown_fields(top, &["rules"], prefix);
    if rules.is_empty() || rules.len() > MAX_RULES {
        let problem = format!(
            "the policy has {} rules; ECR accepts 1 to {MAX_RULES}",
            rules.len()
        );
        problems.add(format!("{prefix}.rules"), "lifecycle-policy.rule-count", problem);
    }
    let drafts: Vec<RuleDraft> = rules
        .iter()
        .enumerate()
        .map(|(index, rule)| read_rule(rule, format!("{prefix}.rules[{index}]"), &mut problems))
        .collect();
    cross_rule_problems(&drafts, &mut problems);
    let rules: Option<Vec<LifecycleRule>> = drafts.into_iter().map(|draft| draft.rule).collect();
    match rules {
        Some(rules) if problems.0.is_empty() => Ok(rules),
        _ => Err(problems.0),
    }
}

fn length_violation(text: &str, field: &str) -> Option<Violation> {
    let length = text.chars().count();
    (!(MIN_LENGTH..=MAX_LENGTH).contains(&length)).then(|| {
        Violation::new(
            field,
            "lifecycle-policy.length",
            format!("the lifecycle policy has {length} characters; ECR accepts {MIN_LENGTH} to {MAX_LENGTH}"),
        )
    })
}

/// The top-level object and its `rules` array, or why the document has neither.
fn document_rules(document: &Value) -> Result<(&Map<String, Value>, &Vec<Value>), String> {
    let Value::Object(top) = document else {
        return Err("the lifecycle policy must be a JSON object like `{\"rules\": [...]}`".to_owned());
    };
    match top.get("rules") {
        Some(Value::Array(rules)) => Ok((top, rules)),
        _ => Err("the lifecycle policy has no `rules` array; write `{\"rules\": [...]}`".to_owned()),
    }
}

/// Violations gathered while reading, in the order found.
struct Problems(Vec<Violation>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, rule: &'static str, description: impl Into<String>) {
        self.0.push(Violation::new(field, rule, description));
    }

    fn unknown_fields(&mut self, object: &Map<String, Value>, known: &[&str], path: &str) {
        for key in object.keys().filter(|key| !known.contains(&key.as_str())) {
            let problem = format!(
                "ECR has no field `{key}` here; the fields are {}",
                known.join(", ")
            );
            self.add(format!("{path}.{key}"), "lifecycle-policy.unknown-field", problem);
        }
    }

    fn wrong_type(&mut self, path: &str, expected: &str) {
        self.add(path, "lifecycle-policy.field-type", format!("must be {expected}"));
    }

    fn missing(&mut self, path: &str) {
        self.add(path, "lifecycle-policy.required", "this field is required");
    }
}

/// A field as read: absent, present but broken (already reported), or its value.
enum Field<T> {
    Absent,
    Invalid,
    Present(T),
}

impl<T> Field<T> {
    /// Whether the field was written at all, valid or not.
    fn given(&self) -> bool {
        !matches!(self, Field::Absent)
    }
}

/// One of `allowed` at `object[key]`, reporting a wrong type or unknown value.
fn read_enum(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
    allowed: &[&'static str],
    problems: &mut Problems,
) -> Field<&'static str> {
    let field = format!("{path}.{key}");
    match object.get(key) {
        None => Field::Absent,
        Some(Value::String(text)) => match allowed.iter().find(|value| *value == text) {
            Some(value) => Field::Present(value),
            None => {
                let problem = format!("`{text}` is not one of {}", allowed.join(", "));
                problems.add(field, "lifecycle-policy.unknown-value", problem);
                Field::Invalid
            }
        },
        Some(_) => {
            problems.wrong_type(&field, &format!("a string, one of {}", allowed.join(", ")));
            Field::Invalid
        }
    }
}

/// Like [`read_enum`], and reports the field missing.
fn read_required_enum(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
    allowed: &[&'static str],
    problems: &mut Problems,
) -> Option<&'static str> {
    match read_enum(object, key, path, allowed, problems) {
        Field::Present(value) => Some(value),
        Field::Invalid => None,
        Field::Absent => {
            problems.missing(&format!("{path}.{key}"));
            None
        }
    }
}

/// A required integer in 1..=2³¹-1, else a violation of `rule`.
fn read_positive_integer(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
    rule: &'static str,
    problems: &mut Problems,
) -> Option<u32> {
    let field = format!("{path}.{key}");
    let value = object.get(key);
    let number = value
        .and_then(Value::as_u64)
        .filter(|n| (1..=MAX_INTEGER).contains(n));
    match (value, number) {
        (None, _) => problems.missing(&field),
        (Some(_), None) => {
            let problem = format!("must be a whole number from 1 to {MAX_INTEGER}");
            problems.add(field, rule, problem);
        }
        (Some(_), Some(_)) => {}
    }
    number.and_then(|n| u32::try_from(n).ok())
}

/// An optional list of strings; non-strings are reported by index.
fn read_string_list(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
    problems: &mut Problems,
) -> Field<Vec<String>> {
    let field = format!("{path}.{key}");
    let Some(value) = object.get(key) else {
        return Field::Absent;
    };
    let Value::Array(items) = value else {
        problems.wrong_type(&field, "a list of strings");
        return Field::Invalid;
    };
    let mut strings = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        match item {
            Value::String(text) => strings.push(text.clone()),
            _ => problems.wrong_type(&format!("{field}[{index}]"), "a string"),
        }
    }
    match strings.len() == items.len() {
        true => Field::Present(strings),
        false => Field::Invalid,
    }
}

/// What one rule contributed, kept for the checks across rules.
struct RuleDraft {
    path: String,
    priority: Option<u32>,
    tags: Option<TagSelection>,
    storage_class: Option<StorageClass>,
    rule: Option<LifecycleRule>,
}

fn read_rule(value: &Value, path: String, problems: &mut Problems) -> RuleDraft {
    let mut draft = RuleDraft {
        path,
        priority: None,
        tags: None,
        storage_class: None,
        rule: None,
    };
    let path = draft.path.as_str();
    let Value::Object(object) = value else {
        problems.wrong_type(path, "an object with rulePriority, selection and action");
        return draft;
    };
    let found_before = problems.0.len();
    problems.unknown_fields(object, RULE_FIELDS, path);
    draft.priority = read_positive_integer(
        object,
        "rulePriority",
        path,
        "lifecycle-policy.priority",
        problems,
    );
    let description = read_description(object, path, problems);
    let selection = read_child(object, "selection", path, problems)
        .map(|child| read_selection(child, &format!("{path}.selection"), problems));
    let action = read_child(object, "action", path, problems)
        .and_then(|child| read_action(child, &format!("{path}.action"), problems));
    let Some(selection) = selection else {
        return draft;
    };
    draft.tags = selection.tags.clone();
    draft.storage_class = selection.storage_class;
    if let (Some(count), Some(action)) = (selection.count, action) {
        count_action_problems(count, action, path, problems);
    }
    if problems.0.len() == found_before {
        draft.rule = build_rule(draft.priority, description, selection, action);
    }
    draft
}

fn build_rule(
    priority: Option<u32>,
    description: Option<String>,
    selection: SelectionDraft,
    action: Option<RuleAction>,
) -> Option<LifecycleRule> {
    Some(LifecycleRule {
        priority: priority?,
        description,
        selection: Selection {
            tags: selection.tags?,
            storage_class: selection.storage_class?,
            count: selection.count?,
        },
        action: action?,
    })
}

fn read_description(object: &Map<String, Value>, path: &str, problems: &mut Problems) -> Option<String> {
    match object.get("description") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            problems.wrong_type(&format!("{path}.description"), "a string");
            None
        }
    }
}

/// The required object `object[key]`, reporting it missing or of another type.
fn read_child<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    problems: &mut Problems,
) -> Option<&'a Map<String, Value>> {
    let field = format!("{path}.{key}");
    match object.get(key) {
        Some(Value::Object(child)) => Some(child),
        Some(_) => {
            problems.wrong_type(&field, "an object");
            None
        }
        None => {
            problems.missing(&field);
            None
        }
    }
}

/// A rule's `selection` as far as it could be read.
struct SelectionDraft {
    tags: Option<TagSelection>,
    storage_class: Option<StorageClass>,
    count: Option<CountCriterion>,
}

fn read_selection(object: &Map<String, Value>, path: &str, problems: &mut Problems) -> SelectionDraft {
    problems.unknown_fields(object, SELECTION_FIELDS, path);
    let status = read_required_enum(object, "tagStatus", path, TAG_STATUSES, problems);
    let patterns = read_patterns(object, path, problems);
    let prefixes = read_string_list(object, "tagPrefixList", path, problems);
    let tags = status.and_then(|status| tag_selection(status, patterns, prefixes, path, problems));
    let storage_class = match read_enum(object, "storageClass", path, STORAGE_CLASSES, problems) {
        Field::Absent => Field::Absent,
        Field::Invalid => Field::Invalid,
        Field::Present(name) => Field::Present(storage_class_named(name)),
    };
    let count_type = read_required_enum(object, "countType", path, COUNT_TYPES, problems);
    let unit_fits = count_type.is_some_and(|count_type| count_unit_fits(object, count_type, path, problems));
    let number = read_positive_integer(
        object,
        "countNumber",
        path,
        "lifecycle-policy.count-number",
        problems,
    );
    let storage_fits =
        count_type.is_none_or(|count_type| storage_class_fits(&storage_class, count_type, path, problems));
    let count = match (count_type, number, unit_fits) {
        (Some(count_type), Some(number), true) => Some(criterion(count_type, number)),
        _ => None,
    };
    let storage_class = match storage_class {
        Field::Absent => Some(StorageClass::Standard),
        Field::Invalid => None,
        Field::Present(class) => Some(class),
    };
    SelectionDraft {
        tags,
        storage_class: storage_class.filter(|_| storage_fits),
        count,
    }
}

/// `tagPatternList`, reporting each pattern with more wildcards than ECR allows.
fn read_patterns(object: &Map<String, Value>, path: &str, problems: &mut Problems) -> Field<Vec<TagPattern>> {
    let texts = match read_string_list(object, "tagPatternList", path, problems) {
        Field::Present(texts) => texts,
        Field::Absent => return Field::Absent,
        Field::Invalid => return Field::Invalid,
    };
    let mut patterns = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let pattern = TagPattern::new(text.as_str());
        match pattern.wildcards() {
            wildcards if wildcards <= MAX_PATTERN_WILDCARDS => patterns.push(pattern),
            wildcards => problems.add(
                format!("{path}.tagPatternList[{index}]"),
                "lifecycle-policy.pattern-wildcards",
                format!("`{text}` has {wildcards} `*` wildcards; ECR allows at most {MAX_PATTERN_WILDCARDS}"),
            ),
        }
    }
    match patterns.len() == texts.len() {
        true => Field::Present(patterns),
        false => Field::Invalid,
    }
}

/// `tagStatus` with its lists: `tagged` needs exactly one non-empty list, the others none.
fn tag_selection(
    status: &str,
    patterns: Field<Vec<TagPattern>>,
    prefixes: Field<Vec<String>>,
    path: &str,
    problems: &mut Problems,
) -> Option<TagSelection> {
    // An empty list is taken as no list: it filters nothing.
    let patterns = non_empty(patterns);
    let prefixes = non_empty(prefixes);
    if status != "tagged" {
        let rule = match status {
            "untagged" => "lifecycle-policy.untagged-no-filter",
            _ => "lifecycle-policy.any-no-filter",
        };
        for (key, given) in [
            ("tagPatternList", patterns.given()),
            ("tagPrefixList", prefixes.given()),
        ] {
            if given {
                let problem = format!("a `{status}` rule takes no {key}; only `tagged` rules filter on tags");
                problems.add(format!("{path}.{key}"), rule, problem);
            }
        }
        let untagged = (status == "untagged").then_some(TagSelection::Untagged);
        return (!patterns.given() && !prefixes.given()).then(|| untagged.unwrap_or(TagSelection::Any));
    }
    match (patterns, prefixes) {
        (Field::Absent, Field::Absent) => {
            let problem = "a `tagged` rule needs a non-empty tagPatternList or tagPrefixList";
            problems.add(
                format!("{path}.tagStatus"),
                "lifecycle-policy.tagged-needs-filter",
                problem,
            );
            None
        }
        (Field::Present(patterns), Field::Absent) => {
            Some(TagSelection::Tagged(TagFilter::Patterns(patterns)))
        }
        (Field::Absent, Field::Present(prefixes)) => {
            Some(TagSelection::Tagged(TagFilter::Prefixes(prefixes)))
        }
        (patterns, prefixes) => {
            if patterns.given() && prefixes.given() {
                let problem = "ECR takes tagPatternList or tagPrefixList in one rule, not both; \
                    use two rules";
                problems.add(
                    format!("{path}.tagPrefixList"),
                    "lifecycle-policy.one-filter-list",
                    problem,
                );
            }
            None
        }
    }
}

fn non_empty<T>(list: Field<Vec<T>>) -> Field<Vec<T>> {
    match list {
        Field::Present(items) if items.is_empty() => Field::Absent,
        other => other,
    }
}

fn storage_class_named(name: &str) -> StorageClass {
    match name {
        "archive" => StorageClass::Archive,
        _ => StorageClass::Standard,
    }
}

fn criterion(count_type: &str, number: u32) -> CountCriterion {
    match count_type {
        "sinceImagePushed" => CountCriterion::SinceImagePushed(number),
        "sinceImagePulled" => CountCriterion::SinceImagePulled(number),
        "sinceImageTransitioned" => CountCriterion::SinceImageTransitioned(number),
        _ => CountCriterion::ImageCountMoreThan(number),
    }
}

/// Problems in the templates: each must pass the rules, and name a configured namespace.
pub(super) fn config_problems(templates: &LifecycleTemplates, naming: &NamingConfig) -> Vec<String> {
    let key = "policy.settings.lifecycle_templates";
    let mut problems: Vec<String> = templates
        .default
        .iter()
        .flat_map(|text| violations(text))
        .map(|v| format!("{key}.default: {}", config_problem(&v)))
        .collect();
    for (namespace, text) in &templates.namespaces {
        problems.extend(
            violations(text)
                .into_iter()
                .map(|v| format!("{key}.namespaces.{namespace}: {}", config_problem(&v))),
        );
        if !naming.namespaces.is_empty() && !naming.namespaces.contains(namespace) {
            problems.push(format!(
                "{key}.namespaces.{namespace}: `{namespace}` is not in policy.naming.namespaces"
            ));
        }
    }
    problems
}

/// A template's violation for a config problem: the place inside the policy, then what is wrong.
fn config_problem(violation: &Violation) -> String {
    match violation
        .field
        .strip_prefix(FIELD)
        .and_then(|rest| rest.strip_prefix('.'))
    {
        Some(place) => format!("{place}: {}", violation.description),
        None => violation.description.clone(),
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
