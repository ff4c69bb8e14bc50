use super::*;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rule_ids(violations: &[Violation]) -> Vec<&'static str> {
    violations.iter().map(|v| v.rule).collect()
}

#[test]
fn unset_mutability_gets_the_default() {
    let config = SettingsConfig::default();

    assert_eq!(effective_mutability(&config, None), TagMutability::Immutable);
}

#[test]
fn mutable_tags_are_rejected_listing_the_allowed_mutabilities() {
    let violation =
        mutability_violation(&SettingsConfig::default(), TagMutability::Mutable).expect("rejected");

    assert_eq!(violation.field, "settings.image_tag_mutability");
    assert!(
        violation
            .description
            .contains("`IMMUTABLE`, `IMMUTABLE_WITH_EXCLUSION`"),
        "{}",
        violation.description
    );
}

#[test]
fn filters_with_a_mutability_without_exclusions_are_rejected() {
    let violations = exclusion_filter_violations(
        &SettingsConfig::default(),
        TagMutability::Immutable,
        &strings(&["latest"]),
    );

    assert_eq!(rule_ids(&violations), ["settings.exclusion-filter-count"]);
    assert!(violations[0].description.contains("takes no exclusion filters"));
}

#[test]
fn with_exclusion_mutability_without_filters_needs_at_least_one() {
    let violations = exclusion_filter_violations(
        &SettingsConfig::default(),
        TagMutability::ImmutableWithExclusion,
        &[],
    );

    assert_eq!(rule_ids(&violations), ["settings.exclusion-filter-count"]);
    assert!(violations[0].description.contains("at least 1"));
}

#[test]
fn more_filters_than_the_maximum_are_rejected() {
    let config = SettingsConfig {
        max_exclusion_filters: 2,
        ..SettingsConfig::default()
    };

    let violations = exclusion_filter_violations(
        &config,
        TagMutability::ImmutableWithExclusion,
        &strings(&["a", "b", "c"]),
    );

    assert_eq!(rule_ids(&violations), ["settings.exclusion-filter-count"]);
}

#[test]
fn filter_outside_ecr_grammar_is_rejected_with_its_index() {
    let violations = exclusion_filter_violations(
        &SettingsConfig::default(),
        TagMutability::ImmutableWithExclusion,
        &strings(&["ok", "no/slash"]),
    );

    assert_eq!(rule_ids(&violations), ["settings.exclusion-filter-grammar"]);
    assert_eq!(
        violations[0].field,
        "settings.image_tag_mutability_exclusion_filters[1]"
    );
}

#[test]
fn filter_not_in_the_allow_list_is_rejected_listing_it() {
    let config = SettingsConfig {
        allowed_exclusion_filters: strings(&["latest", "dev-*"]),
        ..SettingsConfig::default()
    };

    let violations = exclusion_filter_violations(
        &config,
        TagMutability::ImmutableWithExclusion,
        &strings(&["dev-*", "prod-*"]),
    );

    assert_eq!(rule_ids(&violations), ["settings.exclusion-filter-allowed"]);
    assert!(violations[0].description.contains("`latest`, `dev-*`"));
}

#[test]
fn unset_scan_on_push_follows_the_requirement() {
    let required = SettingsConfig::default();
    let optional = SettingsConfig {
        require_scan_on_push: false,
        ..SettingsConfig::default()
    };

    assert_eq!(scan_on_push(&required, None), Ok(true));
    assert_eq!(scan_on_push(&optional, None), Ok(false));
    assert_eq!(scan_on_push(&optional, Some(true)), Ok(true));
}

#[test]
fn scan_on_push_off_is_rejected_when_required() {
    let violation = scan_on_push(&SettingsConfig::default(), Some(false)).expect_err("rejected");

    assert_eq!(
        (violation.field.as_str(), violation.rule),
        ("settings.scan_on_push", "settings.scan-on-push")
    );
}

#[test]
fn default_config_has_no_problems() {
    assert!(config_problems(&SettingsConfig::default()).is_empty());
}

#[test]
fn more_than_five_filters_and_a_disallowed_default_are_config_errors() {
    let config = SettingsConfig {
        max_exclusion_filters: 6,
        default_tag_mutability: TagMutability::Mutable,
        allowed_exclusion_filters: strings(&["bad filter"]),
        ..SettingsConfig::default()
    };

    let problems = config_problems(&config);

    assert!(
        problems[0].starts_with("policy.settings.default_tag_mutability: MUTABLE"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("policy.settings.max_exclusion_filters: 6"),
        "{problems:?}"
    );
    assert!(
        problems[2].starts_with("policy.settings.allowed_exclusion_filters[0]"),
        "{problems:?}"
    );
}

#[test]
fn zero_filters_with_an_exclusion_mutability_allowed_is_a_config_error() {
    let config = SettingsConfig {
        max_exclusion_filters: 0,
        ..SettingsConfig::default()
    };

    assert_eq!(config_problems(&config).len(), 1);
}

#[test]
fn empty_mutability_list_is_a_config_error() {
    let config = SettingsConfig {
        allowed_tag_mutability: vec![],
        ..SettingsConfig::default()
    };

    assert!(config_problems(&config)[0].starts_with("policy.settings.allowed_tag_mutability"));
}
