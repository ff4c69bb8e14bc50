//! Lifecycle policy rules: a JSON object with a `rules` array, within ECR's size limits.
//!
//! The full lifecycle model (priorities, selections, actions) comes later.

use serde_json::Value;

use super::config::{LifecycleTemplates, NamingConfig};
use crate::domain::Violation;

/// Field of every lifecycle violation.
const FIELD: &str = "settings.lifecycle_policy";
/// ECR's shortest lifecycle policy text.
const MIN_LENGTH: usize = 100;
/// ECR's longest lifecycle policy text.
const MAX_LENGTH: usize = 30_720;

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

/// `lifecycle-policy.json` and `lifecycle-policy.length` problems of `text`.
pub(super) fn violations(text: &str) -> Vec<Violation> {
    let mut violations: Vec<Violation> = length_violation(text).into_iter().collect();
    violations.extend(json_violation(text));
    violations
}

fn length_violation(text: &str) -> Option<Violation> {
    let length = text.chars().count();
    (!(MIN_LENGTH..=MAX_LENGTH).contains(&length)).then(|| {
        Violation::new(
            FIELD,
            "lifecycle-policy.length",
            format!("the lifecycle policy has {length} characters; ECR accepts {MIN_LENGTH} to {MAX_LENGTH}"),
        )
    })
}

fn json_violation(text: &str) -> Option<Violation> {
    let problem = match serde_json::from_str::<Value>(text) {
        Err(error) => format!("the lifecycle policy is not valid JSON: {error}"),
        Ok(Value::Object(policy)) if policy.get("rules").is_some_and(Value::is_array) => {
            return None;
        }
        Ok(Value::Object(_)) => {
            "the lifecycle policy has no `rules` array; write `{\"rules\": [...]}`".to_owned()
        }
        Ok(_) => "the lifecycle policy must be a JSON object like `{\"rules\": [...]}`".to_owned(),
    };
    Some(Violation::new(FIELD, "lifecycle-policy.json", problem))
}

/// Problems in the templates: each must pass the rules, and name a configured namespace.
pub(super) fn config_problems(templates: &LifecycleTemplates, naming: &NamingConfig) -> Vec<String> {
    let key = "policy.settings.lifecycle_templates";
    let mut problems: Vec<String> = templates
        .default
        .iter()
        .flat_map(|text| violations(text))
        .map(|v| format!("{key}.default: {}", v.description))
        .collect();
    for (namespace, text) in &templates.namespaces {
        problems.extend(
            violations(text)
                .into_iter()
                .map(|v| format!("{key}.namespaces.{namespace}: {}", v.description)),
        );
        if !naming.namespaces.is_empty() && !naming.namespaces.contains(namespace) {
            problems.push(format!(
                "{key}.namespaces.{namespace}: `{namespace}` is not in policy.naming.namespaces"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
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
}
