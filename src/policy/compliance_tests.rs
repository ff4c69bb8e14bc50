use std::collections::BTreeMap;

use super::*;
use crate::config::{LifecycleTemplates, OrgPolicyConfig};
use crate::domain::{Encryption, RepositoryName, TagMutability};

const OWN: &str = "123456789012";

fn template(marker: &str) -> String {
    format!(
        r#"{{"rules":[{{"rulePriority":1,"description":"{marker}","selection":{{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":100}},"action":{{"type":"expire"}}}}]}}"#
    )
}

fn policy() -> OrgPolicy {
    let mut config = OrgPolicyConfig::default();
    config.naming.namespaces = vec!["payments".into(), "search".into()];
    config.tags.required = vec!["team".into(), "managed-by".into()];
    config.settings.require_scan_on_push = true;
    config.settings.allowed_tag_mutability = vec![TagMutability::Immutable];
    config.settings.default_tag_mutability = TagMutability::Immutable;
    config.settings.lifecycle_templates = LifecycleTemplates {
        default: None,
        namespaces: BTreeMap::from([("payments".into(), template("payments"))]),
    };
    OrgPolicy::compile(&config).expect("valid config")
}

fn compliant(name: &str) -> RepositoryState {
    RepositoryState {
        name: RepositoryName::parse(name).unwrap(),
        arn: format!("arn:aws:ecr:eu-west-1:{OWN}:repository/{name}"),
        uri: String::new(),
        created_at: None,
        tag_mutability: TagMutability::Immutable,
        exclusion_filters: Vec::new(),
        scan_on_push: true,
        encryption: Encryption::Aes256,
        tags: BTreeMap::from([
            ("team".into(), "payments".into()),
            ("managed-by".into(), "ecr-gateway".into()),
        ]),
        lifecycle_policy: Some(template("payments")),
        repository_policy: None,
    }
}

fn judge(state: &RepositoryState) -> Vec<PolicyFinding> {
    policy().judge(state, &AccountId::parse(OWN).unwrap(), PoliciesRead::Yes)
}

fn rules(findings: &[PolicyFinding]) -> Vec<&str> {
    findings.iter().map(|f| f.rule.as_str()).collect()
}

#[test]
fn a_repository_made_by_the_policy_breaks_nothing() {
    assert_eq!(judge(&compliant("payments/api")), Vec::new());
}

#[test]
fn every_broken_rule_is_reported_at_once_with_what_is_there_and_what_is_wanted() {
    let mut state = compliant("payments/api");
    state.tags.remove("team");
    state.tags.insert("managed-by".into(), " ".into());
    state.scan_on_push = false;
    state.tag_mutability = TagMutability::Mutable;
    state.lifecycle_policy = None;

    let findings = judge(&state);

    assert_eq!(
        rules(&findings),
        [
            "tags.required",
            "tags.required",
            "settings.tag-mutability",
            "settings.scan-on-push",
            LIFECYCLE_MISSING
        ]
    );
    let mutability = &findings[2];
    assert_eq!(
        (mutability.actual.as_str(), mutability.wanted.as_str()),
        ("MUTABLE", "IMMUTABLE")
    );
    assert!(findings.iter().all(|f| f.mendable), "{findings:?}");
    // `managed-by` has a default, so remediation knows its value; `team` needs one given.
    let team = findings.iter().find(|f| f.field.contains("\"team\"")).unwrap();
    assert_eq!(team.wanted, "a non-blank value");
    let managed = findings.iter().find(|f| f.field.contains("managed-by")).unwrap();
    assert_eq!(managed.wanted, "ecr-gateway");
    assert_eq!(findings[4].wanted, template("payments"));
}

#[test]
fn names_and_encryption_are_reported_but_not_mendable() {
    let mut state = compliant("legacy-app");
    state.encryption = Encryption::Kms { key: None };
    state.lifecycle_policy = None;

    let findings = judge(&state);

    assert_eq!(
        rules(&findings),
        ["naming.namespace", "naming.pattern", "settings.encryption"]
    );
    assert!(findings.iter().all(|f| !f.mendable));
    assert!(
        findings[2].description.contains("fixes encryption at creation"),
        "{}",
        findings[2].description
    );
}

#[test]
fn a_namespace_without_a_template_needs_no_lifecycle_policy() {
    let mut state = compliant("search/indexer");
    state.lifecycle_policy = None;

    assert_eq!(judge(&state), Vec::new());
}

#[test]
fn an_invalid_lifecycle_policy_is_mendable_where_a_template_replaces_it() {
    let mut state = compliant("payments/api");
    state.lifecycle_policy = Some(r#"{"rules": []}"#.into());

    let findings = judge(&state);

    assert!(!findings.is_empty());
    assert!(
        findings
            .iter()
            .all(|f| f.rule.starts_with("lifecycle-policy.") && f.mendable)
    );
}

#[test]
fn a_repository_policy_open_to_anyone_breaks_the_guard() {
    let mut state = compliant("payments/api");
    state.repository_policy = Some(
        r#"{"Version":"2012-10-17","Statement":[{"Sid":"open","Effect":"Allow","Principal":"*","Action":"ecr:BatchGetImage"}]}"#
            .into(),
    );

    let findings = judge(&state);

    assert_eq!(rules(&findings), ["repository-policy.wildcard-principal"]);
    assert!(findings[0].mendable);
}

#[test]
fn policies_never_read_are_not_judged() {
    let mut state = compliant("payments/api");
    state.lifecycle_policy = None;

    let findings = policy().judge(&state, &AccountId::parse(OWN).unwrap(), PoliciesRead::No);

    assert_eq!(findings, Vec::new());
}

#[test]
fn rule_ids_of_a_filter_are_checked() {
    assert!(is_rule_id("tags.required"));
    assert!(is_rule_id(LIFECYCLE_MISSING));
    assert!(!is_rule_id("tags."));
    assert!(!is_rule_id("TAGS.REQUIRED"));
    assert!(!is_rule_id("deploy.scan-missing"));
    assert!(!is_rule_id("tags.req uired"));
    assert!(!is_rule_id(&format!("tags.{}", "a".repeat(60))));
}
