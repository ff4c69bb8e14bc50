use super::*;

const OWN: &str = "123456789012";
const PARTNER: &str = "111122223333";
const STRANGER: &str = "999988887777";

fn rules(forbid_wildcard_principal: bool) -> RepositoryPolicyRules {
    let config = RepositoryPolicyConfig {
        forbid_wildcard_principal,
        allowed_accounts: vec![PARTNER.into()],
    };
    RepositoryPolicyRules::compile(&config).expect("valid config")
}

fn own() -> AccountId {
    AccountId::parse(OWN).expect("valid")
}

fn policy(principal: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"Pull","Effect":"Allow","Principal":{principal},"Action":["ecr:BatchGetImage"]}}]}}"#
    )
}

fn rule_ids(result: Result<Option<String>, Vec<Violation>>) -> Vec<&'static str> {
    result
        .expect_err("should be rejected")
        .iter()
        .map(|v| v.rule)
        .collect()
}

#[test]
fn no_policy_or_a_blank_one_means_none() {
    assert_eq!(rules(true).plan(None, &own()), Ok(None));
    assert_eq!(rules(true).plan(Some(" "), &own()), Ok(None));
}

#[test]
fn own_and_allowed_accounts_and_services_are_accepted() {
    let text = policy(&format!(
        r#"{{"AWS":["arn:aws:iam::{OWN}:root","{PARTNER}"],"Service":"codebuild.amazonaws.com"}}"#
    ));

    assert_eq!(rules(true).plan(Some(&text), &own()), Ok(Some(text.clone())));
}

#[test]
fn bare_wildcard_principal_is_rejected() {
    assert_eq!(
        rule_ids(rules(true).plan(Some(&policy(r#""*""#)), &own())),
        ["repository-policy.wildcard-principal"]
    );
}

#[test]
fn wildcard_inside_an_aws_list_is_rejected_naming_the_statement() {
    let violations = rules(true)
        .plan(Some(&policy(&format!(r#"{{"AWS":["{OWN}","*"]}}"#))), &own())
        .expect_err("rejected");

    assert_eq!(violations.len(), 1);
    assert!(
        violations[0].description.starts_with("Statement[0] (Sid `Pull`)"),
        "{}",
        violations[0].description
    );
}

#[test]
fn wildcard_principal_is_accepted_when_not_forbidden() {
    assert!(rules(false).plan(Some(&policy(r#"{"AWS":"*"}"#)), &own()).is_ok());
}

#[test]
fn unknown_account_is_rejected_naming_it() {
    let text = policy(&format!(r#"{{"AWS":"arn:aws:iam::{STRANGER}:role/ci"}}"#));

    let violations = rules(true).plan(Some(&text), &own()).expect_err("rejected");

    assert_eq!(violations[0].rule, "repository-policy.cross-account");
    assert!(
        violations[0]
            .description
            .contains(&format!("account `{STRANGER}`")),
        "{}",
        violations[0].description
    );
    assert!(
        violations[0].description.contains(&format!("`{PARTNER}`")),
        "{}",
        violations[0].description
    );
}

#[test]
fn deny_statements_may_name_anyone() {
    let text = r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"ecr:*","Condition":{"Bool":{"aws:SecureTransport":"false"}}}}"#;

    assert!(rules(true).plan(Some(text), &own()).is_ok());
}

#[test]
fn not_json_is_rejected() {
    assert_eq!(
        rule_ids(rules(true).plan(Some("{"), &own())),
        ["repository-policy.json"]
    );
}

#[test]
fn object_without_statement_is_rejected() {
    assert_eq!(
        rule_ids(rules(true).plan(Some(r#"{"Version":"2012-10-17"}"#), &own())),
        ["repository-policy.json"]
    );
}

#[test]
fn non_object_statement_is_rejected() {
    assert_eq!(
        rule_ids(rules(true).plan(Some(r#"{"Statement":["x"]}"#), &own())),
        ["repository-policy.json"]
    );
}

#[test]
fn wildcard_and_stranger_in_one_policy_are_both_reported() {
    let text = format!(r#"{{"Statement":[{{"Principal":"*"}},{{"Principal":{{"AWS":"{STRANGER}"}}}}]}}"#);

    let ids = rule_ids(rules(true).plan(Some(&text), &own()));

    assert_eq!(
        ids,
        [
            "repository-policy.wildcard-principal",
            "repository-policy.cross-account"
        ]
    );
}

#[test]
fn malformed_allowed_account_is_a_config_error() {
    let config = RepositoryPolicyConfig {
        allowed_accounts: vec!["1234".into()],
        ..RepositoryPolicyConfig::default()
    };

    let problems = RepositoryPolicyRules::compile(&config).expect_err("invalid");

    assert!(
        problems[0].starts_with("policy.repository_policy.allowed_accounts[0]:"),
        "{problems:?}"
    );
}
