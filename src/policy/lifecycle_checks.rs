//! A rule's action and the checks of a lifecycle policy that span a rule's parts or several rules: count units, storage classes, actions, priorities, the order of `any` rules, one untagged rule per storage class, distinct prefix sets.

use super::*;

/// `countUnit` is `days` for the `since*` types and absent for `imageCountMoreThan`.
pub(super) fn count_unit_fits(
    object: &Map<String, Value>,
    count_type: &str,
    path: &str,
    problems: &mut Problems,
) -> bool {
    let field = format!("{path}.countUnit");
    let problem = match (count_type, object.get("countUnit")) {
        ("imageCountMoreThan", None) => return true,
        ("imageCountMoreThan", Some(_)) => {
            "imageCountMoreThan counts images and takes no countUnit; remove it"
        }
        (_, None) => "the since* count types need `\"countUnit\": \"days\"`",
        (_, Some(Value::String(unit))) if unit == "days" => return true,
        (_, Some(_)) => "the only countUnit ECR accepts is `days`",
    };
    problems.add(field, "lifecycle-policy.count-unit", problem);
    false
}

/// `sinceImageTransitioned` selects `archive` images; every other count type `standard` ones.
pub(super) fn storage_class_fits(
    storage_class: &Field<StorageClass>,
    count_type: &str,
    path: &str,
    problems: &mut Problems,
) -> bool {
    let transitioned = count_type == "sinceImageTransitioned";
    let problem = match (transitioned, storage_class) {
        (true, Field::Present(StorageClass::Archive)) | (false, Field::Absent) => return true,
        (false, Field::Present(StorageClass::Standard)) | (_, Field::Invalid) => return true,
        (true, _) => "sinceImageTransitioned selects archived images: add `\"storageClass\": \"archive\"`",
        (false, Field::Present(StorageClass::Archive)) => {
            "only sinceImageTransitioned selects archived images; with this countType use `standard` or omit it"
        }
    };
    problems.add(
        format!("{path}.storageClass"),
        "lifecycle-policy.storage-class",
        problem,
    );
    false
}

pub(super) fn read_action(
    object: &Map<String, Value>,
    path: &str,
    problems: &mut Problems,
) -> Option<RuleAction> {
    problems.unknown_fields(object, ACTION_FIELDS, path);
    let kind = read_required_enum(object, "type", path, ACTION_TYPES, problems);
    let target = read_enum(
        object,
        "targetStorageClass",
        path,
        TARGET_STORAGE_CLASSES,
        problems,
    );
    let field = format!("{path}.targetStorageClass");
    let rule = "lifecycle-policy.target-storage-class";
    match (kind?, target) {
        ("expire", Field::Absent) => Some(RuleAction::Expire),
        ("expire", Field::Present(_)) => {
            problems.add(
                field,
                rule,
                "only a `transition` action takes a targetStorageClass",
            );
            None
        }
        ("transition", Field::Present(_)) => Some(RuleAction::TransitionToArchive),
        ("transition", Field::Absent) => {
            problems.add(
                field,
                rule,
                "a `transition` action needs `\"targetStorageClass\": \"archive\"`",
            );
            None
        }
        _ => None,
    }
}

/// `sinceImagePulled` only transitions; `sinceImageTransitioned` only expires, after 90 days.
pub(super) fn count_action_problems(
    count: CountCriterion,
    action: RuleAction,
    path: &str,
    problems: &mut Problems,
) {
    let field = format!("{path}.selection.countType");
    match (count, action) {
        (CountCriterion::SinceImagePulled(_), RuleAction::Expire) => problems.add(
            field,
            "lifecycle-policy.count-type-action",
            "sinceImagePulled only works with a `transition` action; to delete by pull activity, \
             transition with sinceImagePulled, then expire with sinceImageTransitioned",
        ),
        (CountCriterion::SinceImageTransitioned(_), RuleAction::TransitionToArchive) => problems.add(
            field,
            "lifecycle-policy.count-type-action",
            "sinceImageTransitioned only works with an `expire` action",
        ),
        (CountCriterion::SinceImageTransitioned(days), RuleAction::Expire) if days < MIN_ARCHIVED_DAYS => {
            problems.add(
                format!("{path}.selection.countNumber"),
                "lifecycle-policy.archive-minimum",
                format!(
                    "archived images stay at least {MIN_ARCHIVED_DAYS} days; ECR refuses rules that \
                     delete them after {days}"
                ),
            )
        }
        _ => {}
    }
}

