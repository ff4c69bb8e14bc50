use std::collections::BTreeMap;

use super::*;

/// A valid policy of `marker` rules, padded past ECR's 100-character minimum.
fn policy(marker: &str) -> String {
    format!(
        r#"{{"rules":[{{"rulePriority":1,"description":"{marker}","selection":{{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14}},"action":{{"type":"expire"}}}}]}}"#
    )
}

fn templates() -> LifecycleTemplates {
    LifecycleTemplates {
        default: Some(policy("org")),
        namespaces: BTreeMap::from([("payments".to_owned(), policy("payments"))]),
    }
}

#[test]
fn namespace_template_beats_the_org_wide_one() {
    assert_eq!(plan(&templates(), "payments", None), Ok(Some(policy("payments"))));
    assert_eq!(plan(&templates(), "search", None), Ok(Some(policy("org"))));
}

#[test]
fn blank_request_gets_the_template() {
    assert_eq!(plan(&templates(), "search", Some("  ")), Ok(Some(policy("org"))));
}

#[test]
fn no_template_and_no_request_means_no_policy() {
    assert_eq!(plan(&LifecycleTemplates::default(), "search", None), Ok(None));
}

#[test]
fn requested_policy_beats_the_templates() {
    assert_eq!(
        plan(&templates(), "payments", Some(&policy("mine"))),
        Ok(Some(policy("mine")))
    );
}

#[test]
fn invalid_json_is_rejected_with_the_parser_message() {
    let text = format!("{} trailing", policy("x"));

    let violations = violations(&text);

    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].rule, "lifecycle-policy.json");
    assert!(
        violations[0].description.contains("not valid JSON"),
        "{}",
        violations[0].description
    );
}

#[test]
fn object_without_rules_array_is_rejected() {
    let text = format!(r#"{{"rules": {{}}, "padding": "{}"}}"#, "x".repeat(100));

    assert!(violations(&text)[0].description.contains("no `rules` array"));
}

#[test]
fn short_non_object_policy_breaks_both_rules() {
    let rules: Vec<_> = violations("[]").iter().map(|v| v.rule).collect();

    assert_eq!(rules, ["lifecycle-policy.length", "lifecycle-policy.json"]);
}

#[test]
fn policy_over_ecr_limit_is_rejected() {
    let text = format!(r#"{{"rules": [], "padding": "{}"}}"#, "x".repeat(MAX_LENGTH));

    assert_eq!(violations(&text)[0].rule, "lifecycle-policy.length");
}

#[test]
fn bad_templates_and_unknown_namespaces_are_config_errors() {
    let templates = LifecycleTemplates {
        default: Some("{}".to_owned()),
        namespaces: BTreeMap::from([("billing".to_owned(), policy("b"))]),
    };
    let naming = NamingConfig {
        namespaces: vec!["payments".to_owned()],
        ..NamingConfig::default()
    };

    let problems = config_problems(&templates, &naming);

    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[2].contains("`billing` is not in policy.naming.namespaces"),
        "{problems:?}"
    );
}
