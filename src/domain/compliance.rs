//! What compliance reports: the org rules a repository breaks as it stands in
//! ECR, and the settings that changed there without the gateway (drift).

use super::RepositoryState;

/// One org rule one repository breaks (policy's judgement, stored by the
/// compliance evaluation and listed by `ListPolicyViolations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFinding {
    /// The rule's stable id (a [`super::Violation`]'s rule, e.g. `tags.required`).
    pub rule: String,
    /// The setting, named as in a repository request (`settings.tags["team"]`).
    pub field: String,
    /// What the repository has ("" when absent).
    pub actual: String,
    /// What the rule wants: a value, or the requirement in words.
    pub wanted: String,
    /// True when the gateway can change the setting in ECR.
    pub mendable: bool,
    /// What is wrong and how to mend it.
    pub description: String,
}

/// One setting of a repository that differs between two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// The setting, named as in a repository request.
    pub field: &'static str,
    /// Its value before.
    pub before: String,
    /// Its value now.
    pub after: String,
}

/// The settings a repository listing reads (tag mutability, exclusion
/// filters, scan on push, encryption, tags) that differ from `before` to
/// `after`; policies are compared with [`policy_changes`].
pub fn setting_changes(before: &RepositoryState, after: &RepositoryState) -> Vec<SettingChange> {
    let mut changes = Vec::new();
    let mut compare = |field: &'static str, before: String, after: String| {
        if before != after {
            changes.push(SettingChange { field, before, after });
        }
    };
    compare(
        "settings.image_tag_mutability",
        before.tag_mutability.to_string(),
        after.tag_mutability.to_string(),
    );
    compare(
        "settings.image_tag_mutability_exclusion_filters",
        before.exclusion_filters.join(", "),
        after.exclusion_filters.join(", "),
    );
    compare(
        "settings.scan_on_push",
        before.scan_on_push.to_string(),
        after.scan_on_push.to_string(),
    );
    compare(
        "settings.encryption",
        before.encryption.to_string(),
        after.encryption.to_string(),
    );
    compare("settings.tags", tags_text(before), tags_text(after));
    changes
}

/// The lifecycle and repository policies that differ between two readings
/// (as JSON documents where both parse, so ECR's own formatting is no
/// change; otherwise as text; "" stands for none).
pub fn policy_changes(
    before: (Option<&str>, Option<&str>),
    after: (Option<&str>, Option<&str>),
) -> Vec<SettingChange> {
    let mut changes = Vec::new();
    for (field, was, now) in [
        ("settings.lifecycle_policy", before.0, after.0),
        ("settings.repository_policy", before.1, after.1),
    ] {
        if !same_document(was, now) {
            changes.push(SettingChange {
                field,
                before: was.unwrap_or_default().to_owned(),
                after: now.unwrap_or_default().to_owned(),
            });
        }
    }
    changes
}

/// Two policy documents (lifecycle, repository, template) are the same when
/// both are absent, or their texts or the JSON they parse to are equal.
pub fn same_document(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) if a != b => {
            let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
            matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
        }
        (a, b) => a == b,
    }
}

fn tags_text(state: &RepositoryState) -> String {
    let pairs: Vec<String> = state.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Encryption, RepositoryName, TagMutability};

    fn state() -> RepositoryState {
        RepositoryState {
            name: RepositoryName::parse("payments/api").unwrap(),
            arn: "arn".into(),
            uri: "uri".into(),
            created_at: None,
            tag_mutability: TagMutability::Immutable,
            exclusion_filters: Vec::new(),
            scan_on_push: true,
            encryption: Encryption::Aes256,
            tags: [("team".to_owned(), "payments".to_owned())].into_iter().collect(),
            lifecycle_policy: None,
            repository_policy: None,
        }
    }

    #[test]
    fn an_unchanged_repository_has_no_changes() {
        assert!(setting_changes(&state(), &state()).is_empty());
    }

    #[test]
    fn each_changed_setting_is_named_with_both_values() {
        let mut after = state();
        after.scan_on_push = false;
        after.tag_mutability = TagMutability::Mutable;
        after.tags.insert("owner".into(), "someone".into());

        let changes = setting_changes(&state(), &after);

        let fields: Vec<&str> = changes.iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "settings.image_tag_mutability",
                "settings.scan_on_push",
                "settings.tags"
            ]
        );
        assert_eq!(changes[1].before, "true");
        assert_eq!(changes[1].after, "false");
        assert_eq!(changes[2].after, "owner=someone, team=payments");
    }

    #[test]
    fn policies_compare_as_text_with_none_as_empty() {
        let changes = policy_changes((None, Some("{}")), (Some("{\"rules\":[]}"), Some("{}")));

        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "settings.lifecycle_policy");
        assert_eq!(changes[0].before, "");
    }

    #[test]
    fn a_policy_reformatted_by_ecr_is_no_change() {
        let changes = policy_changes((Some("{\"a\": [1, 2]}"), None), (Some("{\"a\":[1,2]}"), None));

        assert!(changes.is_empty(), "{changes:?}");
    }
}
