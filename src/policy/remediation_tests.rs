use std::collections::BTreeMap;

use super::*;
use crate::config::{LifecycleTemplates, OrgPolicyConfig};
use crate::domain::{Encryption, RepositoryName, TagMutability};

const OWN: &str = "123456789012";
const TEMPLATE: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged","selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":10},"action":{"type":"expire"}}]}"#;

fn policy() -> OrgPolicy {
    let mut config = OrgPolicyConfig::default();
    config.naming.namespaces = vec!["payments".into()];
    config.tags.required = vec!["team".into()];
    config.settings.require_scan_on_push = true;
    config.settings.allowed_tag_mutability =
        vec![TagMutability::Immutable, TagMutability::ImmutableWithExclusion];
    config.settings.default_tag_mutability = TagMutability::Immutable;
    config.settings.allowed_exclusion_filters = vec!["latest".into()];
    config.settings.lifecycle_templates = LifecycleTemplates {
        default: Some(TEMPLATE.into()),
        namespaces: BTreeMap::new(),
    };
    OrgPolicy::compile(&config).expect("valid config")
}

/// A repository as the AWS CLI makes it: no tags, mutable, no scanning, no policies.
fn made_by_cli(name: &str) -> RepositoryState {
    RepositoryState {
        name: RepositoryName::parse(name).unwrap(),
        arn: String::new(),
        uri: String::new(),
        created_at: None,
        tag_mutability: TagMutability::Mutable,
        exclusion_filters: Vec::new(),
        scan_on_push: false,
        encryption: Encryption::Aes256,
        tags: BTreeMap::from([("owner".into(), "someone".into())]),
        lifecycle_policy: None,
        repository_policy: None,
    }
}

fn own() -> AccountId {
    AccountId::parse(OWN).unwrap()
}

fn fields(remedy: &Remedy) -> Vec<&str> {
    remedy.mends.iter().map(|m| m.field.as_str()).collect()
}

#[test]
fn a_cli_repository_is_mended_setting_by_setting_and_adopted() {
    let given = BTreeMap::from([("team".to_owned(), "payments".to_owned())]);

    let remedy = policy().remedy(
        &made_by_cli("payments/legacy"),
        &own(),
        &given,
        &[],
        PoliciesRead::Yes,
    );

    assert_eq!(
        fields(&remedy),
        [
            "settings.image_tag_mutability",
            "settings.scan_on_push",
            "settings.lifecycle_policy",
            "settings.tags[\"managed-by\"]",
            "settings.tags[\"team\"]",
        ]
    );
    assert_eq!(remedy.left, Vec::new());
    let spec = &remedy.spec;
    assert_eq!(spec.tag_mutability, TagMutability::Immutable);
    assert!(spec.scan_on_push);
    assert_eq!(spec.lifecycle_policy.as_deref(), Some(TEMPLATE));
    // Nothing the repository had is taken away.
    assert_eq!(spec.tags.get("owner").map(String::as_str), Some("someone"));
    assert_eq!(
        spec.tags.get("managed-by").map(String::as_str),
        Some("ecr-gateway")
    );
    assert_eq!(remedy.mends[3].rules, ["tags.default"]);
    assert_eq!(remedy.mends[4].rules, ["tags.required"]);
}

