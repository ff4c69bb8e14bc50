use super::*;

fn rules(namespaces: &[&str]) -> NamingRules {
    let config = NamingConfig {
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        reserved: vec!["aws".into(), "admin".into()],
        ..NamingConfig::default()
    };
    NamingRules::compile(&config).expect("valid config")
}

fn rule_ids(result: Result<RepositoryName, Vec<Violation>>) -> Vec<&'static str> {
    result
        .expect_err("should be rejected")
        .iter()
        .map(|v| v.rule)
        .collect()
}

#[test]
fn name_in_a_team_namespace_is_accepted() {
    let name = rules(&["payments"]).check("payments/api").expect("valid");

    assert_eq!(name.as_str(), "payments/api");
}

#[test]
fn name_outside_the_team_namespaces_is_rejected_listing_them() {
    let violations = rules(&["payments", "search"])
        .check("billing/api")
        .expect_err("rejected");

    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].rule, "naming.namespace");
    assert!(
        violations[0].description.contains("`payments`, `search`"),
        "{}",
        violations[0].description
    );
}

#[test]
fn any_namespace_is_accepted_when_none_are_configured() {
    assert!(rules(&[]).check("anything/api").is_ok());
}

#[test]
fn bare_namespace_violates_the_pattern_rule() {
    let violations = rules(&["payments"]).check("payments").expect_err("rejected");

    assert_eq!(violations[0].rule, "naming.pattern");
    assert!(
        violations[0].description.contains("only a namespace"),
        "{}",
        violations[0].description
    );
}

#[test]
fn rest_not_matching_the_pattern_is_rejected_quoting_the_pattern() {
    let config = NamingConfig {
        pattern: "svc-[a-z]+".into(),
        ..NamingConfig::default()
    };
    let rules = NamingRules::compile(&config).expect("valid");

    let violations = rules.check("team/api").expect_err("rejected");

    assert_eq!(violations[0].rule, "naming.pattern");
    assert!(
        violations[0].description.contains("`svc-[a-z]+`"),
        "{}",
        violations[0].description
    );
}

#[test]
fn configured_pattern_must_match_the_whole_rest() {
    let config = NamingConfig {
        pattern: "svc-[a-z]+".into(),
        ..NamingConfig::default()
    };
    let rules = NamingRules::compile(&config).expect("valid");

    assert!(rules.check("team/svc-api").is_ok());
    assert!(rules.check("team/svc-api2").is_err());
}

#[test]
fn default_pattern_allows_every_separator_ecr_allows() {
    for name in [
        "team/a__b",
        "team/a--b",
        "team/a---b",
        "team/a.b_c-d",
        "team/x/a__b--c",
    ] {
        assert!(
            rules(&[]).check(name).is_ok(),
            "{name} is refused by the default pattern"
        );
    }
}

#[test]
fn default_pattern_still_refuses_what_ecr_refuses() {
    for name in ["team/a___b", "team/a._b", "team/-a", "team/a-", "team/a//b"] {
        assert!(rules(&[]).check(name).is_err(), "{name} is accepted");
    }
}

#[test]
fn a_stricter_pattern_can_refuse_double_separators() {
    let config = NamingConfig {
        pattern: "[a-z0-9]+(?:[-_.][a-z0-9]+)*(?:/[a-z0-9]+(?:[-_.][a-z0-9]+)*)*".into(),
        ..NamingConfig::default()
    };
    let rules = NamingRules::compile(&config).expect("valid");
    assert_eq!(rule_ids(rules.check("team/a__b")), ["naming.pattern"]);
    assert!(rules.check("team/a-b").is_ok());
}

#[test]
fn name_deeper_than_max_depth_is_rejected() {
    assert_eq!(rule_ids(rules(&[]).check("team/a/b/c/d")), ["naming.max-depth"]);
}

#[test]
fn reserved_segment_is_rejected_once_per_word() {
    let violations = rules(&[]).check("team/aws/aws/admin").expect_err("rejected");

    let rules: Vec<_> = violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, ["naming.reserved", "naming.reserved"]);
}

#[test]
fn bad_grammar_still_reports_the_namespace_problem() {
    let ids = rule_ids(rules(&["payments"]).check("Billing/API"));

    assert_eq!(ids, ["ecr.repository-name.grammar", "naming.namespace"]);
}

#[test]
fn too_short_name_reports_length_and_missing_name() {
    assert_eq!(
        rule_ids(rules(&[]).check("a")),
        ["ecr.repository-name.length", "naming.pattern"]
    );
}

#[test]
fn empty_name_reports_only_the_length_rule() {
    assert_eq!(
        rule_ids(rules(&["payments"]).check("")),
        ["ecr.repository-name.length"]
    );
}

#[test]
fn invalid_namespaces_and_reserved_words_are_config_errors() {
    let config = NamingConfig {
        namespaces: vec!["Payments".into(), "ok".into()],
        reserved: vec!["a/b".into()],
        ..NamingConfig::default()
    };

    let problems = NamingRules::compile(&config).expect_err("invalid");

    assert!(
        problems[0].starts_with("policy.naming.namespaces[0]: `Payments`"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("policy.naming.reserved[0]: `a/b`"),
        "{problems:?}"
    );
}

#[test]
fn bad_pattern_is_a_config_error_naming_the_key() {
    let config = NamingConfig {
        pattern: "([a-z".into(),
        ..NamingConfig::default()
    };

    let problems = NamingRules::compile(&config).expect_err("invalid");

    assert!(
        problems[0].starts_with("policy.naming.pattern: regex parse error"),
        "{problems:?}"
    );
}

#[test]
fn reserved_namespace_and_tiny_depth_are_config_errors() {
    let config = NamingConfig {
        namespaces: vec!["aws".into()],
        max_depth: 1,
        ..NamingConfig::default()
    };

    let problems = NamingRules::compile(&config).expect_err("invalid");

    assert_eq!(problems.len(), 2, "{problems:?}");
}
