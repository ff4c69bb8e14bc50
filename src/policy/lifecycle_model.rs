//! Amazon ECR's lifecycle policy as types, read from and written back to ECR's JSON.
//!
//! Only [`LifecyclePolicy::parse`] makes a [`LifecyclePolicy`], and it refuses any text
//! that breaks one of ECR's rules (see the `lifecycle` module for the checks and their
//! rule ids), so every policy held here is one ECR accepts. Sources: the AWS pages
//! "Lifecycle policy properties in Amazon ECR" and "Automate the cleanup of images by
//! using lifecycle policies in Amazon ECR" (section "Lifecycle policy evaluation rules").

use serde::Serialize;

use crate::domain::Violation;

/// A lifecycle policy ECR accepts: rules applied lowest `rulePriority` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecyclePolicy {
    rules: Vec<LifecycleRule>,
}

/// One rule: which images it selects, and what it does to those past its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRule {
    /// `rulePriority`: unique in the policy; the lowest number is applied first.
    pub priority: u32,
    /// `description`: free text for people; ECR documents no length limit of its own.
    pub description: Option<String>,
    /// `selection`: the images the rule considers.
    pub selection: Selection,
    /// `action`: what happens to the images the rule marks.
    pub action: RuleAction,
}

/// A rule's `selection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `tagStatus` with its tag filter.
    pub tags: TagSelection,
    /// `storageClass`: the rule only sees images in this class (ECR's default is `standard`).
    pub storage_class: StorageClass,
    /// `countType`, `countUnit` and `countNumber` together.
    pub count: CountCriterion,
}

/// `tagStatus`, with the filter that only `tagged` may (and must) carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSelection {
    /// `tagged`: images with a tag for every entry of the filter.
    Tagged(TagFilter),
    /// `untagged`: images without tags.
    Untagged,
    /// `any`: every image.
    Any,
}

/// The tag filter of a `tagged` rule: one list, never both (ECR refuses both in one rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// `tagPrefixList`: every prefix must start one of the image's tags.
    Prefixes(Vec<String>),
    /// `tagPatternList`: every pattern must match one of the image's tags.
    Patterns(Vec<TagPattern>),
}

/// A `tagPatternList` entry: literal text with at most four `*` (ECR's limit,
/// checked when a policy is read).
pub use crate::domain::TagPattern;

/// ECR's storage classes for images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageClass {
    /// `standard`: pullable images.
    Standard,
    /// `archive`: images that cannot be pulled until restored.
    Archive,
}

/// `countType` with its `countNumber` (and the implied `countUnit: days` for the `since*` types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountCriterion {
    /// `imageCountMoreThan`: keep the newest N selected images, act on the rest.
    ImageCountMoreThan(u32),
    /// `sinceImagePushed`: act on images pushed more than N days ago.
    SinceImagePushed(u32),
    /// `sinceImagePulled`: act on images not pulled for more than N days (transition only).
    SinceImagePulled(u32),
    /// `sinceImageTransitioned`: act on images archived more than N days ago (archive, expire only).
    SinceImageTransitioned(u32),
}

/// A rule's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// `expire`: delete the image with all its tags.
    Expire,
    /// `transition` with `targetStorageClass: archive`: move the image to archive storage.
    TransitionToArchive,
}

impl LifecyclePolicy {
    /// `text` as a policy, or every broken rule at once; fields are named under
    /// `field_prefix`, e.g. `lifecycle_policy.rules[2].selection.tagPatternList[0]`.
    pub fn parse(text: &str, field_prefix: &str) -> Result<Self, Vec<Violation>> {
        super::lifecycle::read_policy(text, field_prefix).map(|rules| Self { rules })
    }

    /// The rules, in the order they were written.
    pub fn rules(&self) -> &[LifecycleRule] {
        &self.rules
    }

    /// The rules in the order ECR applies them: lowest `rulePriority` first.
    pub fn rules_by_priority(&self) -> Vec<&LifecycleRule> {
        let mut rules: Vec<&LifecycleRule> = self.rules.iter().collect();
        rules.sort_by_key(|rule| rule.priority);
        rules
    }

    /// ECR's JSON for this policy (fields in ECR's order); `parse` reads it back equal.
    pub fn to_json(&self) -> String {
        let document = PolicyJson {
            rules: self.rules.iter().map(RuleJson::from).collect(),
        };
        serde_json::to_string(&document).expect("a lifecycle policy always serialises")
    }
}

