use super::*;

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rules() -> TagRules {
    let config = TagConfig {
        required: vec!["team".into(), "env".into()],
        allowed: BTreeMap::from([
            (
                "env".into(),
                AllowedValues::Values {
                    values: vec!["dev".into(), "prod".into()],
                },
            ),
            (
                "cost-center".into(),
                AllowedValues::Pattern {
                    pattern: "cc-[0-9]{4}".into(),
                },
            ),
        ]),
        ..TagConfig::default()
    };
    TagRules::compile(&config).expect("valid config")
}

fn rule_ids(result: Result<BTreeMap<String, String>, Vec<Violation>>) -> Vec<&'static str> {
    result
        .expect_err("should be rejected")
        .iter()
        .map(|v| v.rule)
        .collect()
}

#[test]
fn default_tags_are_added_to_the_request() {
    let planned = rules()
        .check(&tags(&[("team", "payments"), ("env", "dev")]))
        .expect("valid");

    assert_eq!(planned.get("managed-by").map(String::as_str), Some("ecr-gateway"));
}

#[test]
fn request_may_override_a_default_value() {
    let planned = rules()
        .check(&tags(&[
            ("team", "payments"),
            ("env", "dev"),
            ("managed-by", "terraform"),
        ]))
        .expect("valid");

    assert_eq!(planned.get("managed-by").map(String::as_str), Some("terraform"));
}

#[test]
fn each_missing_required_tag_is_reported_with_its_key() {
    let violations = rules().check(&BTreeMap::new()).expect_err("rejected");

    let fields: Vec<_> = violations.iter().map(|v| (v.field.as_str(), v.rule)).collect();
    assert_eq!(
        fields,
        [
            (r#"settings.tags["team"]"#, "tags.required"),
            (r#"settings.tags["env"]"#, "tags.required")
        ]
    );
}

#[test]
fn blank_required_tag_counts_as_missing() {
    assert_eq!(
        rule_ids(rules().check(&tags(&[("team", " "), ("env", "dev")]))),
        ["tags.required"]
    );
}

#[test]
fn value_outside_the_list_is_rejected_listing_the_values() {
    let violations = rules()
        .check(&tags(&[("team", "t"), ("env", "staging")]))
        .expect_err("rejected");

    assert_eq!(violations[0].rule, "tags.allowed-values");
    assert!(
        violations[0].description.contains("use one of: `dev`, `prod`"),
        "{}",
        violations[0].description
    );
}

#[test]
fn value_not_matching_the_pattern_is_rejected_quoting_it() {
    let violations = rules()
        .check(&tags(&[
            ("team", "t"),
            ("env", "dev"),
            ("cost-center", "cc-12345"),
        ]))
        .expect_err("rejected");

    assert!(
        violations[0].description.contains("must match `cc-[0-9]{4}`"),
        "{}",
        violations[0].description
    );
}

#[test]
fn more_than_fifty_tags_after_defaults_are_rejected() {
    let mut many = tags(&[("team", "t"), ("env", "dev")]);
    many.extend((0..48).map(|i| (format!("k{i}"), "v".to_string())));

    assert_eq!(rule_ids(rules().check(&many)), ["tags.count"]);
}

#[test]
fn empty_and_overlong_keys_are_rejected() {
    let long = "k".repeat(129);

    let ids = rule_ids(rules().check(&tags(&[("team", "t"), ("env", "dev"), ("", "v"), (&long, "v")])));

    assert_eq!(ids, ["tags.key-length", "tags.key-length"]);
}

#[test]
fn overlong_value_is_rejected() {
    let long = "v".repeat(257);

    assert_eq!(
        rule_ids(rules().check(&tags(&[("team", &long), ("env", "dev")]))),
        ["tags.value-length"]
    );
}

#[test]
fn aws_prefixed_key_is_rejected_in_any_case() {
    assert_eq!(
        rule_ids(rules().check(&tags(&[("team", "t"), ("env", "dev"), ("AWS:x", "v")]))),
        ["tags.reserved-prefix"]
    );
}

#[test]
fn defaults_breaking_the_allowed_values_are_a_config_error() {
    let config = TagConfig {
        allowed: BTreeMap::from([(
            "managed-by".into(),
            AllowedValues::Values {
                values: vec!["terraform".into()],
            },
        )]),
        ..TagConfig::default()
    };

    let problems = TagRules::compile(&config).expect_err("invalid");

    assert!(
        problems[0].starts_with("policy.tags.defaults: `managed-by`"),
        "{problems:?}"
    );
}

#[test]
fn bad_allowed_pattern_and_empty_value_list_are_config_errors_naming_the_key() {
    let config = TagConfig {
        allowed: BTreeMap::from([
            ("a".into(), AllowedValues::Pattern { pattern: "(".into() }),
            ("b".into(), AllowedValues::Values { values: vec![] }),
        ]),
        required: vec!["aws:owner".into()],
        ..TagConfig::default()
    };

    let problems = TagRules::compile(&config).expect_err("invalid");

    assert!(
        problems[0].starts_with("policy.tags.allowed.a.pattern: regex parse error"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("policy.tags.allowed.b: `values` is empty"),
        "{problems:?}"
    );
    assert!(
        problems[2].starts_with("policy.tags.required: `aws:owner`"),
        "{problems:?}"
    );
}

#[test]
fn keys_and_values_outside_awss_characters_are_rejected() {
    let ids = rule_ids(rules().check(&tags(&[
        ("team", "t"),
        ("env", "dev"),
        ("owner'; DROP TABLE images; --", "alice"),
        ("note", "a\u{0}b"),
    ])));

    assert_eq!(ids, ["tags.value-characters", "tags.key-characters"]);
}

#[test]
fn awss_tag_characters_are_accepted() {
    assert!(
        rules()
            .check(&tags(&[
                ("team", "t"),
                ("env", "dev"),
                ("Owner Name:é_.:/=+-@", "Zoë 42")
            ]))
            .is_ok()
    );
}

#[test]
fn a_tag_filter_is_held_to_awss_limits_but_may_name_aws_tags() {
    let filter = tags(&[
        ("aws:cloudformation:stack-name", "api"),
        ("k\u{0}", "v"),
        ("team", &"v".repeat(257)),
    ]);

    let found: Vec<(String, &str)> = tag_filter_violations("tag_filter", &filter)
        .into_iter()
        .map(|v| (v.field, v.rule))
        .collect();

    assert_eq!(
        found,
        [
            ("tag_filter[\"k\\0\"]".to_owned(), "tags.key-characters"),
            ("tag_filter[\"team\"]".to_owned(), "tags.value-length"),
        ]
    );
}