pub(super) fn cross_rule_problems(drafts: &[RuleDraft], problems: &mut Problems) {
    unique_priorities(drafts, problems);
    any_rules_last(drafts, problems);
    one_untagged_rule_per_class(drafts, problems);
    unique_prefix_sets(drafts, problems);
}

pub(super) fn unique_priorities(drafts: &[RuleDraft], problems: &mut Problems) {
    let mut first_use: HashMap<u32, usize> = HashMap::new();
    for (index, draft) in drafts.iter().enumerate() {
        let Some(priority) = draft.priority else { continue };
        match first_use.get(&priority) {
            Some(first) => problems.add(
                format!("{}.rulePriority", draft.path),
                "lifecycle-policy.priority-unique",
                format!("rulePriority {priority} is already used by rules[{first}]; each rule needs its own"),
            ),
            None => {
                first_use.insert(priority, index);
            }
        }
    }
}

/// An `any` rule must have the highest priority number of the rules selecting its storage class
/// (AWS's own example pairs a `standard` `any` rule at 1 with an `archive` `any` rule at 2).
pub(super) fn any_rules_last(drafts: &[RuleDraft], problems: &mut Problems) {
    let mut highest: HashMap<StorageClass, u32> = HashMap::new();
    for draft in drafts {
        if let (Some(class), Some(priority)) = (draft.storage_class, draft.priority) {
            let entry = highest.entry(class).or_insert(priority);
            *entry = (*entry).max(priority);
        }
    }
    for draft in drafts {
        let (Some(TagSelection::Any), Some(class), Some(priority)) =
            (&draft.tags, draft.storage_class, draft.priority)
        else {
            continue;
        };
        let last = highest.get(&class).copied().unwrap_or(priority);
        if priority < last {
            problems.add(
                format!("{}.rulePriority", draft.path),
                "lifecycle-policy.any-last",
                format!(
                    "a tagStatus `any` rule must have the highest rulePriority of the `{}` rules; \
                     {priority} is below {last}",
                    class.as_str()
                ),
            );
        }
    }
}

pub(super) fn one_untagged_rule_per_class(drafts: &[RuleDraft], problems: &mut Problems) {
    let mut first_use: HashMap<StorageClass, usize> = HashMap::new();
    for (index, draft) in drafts.iter().enumerate() {
        let (Some(TagSelection::Untagged), Some(class)) = (&draft.tags, draft.storage_class) else {
            continue;
        };
        match first_use.get(&class) {
            Some(first) => problems.add(
                format!("{}.selection.tagStatus", draft.path),
                "lifecycle-policy.untagged-unique",
                format!(
                    "rules[{first}] already selects untagged `{}` images; ECR allows one such rule",
                    class.as_str()
                ),
            ),
            None => {
                first_use.insert(class, index);
            }
        }
    }
}

/// No two rules of one storage class may carry the same set of tag prefixes.
pub(super) fn unique_prefix_sets(drafts: &[RuleDraft], problems: &mut Problems) {
    let mut first_use: HashMap<(StorageClass, BTreeSet<&str>), usize> = HashMap::new();
    for (index, draft) in drafts.iter().enumerate() {
        let (Some(TagSelection::Tagged(TagFilter::Prefixes(prefixes))), Some(class)) =
            (&draft.tags, draft.storage_class)
        else {
            continue;
        };
        let key = (class, prefixes.iter().map(String::as_str).collect());
        match first_use.get(&key) {
            Some(first) => problems.add(
                format!("{}.selection.tagPrefixList", draft.path),
                "lifecycle-policy.prefixes-unique",
                format!("rules[{first}] already has this set of tag prefixes; ECR needs each set once"),
            ),
            None => {
                first_use.insert(key, index);
            }
        }
    }
}