impl TagSelection {
    /// Whether an image with `tags` meets this tag requirement.
    pub fn matches(&self, tags: &[String]) -> bool {
        match self {
            TagSelection::Any => true,
            TagSelection::Untagged => tags.is_empty(),
            TagSelection::Tagged(filter) => filter.matches(tags),
        }
    }
}

impl TagFilter {
    /// ECR's rule: every entry of the list matches at least one of `tags` (not necessarily the same one).
    pub fn matches(&self, tags: &[String]) -> bool {
        match self {
            TagFilter::Prefixes(prefixes) => prefixes
                .iter()
                .all(|prefix| tags.iter().any(|tag| tag.starts_with(prefix.as_str()))),
            TagFilter::Patterns(patterns) => patterns
                .iter()
                .all(|pattern| tags.iter().any(|tag| pattern.matches(tag))),
        }
    }
}

impl StorageClass {
    /// ECR's spelling: `standard` or `archive`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageClass::Standard => "standard",
            StorageClass::Archive => "archive",
        }
    }
}

impl CountCriterion {
    /// ECR's spelling of the `countType`.
    pub fn count_type(self) -> &'static str {
        match self {
            CountCriterion::ImageCountMoreThan(_) => "imageCountMoreThan",
            CountCriterion::SinceImagePushed(_) => "sinceImagePushed",
            CountCriterion::SinceImagePulled(_) => "sinceImagePulled",
            CountCriterion::SinceImageTransitioned(_) => "sinceImageTransitioned",
        }
    }

    /// The `countNumber`: images to keep, or days.
    pub fn count_number(self) -> u32 {
        match self {
            CountCriterion::ImageCountMoreThan(n)
            | CountCriterion::SinceImagePushed(n)
            | CountCriterion::SinceImagePulled(n)
            | CountCriterion::SinceImageTransitioned(n) => n,
        }
    }

    /// The `countUnit`: `days` for the `since*` types, none for `imageCountMoreThan`.
    pub fn count_unit(self) -> Option<&'static str> {
        match self {
            CountCriterion::ImageCountMoreThan(_) => None,
            _ => Some("days"),
        }
    }
}

/// The JSON document, fields in the order ECR's own examples use.
#[derive(Serialize)]
struct PolicyJson<'a> {
    rules: Vec<RuleJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleJson<'a> {
    rule_priority: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    selection: SelectionJson<'a>,
    action: ActionJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SelectionJson<'a> {
    tag_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_pattern_list: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_prefix_list: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_class: Option<&'static str>,
    count_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    count_unit: Option<&'static str>,
    count_number: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActionJson {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_storage_class: Option<&'static str>,
}

impl<'a> From<&'a LifecycleRule> for RuleJson<'a> {
    fn from(rule: &'a LifecycleRule) -> Self {
        let selection = &rule.selection;
        let (tag_status, patterns, prefixes) = match &selection.tags {
            TagSelection::Any => ("any", None, None),
            TagSelection::Untagged => ("untagged", None, None),
            TagSelection::Tagged(TagFilter::Patterns(list)) => (
                "tagged",
                Some(list.iter().map(TagPattern::as_str).collect()),
                None,
            ),
            TagSelection::Tagged(TagFilter::Prefixes(list)) => {
                ("tagged", None, Some(list.iter().map(String::as_str).collect()))
            }
        };
        let (kind, target_storage_class) = match rule.action {
            RuleAction::Expire => ("expire", None),
            RuleAction::TransitionToArchive => ("transition", Some(StorageClass::Archive.as_str())),
        };
        RuleJson {
            rule_priority: rule.priority,
            description: rule.description.as_deref(),
            selection: SelectionJson {
                tag_status,
                tag_pattern_list: patterns,
                tag_prefix_list: prefixes,
                // `standard` is ECR's default, so only `archive` needs writing.
                storage_class: (selection.storage_class == StorageClass::Archive)
                    .then_some(StorageClass::Archive.as_str()),
                count_type: selection.count.count_type(),
                count_unit: selection.count.count_unit(),
                count_number: selection.count.count_number(),
            },
            action: ActionJson {
                kind,
                target_storage_class,
            },
        }
    }
}
