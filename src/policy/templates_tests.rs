use std::collections::BTreeMap;

use super::*;
use crate::config::{LifecycleTemplates, OrgPolicyConfig};
use crate::domain::TagMutability;

const TEMPLATE: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged","selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":10},"action":{"type":"expire"}}]}"#;

fn policy(namespaces: &[&str]) -> OrgPolicy {
    let mut config = OrgPolicyConfig::default();
    config.naming.namespaces = namespaces.iter().map(|n| (*n).to_owned()).collect();
    config.settings.allowed_tag_mutability = vec![TagMutability::ImmutableWithExclusion];
    config.settings.default_tag_mutability = TagMutability::ImmutableWithExclusion;
    config.settings.allowed_exclusion_filters = vec!["latest".into()];
    config.settings.lifecycle_templates = LifecycleTemplates {
        default: None,
        namespaces: BTreeMap::from([("payments".into(), TEMPLATE.into())]),
    };
    OrgPolicy::compile(&config).expect("valid config")
}

#[test]
fn one_template_per_namespace_with_the_policys_defaults() {
    let templates = policy(&["payments", "search"]).creation_templates();

    let prefixes: Vec<&str> = templates.iter().map(|t| t.prefix.as_str()).collect();
    assert_eq!(prefixes, ["payments", "search"]);
    let payments = &templates[0];
    assert_eq!(
        payments.applied_for,
        ["CREATE_ON_PUSH", "PULL_THROUGH_CACHE", "REPLICATION"]
    );
    assert_eq!(payments.tag_mutability, TagMutability::ImmutableWithExclusion);
    assert_eq!(payments.exclusion_filters, ["latest"]);
    assert_eq!(
        payments.tags.get("managed-by").map(String::as_str),
        Some("ecr-gateway")
    );
    assert_eq!(payments.lifecycle_policy.as_deref(), Some(TEMPLATE));
    assert_eq!(
        templates[1].lifecycle_policy, None,
        "search has no lifecycle template"
    );
}

#[test]
fn a_policy_without_namespaces_has_one_root_template() {
    let templates = policy(&[]).creation_templates();

    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].prefix, ROOT);
}

#[test]
fn templates_are_missing_drifted_in_sync_or_unmanaged() {
    let policy = policy(&["payments", "search"]);
    let desired = policy.creation_templates();
    let mut drifted = desired[1].clone();
    drifted.tag_mutability = TagMutability::Mutable;
    drifted.description = "changed by hand".into();
    let mut unmanaged = desired[0].clone();
    unmanaged.prefix = "legacy".into();
    let actual = vec![desired[0].clone(), drifted, unmanaged];

    let plans = policy.plan_templates(&actual);

    let states: Vec<(&str, &TemplateState)> = plans.iter().map(|p| (p.prefix.as_str(), &p.state)).collect();
    assert_eq!(
        states,
        [
            ("legacy", &TemplateState::Unmanaged),
            ("payments", &TemplateState::InSync),
            ("search", &TemplateState::Drifted(vec!["image_tag_mutability"])),
        ]
    );
    assert!(
        plans
            .iter()
            .filter(|p| p.needs_write())
            .all(|p| p.prefix == "search")
    );
    assert_eq!(policy.plan_templates(&[])[0].state, TemplateState::Missing);
}

#[test]
fn lifecycle_policies_compare_as_documents() {
    let policy = policy(&["payments"]);
    let mut reformatted = policy.creation_templates()[0].clone();
    reformatted.lifecycle_policy = Some(
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(TEMPLATE).unwrap()).unwrap(),
    );

    assert_eq!(
        policy.plan_templates(&[reformatted])[0].state,
        TemplateState::InSync
    );
}

#[test]
fn pull_through_rules_must_create_repositories_in_a_managed_namespace() {
    let policy = policy(&["payments", "mirror"]);
    let rule = |prefix: &str| PullThroughRule {
        ecr_repository_prefix: prefix.into(),
        upstream_registry_url: "registry-1.docker.io".into(),
        upstream_registry: "docker-hub".into(),
        upstream_repository_prefix: String::new(),
        credential_arn: String::new(),
    };

    assert_eq!(policy.judge_pull_through(&rule("mirror/docker-hub")), None);
    assert_eq!(policy.judge_pull_through(&rule("mirror")), None);
    let outside = policy.judge_pull_through(&rule("docker-hub")).expect("outside");
    assert_eq!(outside.rule, "pull-through.namespace");
    assert!(policy.judge_pull_through(&rule(ROOT)).is_some());
    assert_eq!(
        super::super::OrgPolicy::compile(&OrgPolicyConfig::default())
            .unwrap()
            .judge_pull_through(&rule("anything")),
        None
    );
}
