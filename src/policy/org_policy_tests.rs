use std::collections::BTreeMap;

use super::*;
use crate::config::{AllowedValues, LifecycleTemplates};
use crate::domain::TagMutability;

const OWN: &str = "123456789012";

fn lifecycle(marker: &str) -> String {
    format!(
        r#"{{"rules":[{{"rulePriority":1,"description":"{marker}","selection":{{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":100}},"action":{{"type":"expire"}}}}]}}"#
    )
}

fn config() -> OrgPolicyConfig {
    let mut config = OrgPolicyConfig::default();
    config.naming.namespaces = vec!["payments".into(), "search".into()];
    config.tags.required = vec!["team".into()];
    config.tags.allowed = BTreeMap::from([(
        "env".into(),
        AllowedValues::Values {
            values: vec!["dev".into(), "prod".into()],
        },
    )]);
    config.settings.lifecycle_templates = LifecycleTemplates {
        default: Some(lifecycle("org")),
        namespaces: BTreeMap::from([("payments".into(), lifecycle("payments"))]),
    };
    config
}

fn policy() -> OrgPolicy {
    OrgPolicy::compile(&config()).expect("valid config")
}

fn own() -> AccountId {
    AccountId::parse(OWN).expect("valid")
}

fn request(name: &str) -> RepositoryRequest {
    RepositoryRequest {
        name: name.into(),
        tags: BTreeMap::from([("team".into(), "payments".into())]),
        ..RepositoryRequest::default()
    }
}

fn rule_ids(result: Result<RepositorySpec, Vec<Violation>>) -> Vec<&'static str> {
    result
        .expect_err("should be rejected")
        .iter()
        .map(|v| v.rule)
        .collect()
}

#[test]
fn minimal_request_gets_every_default() {
    let spec = policy()
        .plan_repository(&request("payments/api"), &own())
        .expect("valid");

    assert_eq!(spec.name.as_str(), "payments/api");
    assert_eq!(
        spec.tags.get("managed-by").map(String::as_str),
        Some("ecr-gateway")
    );
    assert_eq!(spec.tag_mutability, TagMutability::Immutable);
    assert!(spec.exclusion_filters.is_empty());
    assert!(spec.scan_on_push);
    assert_eq!(spec.encryption, Encryption::Aes256);
    assert_eq!(spec.lifecycle_policy, Some(lifecycle("payments")));
    assert_eq!(spec.repository_policy, None);
}

#[test]
fn namespace_without_a_template_gets_the_org_wide_lifecycle_policy() {
    let spec = policy()
        .plan_repository(&request("search/indexer"), &own())
        .expect("valid");

    assert_eq!(spec.lifecycle_policy, Some(lifecycle("org")));
}

#[test]
fn fully_specified_request_is_kept_as_asked() {
    let request = RepositoryRequest {
        tag_mutability: Some(TagMutability::ImmutableWithExclusion),
        exclusion_filters: vec!["latest".into()],
        scan_on_push: Some(true),
        encryption: Some(Encryption::Aes256),
        lifecycle_policy: Some(lifecycle("mine")),
        repository_policy: Some(format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{OWN}:root"}}}}]}}"#
        )),
        ..request("payments/api")
    };

    let spec = policy().plan_repository(&request, &own()).expect("valid");

    assert_eq!(spec.tag_mutability, TagMutability::ImmutableWithExclusion);
    assert_eq!(spec.exclusion_filters, ["latest"]);
    assert_eq!(spec.lifecycle_policy, request.lifecycle_policy);
    assert_eq!(spec.repository_policy, request.repository_policy);
}

#[test]
fn bad_name_missing_tag_and_mutable_tags_are_all_reported_at_once() {
    let request = RepositoryRequest {
        name: "Billing/API".into(),
        tag_mutability: Some(TagMutability::Mutable),
        ..RepositoryRequest::default()
    };

    let ids = rule_ids(policy().plan_repository(&request, &own()));

    assert_eq!(
        ids,
        [
            "ecr.repository-name.grammar",
            "naming.namespace",
            "tags.required",
            "settings.tag-mutability"
        ]
    );
}