#[test]
fn a_mended_repository_needs_nothing_more() {
    let given = BTreeMap::from([("team".to_owned(), "payments".to_owned())]);
    let policy = policy();
    let first = policy.remedy(
        &made_by_cli("payments/legacy"),
        &own(),
        &given,
        &[],
        PoliciesRead::Yes,
    );
    let spec = first.spec;
    let mended = RepositoryState {
        tags: spec.tags,
        tag_mutability: spec.tag_mutability,
        exclusion_filters: spec.exclusion_filters,
        scan_on_push: spec.scan_on_push,
        lifecycle_policy: spec.lifecycle_policy,
        repository_policy: spec.repository_policy,
        ..made_by_cli("payments/legacy")
    };

    let again = policy.remedy(&mended, &own(), &given, &[], PoliciesRead::Yes);

    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_required_tag_without_a_value_and_unmendable_rules_are_left() {
    let mut state = made_by_cli("legacy-app");
    state.encryption = Encryption::Kms { key: None };

    let remedy = policy().remedy(&state, &own(), &BTreeMap::new(), &[], PoliciesRead::Yes);

    let left: Vec<&str> = remedy.left.iter().map(|f| f.rule.as_str()).collect();
    assert!(left.contains(&"tags.required"), "{left:?}");
    assert!(left.contains(&"naming.namespace"), "{left:?}");
    assert!(left.contains(&"settings.encryption"), "{left:?}");
    assert_eq!(
        remedy.spec.encryption,
        Encryption::Kms { key: None },
        "encryption is never touched"
    );
    assert_eq!(remedy.spec.name.as_str(), "legacy-app");
}

#[test]
fn only_the_named_rules_are_mended() {
    let given = BTreeMap::from([("team".to_owned(), "payments".to_owned())]);

    let remedy = policy().remedy(
        &made_by_cli("payments/legacy"),
        &own(),
        &given,
        &["settings.scan-on-push".to_owned()],
        PoliciesRead::Yes,
    );

    assert_eq!(
        fields(&remedy),
        ["settings.scan_on_push", "settings.tags[\"managed-by\"]"]
    );
    assert!(
        !remedy
            .spec
            .tag_mutability
            .is_immutable("v1", &Vec::<String>::new())
    );
    assert!(remedy.left.iter().any(|f| f.rule == "settings.tag-mutability"));
}

#[test]
fn a_repository_policy_loses_only_the_statements_the_guard_forbids() {
    let mut state = made_by_cli("payments/legacy");
    state.repository_policy = Some(
        r#"{"Version":"2012-10-17","Statement":[
            {"Sid":"anyone","Effect":"Allow","Principal":"*","Action":"ecr:BatchGetImage"},
            {"Sid":"ours","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"ecr:BatchGetImage"}]}"#
            .into(),
    );

    let remedy = policy().remedy(&state, &own(), &BTreeMap::new(), &[], PoliciesRead::Yes);

    let after = remedy.spec.repository_policy.expect("a statement remains");
    assert!(
        after.contains("\"ours\"") && !after.contains("\"anyone\""),
        "{after}"
    );
    let mend = remedy
        .mends
        .iter()
        .find(|m| m.field == "settings.repository_policy")
        .unwrap();
    assert_eq!(mend.rules, ["repository-policy.wildcard-principal"]);
}

#[test]
fn a_policy_of_forbidden_statements_only_is_deleted() {
    let mut state = made_by_cli("payments/legacy");
    state.repository_policy = Some(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"ecr:*"}}"#.into(),
    );

    let remedy = policy().remedy(&state, &own(), &BTreeMap::new(), &[], PoliciesRead::Yes);

    assert_eq!(remedy.spec.repository_policy, None);
}

#[test]
fn exclusion_filters_the_policy_does_not_allow_are_dropped() {
    let mut state = made_by_cli("payments/legacy");
    state.tag_mutability = TagMutability::ImmutableWithExclusion;
    state.exclusion_filters = vec!["latest".into(), "dev-*".into()];

    let remedy = policy().remedy(&state, &own(), &BTreeMap::new(), &[], PoliciesRead::Yes);

    assert_eq!(remedy.spec.tag_mutability, TagMutability::ImmutableWithExclusion);
    assert_eq!(remedy.spec.exclusion_filters, ["latest"]);
    let mend = remedy
        .mends
        .iter()
        .find(|m| m.field == "settings.image_tag_mutability")
        .unwrap();
    assert_eq!(mend.after, "IMMUTABLE_WITH_EXCLUSION (latest)");
}

#[test]
fn policies_never_read_are_neither_judged_nor_changed() {
    let given = BTreeMap::from([("team".to_owned(), "payments".to_owned())]);

    let remedy = policy().remedy(
        &made_by_cli("payments/legacy"),
        &own(),
        &given,
        &[],
        PoliciesRead::No,
    );

    assert!(
        remedy
            .mends
            .iter()
            .all(|m| m.field != "settings.lifecycle_policy"),
        "{remedy:?}"
    );
    assert_eq!(remedy.spec.lifecycle_policy, None);
    assert!(remedy.mends.iter().any(|m| m.field == "settings.scan_on_push"));
}