#[test]
fn every_area_reports_in_one_call() {
    let request = RepositoryRequest {
        name: "payments".into(),
        tags: BTreeMap::from([("env".into(), "staging".into())]),
        tag_mutability: Some(TagMutability::MutableWithExclusion),
        exclusion_filters: vec![],
        scan_on_push: Some(false),
        encryption: Some(Encryption::Kms { key: None }),
        lifecycle_policy: Some("{}".into()),
        repository_policy: Some(r#"{"Statement":{"Principal":"*"}}"#.into()),
    };

    let ids = rule_ids(policy().plan_repository(&request, &own()));

    assert_eq!(
        ids,
        [
            "naming.pattern",
            "tags.allowed-values",
            "tags.required",
            "settings.tag-mutability",
            "settings.exclusion-filter-count",
            "settings.scan-on-push",
            "settings.encryption",
            "lifecycle-policy.length",
            "lifecycle-policy.json",
            "repository-policy.wildcard-principal",
        ]
    );
}

#[test]
fn violations_name_the_grpc_fields() {
    let request = RepositoryRequest {
        exclusion_filters: vec!["no spaces".into()],
        tag_mutability: Some(TagMutability::ImmutableWithExclusion),
        tags: BTreeMap::new(),
        ..request("payments/api")
    };

    let violations = policy().plan_repository(&request, &own()).expect_err("rejected");

    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            r#"settings.tags["team"]"#,
            "settings.image_tag_mutability_exclusion_filters[0]"
        ]
    );
}

#[test]
fn every_config_problem_is_reported_at_once_naming_its_key() {
    let mut config = config();
    config.naming.pattern = "(".into();
    config.naming.namespaces.push("Not Valid".into());
    config.settings.max_exclusion_filters = 6;
    config.settings.encryption.encryption_type = crate::policy::EncryptionType::Kms;

    let problems = OrgPolicy::compile(&config).expect_err("invalid");

    let keys: Vec<_> = problems.iter().filter_map(|p| p.split(':').next()).collect();
    assert_eq!(
        keys,
        [
            "policy.naming.namespaces[2]",
            "policy.naming.pattern",
            "policy.settings.max_exclusion_filters",
            "policy.settings.encryption.kms_key",
        ]
    );
}

#[test]
fn compiled_policy_keeps_its_config() {
    assert_eq!(policy().config(), &config());
}

#[test]
fn default_config_compiles() {
    assert!(OrgPolicy::compile(&OrgPolicyConfig::default()).is_ok());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn team_tags() -> BTreeMap<String, String> {
        BTreeMap::from([("team".into(), "payments".into())])
    }

    proptest! {
        #[test]
        fn valid_names_in_a_team_namespace_always_plan(rest in "[a-z0-9]{1,8}(?:[-_.][a-z0-9]{1,8}){0,2}(?:/[a-z0-9]{1,8}){0,2}") {
            let request = RepositoryRequest { tags: team_tags(), ..request(&format!("payments/{rest}")) };

            let spec = policy().plan_repository(&request, &own());

            prop_assert!(spec.is_ok(), "{:?}", spec);
        }

        #[test]
        fn planning_never_panics_and_rejections_always_explain(
            name in "\\PC{0,40}",
            tags in prop::collection::btree_map("\\PC{0,10}", "\\PC{0,10}", 0..4),
            filters in prop::collection::vec("\\PC{0,6}", 0..3),
            lifecycle_policy in prop::option::of("\\PC{0,20}"),
            repository_policy in prop::option::of("\\PC{0,20}"),
        ) {
            let request = RepositoryRequest {
                name, tags, exclusion_filters: filters, lifecycle_policy, repository_policy,
                ..RepositoryRequest::default()
            };

            if let Err(violations) = policy().plan_repository(&request, &own()) {
                prop_assert!(!violations.is_empty());
                prop_assert!(violations.iter().all(|v| !v.description.is_empty()));
            }
        }
    }
}
