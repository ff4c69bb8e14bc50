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

// ---- The lifecycle policy model: one failing case per rule id, AWS's examples, properties.

use proptest::prelude::*;

use crate::policy::lifecycle_model::{CountCriterion, LifecyclePolicy, TagPattern};

const PREFIX: &str = "lifecycle_policy";
const EXPIRE: &str = r#"{"type":"expire"}"#;
const ARCHIVE: &str = r#"{"type":"transition","targetStorageClass":"archive"}"#;
const KEEP_TEN: &str = r#""countType":"imageCountMoreThan","countNumber":10"#;

/// A rule with a description long enough that every test document passes the length rule.
fn rule(priority: u32, selection: &str, action: &str) -> String {
    format!(
        r#"{{"rulePriority":{priority},"description":"a rule described at some length","selection":{{{selection}}},"action":{action}}}"#
    )
}

fn document(rules: &[String]) -> String {
    format!(r#"{{"rules":[{}]}}"#, rules.join(","))
}

/// `(rule id, field)` of every violation of `text`.
fn problems(text: &str) -> Vec<(&'static str, String)> {
    LifecyclePolicy::parse(text, PREFIX)
        .expect_err("should be refused")
        .into_iter()
        .map(|violation| (violation.rule, violation.field))
        .collect()
}

fn only(rule: &'static str, field: &str) -> Vec<(&'static str, String)> {
    vec![(rule, format!("{PREFIX}.{field}"))]
}

fn one_rule_problems(selection: &str, action: &str) -> Vec<(&'static str, String)> {
    problems(&document(&[rule(1, selection, action)]))
}

#[test]
fn text_that_is_not_json_breaks_the_json_rule() {
    let text = format!(
        "{} oops",
        document(&[rule(1, r#""tagStatus":"any","#.to_owned().as_str(), EXPIRE)])
    );

    assert_eq!(problems(&text), [("lifecycle-policy.json", PREFIX.to_owned())]);
}

#[test]
fn short_text_breaks_the_length_rule() {
    let text = r#"{"rules":[]}"#;

    assert_eq!(problems(text)[0], ("lifecycle-policy.length", PREFIX.to_owned()));
}

#[test]
fn fifty_one_rules_break_the_rule_count() {
    let rules: Vec<String> = (1..=51)
        .map(|n| {
            rule(
                n,
                &format!(r#""tagStatus":"tagged","tagPrefixList":["p{n}"],{KEEP_TEN}"#),
                EXPIRE,
            )
        })
        .collect();

    assert_eq!(
        problems(&document(&rules)),
        only("lifecycle-policy.rule-count", "rules")
    );
    assert!(LifecyclePolicy::parse(&document(&rules[..50]), PREFIX).is_ok());
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let text = r#"{"version":1,"rules":[{"rulePriority":1,"name":"x","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":10,"tagRegex":"x"},"action":{"type":"expire","dryRun":true}}]}"#;

    let fields: Vec<_> = problems(text)
        .into_iter()
        .filter(|(rule, _)| *rule == "lifecycle-policy.unknown-field")
        .map(|(_, field)| field)
        .collect();

    assert_eq!(
        fields,
        [
            "lifecycle_policy.version",
            "lifecycle_policy.rules[0].name",
            "lifecycle_policy.rules[0].selection.tagRegex",
            "lifecycle_policy.rules[0].action.dryRun",
        ]
    );
}

#[test]
fn missing_count_type_is_required() {
    let found = one_rule_problems(r#""tagStatus":"any","countNumber":10"#, EXPIRE);

    assert_eq!(
        found,
        only("lifecycle-policy.required", "rules[0].selection.countType")
    );
}

#[test]
fn a_description_that_is_not_text_has_the_wrong_type() {
    let text = document(&[rule(1, &format!(r#""tagStatus":"any",{KEEP_TEN}"#), EXPIRE)]).replace(
        r#""a rule described at some length""#,
        "[1, 2, 3, 4, 5, 6, 7, 8, 9]",
    );

    assert_eq!(
        problems(&text),
        only("lifecycle-policy.field-type", "rules[0].description")
    );
}

#[test]
fn an_unknown_tag_status_is_an_unknown_value() {
    let found = one_rule_problems(&format!(r#""tagStatus":"all",{KEEP_TEN}"#), EXPIRE);

    assert_eq!(
        found,
        only("lifecycle-policy.unknown-value", "rules[0].selection.tagStatus")
    );
}

#[test]
fn priority_zero_is_not_positive() {
    let found = problems(&document(&[rule(
        0,
        &format!(r#""tagStatus":"any",{KEEP_TEN}"#),
        EXPIRE,
    )]));

    assert_eq!(found, only("lifecycle-policy.priority", "rules[0].rulePriority"));
}

#[test]
fn two_rules_with_one_priority_break_uniqueness() {
    let rules = [
        rule(
            1,
            &format!(r#""tagStatus":"tagged","tagPrefixList":["a"],{KEEP_TEN}"#),
            EXPIRE,
        ),
        rule(
            1,
            &format!(r#""tagStatus":"tagged","tagPrefixList":["b"],{KEEP_TEN}"#),
            EXPIRE,
        ),
    ];

    assert_eq!(
        problems(&document(&rules)),
        only("lifecycle-policy.priority-unique", "rules[1].rulePriority")
    );
}

#[test]
fn an_any_rule_before_another_rule_of_its_storage_class_breaks_any_last() {
    let rules = [
        rule(1, &format!(r#""tagStatus":"any",{KEEP_TEN}"#), EXPIRE),
        rule(
            2,
            &format!(r#""tagStatus":"tagged","tagPrefixList":["b"],{KEEP_TEN}"#),
            EXPIRE,
        ),
    ];

    assert_eq!(
        problems(&document(&rules)),
        only("lifecycle-policy.any-last", "rules[0].rulePriority")
    );
}

#[test]
fn a_tagged_rule_without_a_list_needs_a_filter() {
    let found = one_rule_problems(
        &format!(r#""tagStatus":"tagged","tagPrefixList":[],{KEEP_TEN}"#),
        EXPIRE,
    );

    assert_eq!(
        found,
        only(
            "lifecycle-policy.tagged-needs-filter",
            "rules[0].selection.tagStatus"
        )
    );
}

#[test]
fn a_rule_with_both_lists_is_refused() {
    let selection =
        format!(r#""tagStatus":"tagged","tagPatternList":["a*"],"tagPrefixList":["b"],{KEEP_TEN}"#);

    assert_eq!(
        one_rule_problems(&selection, EXPIRE),
        only(
            "lifecycle-policy.one-filter-list",
            "rules[0].selection.tagPrefixList"
        )
    );
}

#[test]
fn an_untagged_rule_takes_no_tag_list() {
    let found = one_rule_problems(
        &format!(r#""tagStatus":"untagged","tagPatternList":["a*"],{KEEP_TEN}"#),
        EXPIRE,
    );

    assert_eq!(
        found,
        only(
            "lifecycle-policy.untagged-no-filter",
            "rules[0].selection.tagPatternList"
        )
    );
}

#[test]
fn an_any_rule_takes_no_tag_list() {
    let found = one_rule_problems(
        &format!(r#""tagStatus":"any","tagPrefixList":["a"],{KEEP_TEN}"#),
        EXPIRE,
    );

    assert_eq!(
        found,
        only(
            "lifecycle-policy.any-no-filter",
            "rules[0].selection.tagPrefixList"
        )
    );
}

#[test]
fn a_pattern_with_more_than_four_wildcards_is_refused_by_index() {
    let selection =
        format!(r#""tagStatus":"tagged","tagPatternList":["*test*1*2*3","test*1*2*3*4*5*6"],{KEEP_TEN}"#);

    assert_eq!(
        one_rule_problems(&selection, EXPIRE),
        only(
            "lifecycle-policy.pattern-wildcards",
            "rules[0].selection.tagPatternList[1]"
        )
    );
}

#[test]
fn aws_valid_wildcard_example_is_accepted() {
    let selection =
        format!(r#""tagStatus":"tagged","tagPatternList":["*test*1*2*3","test*1*2*3*"],{KEEP_TEN}"#);

    assert!(LifecyclePolicy::parse(&document(&[rule(1, &selection, EXPIRE)]), PREFIX).is_ok());
}

#[test]
fn since_image_pulled_cannot_expire() {
    let selection = r#""tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":90"#;

    assert_eq!(
        one_rule_problems(selection, EXPIRE),
        only(
            "lifecycle-policy.count-type-action",
            "rules[0].selection.countType"
        )
    );
}

#[test]
fn since_image_transitioned_cannot_transition() {
    let selection = r#""tagStatus":"any","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":90"#;

    assert_eq!(
        one_rule_problems(selection, ARCHIVE),
        only(
            "lifecycle-policy.count-type-action",
            "rules[0].selection.countType"
        )
    );
}

#[test]
fn since_image_transitioned_needs_the_archive_storage_class() {
    let selection =
        r#""tagStatus":"any","countType":"sinceImageTransitioned","countUnit":"days","countNumber":365"#;

    assert_eq!(
        one_rule_problems(selection, EXPIRE),
        only(
            "lifecycle-policy.storage-class",
            "rules[0].selection.storageClass"
        )
    );
}

#[test]
fn other_count_types_cannot_select_archived_images() {
    let selection = r#""tagStatus":"any","storageClass":"archive","countType":"sinceImagePushed","countUnit":"days","countNumber":365"#;

    assert_eq!(
        one_rule_problems(selection, EXPIRE),
        only(
            "lifecycle-policy.storage-class",
            "rules[0].selection.storageClass"
        )
    );
}

#[test]
fn count_unit_is_refused_for_image_count_and_required_as_days_for_ages() {
    let cases = [
        r#""tagStatus":"any","countType":"imageCountMoreThan","countUnit":"days","countNumber":10"#,
        r#""tagStatus":"any","countType":"sinceImagePushed","countNumber":10"#,
        r#""tagStatus":"any","countType":"sinceImagePushed","countUnit":"hours","countNumber":10"#,
    ];

    for selection in cases {
        assert_eq!(
            one_rule_problems(selection, EXPIRE),
            only("lifecycle-policy.count-unit", "rules[0].selection.countUnit"),
            "{selection}"
        );
    }
}

#[test]
fn count_number_must_be_a_positive_whole_number() {
    for number in ["0", "-3", "1.5", "\"10\"", "4294967296"] {
        let selection =
            format!(r#""tagStatus":"any","countType":"imageCountMoreThan","countNumber":{number}"#);

        assert_eq!(
            one_rule_problems(&selection, EXPIRE),
            only("lifecycle-policy.count-number", "rules[0].selection.countNumber"),
            "{number}"
        );
    }
}

#[test]
fn transition_needs_archive_and_expire_takes_no_target() {
    let selection = format!(r#""tagStatus":"any",{KEEP_TEN}"#);

    assert_eq!(
        one_rule_problems(&selection, r#"{"type":"transition"}"#),
        only(
            "lifecycle-policy.target-storage-class",
            "rules[0].action.targetStorageClass"
        )
    );
    assert_eq!(
        one_rule_problems(&selection, r#"{"type":"expire","targetStorageClass":"archive"}"#),
        only(
            "lifecycle-policy.target-storage-class",
            "rules[0].action.targetStorageClass"
        )
    );
    assert_eq!(
        one_rule_problems(
            &selection,
            r#"{"type":"transition","targetStorageClass":"glacier"}"#
        ),
        only(
            "lifecycle-policy.unknown-value",
            "rules[0].action.targetStorageClass"
        )
    );
}

#[test]
fn archived_images_cannot_be_expired_before_ninety_days() {
    let selection = r#""tagStatus":"any","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":89"#;

    assert_eq!(
        one_rule_problems(selection, EXPIRE),
        only(
            "lifecycle-policy.archive-minimum",
            "rules[0].selection.countNumber"
        )
    );
}

#[test]
fn only_one_rule_per_storage_class_selects_untagged_images() {
    let untagged = |days: u32| {
        format!(
            r#""tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":{days}"#
        )
    };
    let archived_untagged = r#""tagStatus":"untagged","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":90"#;

    let twice = document(&[rule(1, &untagged(5), EXPIRE), rule(2, &untagged(9), EXPIRE)]);
    let one_per_class = document(&[rule(1, &untagged(5), EXPIRE), rule(2, archived_untagged, EXPIRE)]);

    assert_eq!(
        problems(&twice),
        only("lifecycle-policy.untagged-unique", "rules[1].selection.tagStatus")
    );
    assert!(LifecyclePolicy::parse(&one_per_class, PREFIX).is_ok());
}

#[test]
fn two_rules_with_the_same_prefix_set_are_refused() {
    let rules = [
        rule(
            1,
            &format!(r#""tagStatus":"tagged","tagPrefixList":["a","b"],{KEEP_TEN}"#),
            EXPIRE,
        ),
        rule(
            2,
            &format!(r#""tagStatus":"tagged","tagPrefixList":["b","a"],{KEEP_TEN}"#),
            EXPIRE,
        ),
    ];

    assert_eq!(
        problems(&document(&rules)),
        only(
            "lifecycle-policy.prefixes-unique",
            "rules[1].selection.tagPrefixList"
        )
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let rules = [
        rule(
            0,
            r#""tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":0"#,
            EXPIRE,
        ),
        rule(
            2,
            r#""tagStatus":"untagged","countType":"sinceImagePulled","countNumber":3"#,
            EXPIRE,
        ),
    ];

    let ids: Vec<_> = problems(&document(&rules))
        .into_iter()
        .map(|(rule, _)| rule)
        .collect();

    assert_eq!(
        ids,
        [
            "lifecycle-policy.priority",
            "lifecycle-policy.tagged-needs-filter",
            "lifecycle-policy.count-number",
            "lifecycle-policy.count-unit",
        ]
    );
}

#[test]
fn the_callers_prefix_names_the_fields() {
    let text = document(&[rule(
        1,
        r#""tagStatus":"any","countType":"imageCountMoreThan","countNumber":0"#,
        EXPIRE,
    )]);

    let refused = LifecyclePolicy::parse(&text, "request.policy").expect_err("refused");

    assert_eq!(refused[0].field, "request.policy.rules[0].selection.countNumber");
    assert!(
        violations(&text)[0]
            .field
            .starts_with("settings.lifecycle_policy.rules[0]")
    );
}

/// Every policy on AWS's "Examples of lifecycle policies in Amazon ECR" page.
const AWS_EXAMPLES: &[&str] = &[
    r#"{"rules":[{"rulePriority":1,"description":"Expire images older than 14 days","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Archive images not pulled in 90 days","selection":{"tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":90},"action":{"type":"transition","targetStorageClass":"archive"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Expire images archived for more than 365 days","selection":{"tagStatus":"any","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":365},"action":{"type":"expire"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Keep only one untagged image, expire all others","selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},{"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"tagged","tagPatternList":["beta*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPatternList":["alpha*","beta*"],"countType":"sinceImagePushed","countNumber":5,"countUnit":"days"},"action":{"type":"expire"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPatternList":["alpha*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},{"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}},{"rulePriority":3,"description":"Rule 3","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Archive production images older than 30 days","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"transition","targetStorageClass":"archive"}}]}"#,
    r#"{"rules":[{"rulePriority":1,"description":"Archive images older than 30 days","selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"transition","targetStorageClass":"archive"}},{"rulePriority":2,"description":"Expire images archived for more than 365 days","selection":{"tagStatus":"any","storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":365},"action":{"type":"expire"}}]}"#,
];

#[test]
fn every_aws_example_parses_and_survives_a_round_trip() {
    for text in AWS_EXAMPLES {
        let policy = LifecyclePolicy::parse(text, PREFIX).unwrap_or_else(|v| panic!("{text}: {v:?}"));

        assert_eq!(LifecyclePolicy::parse(&policy.to_json(), PREFIX), Ok(policy));
    }
}

#[test]
fn to_json_writes_ecr_field_order_and_leaves_defaults_out() {
    let text = r#"{"rules":[{"action":{"type":"expire"},"selection":{"countNumber":14,"countUnit":"days","countType":"sinceImagePushed","storageClass":"standard","tagStatus":"untagged"},"rulePriority":3}]}"#;

    let policy = LifecyclePolicy::parse(text, PREFIX).expect("valid");

    assert_eq!(
        policy.to_json(),
        r#"{"rules":[{"rulePriority":3,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#
    );
    assert_eq!(
        policy.rules()[0].selection.count,
        CountCriterion::SinceImagePushed(14)
    );
}

#[test]
fn patterns_match_like_aws_describes() {
    let pattern = |text| TagPattern::parse(text).expect("valid pattern");

    for tag in ["prod", "prod1", "production-team1"] {
        assert!(pattern("prod*").matches(tag), "{tag}");
    }
    for tag in ["repo-production", "prod-team"] {
        assert!(pattern("*prod*").matches(tag), "{tag}");
    }
    assert!(!pattern("prod*").matches("my-prod"));
    assert!(!pattern("prod").matches("prod1"));
    assert!(pattern("a*b*c").matches("a-b-b-c"));
    assert!(!pattern("a*b*c").matches("a-b-c-d"));
    assert!(pattern("*").matches(""));
}

fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_owned()),
        Just("0".to_owned()),
        Just("90".to_owned()),
        Just(r#""days""#.to_owned()),
        Just(r#"["prod*"]"#.to_owned()),
        Just(r#"["a","b"]"#.to_owned()),
        Just("[]".to_owned()),
        prop::sample::select(vec![
            "tagged",
            "untagged",
            "any",
            "standard",
            "archive",
            "imageCountMoreThan",
            "sinceImagePushed",
            "sinceImagePulled",
            "sinceImageTransitioned",
            "expire",
            "transition"
        ])
        .prop_map(|word| format!(r#""{word}""#)),
    ]
}

fn json_object(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), json_value()), 1..7).prop_map(|fields| {
        let fields: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!(r#""{key}":{value}"#))
            .collect();
        format!("{{{}}}", fields.join(","))
    })
}

/// Documents of one to three rules drawn from ECR's field names and plausible values.
fn policy_text() -> impl Strategy<Value = String> {
    let selection = json_object(&[
        "tagStatus",
        "tagPatternList",
        "tagPrefixList",
        "storageClass",
        "countType",
        "countUnit",
        "countNumber",
    ]);
    let action = json_object(&["type", "targetStorageClass"]);
    let one_rule = (1..4_u32, selection, action, "[a-z ]{0,40}").prop_map(|(priority, selection, action, words)| {
        format!(r#"{{"rulePriority":{priority},"description":"{words}","selection":{selection},"action":{action}}}"#)
    });
    prop::collection::vec(one_rule, 1..4).prop_map(|rules| document(&rules))
}

/// Rules built from the pieces ECR accepts, with a few it refuses, so most documents parse.
fn plausible_policy_text() -> impl Strategy<Value = String> {
    let tags = prop::sample::select(vec![
        r#""tagStatus":"tagged","tagPatternList":["prod*","*web*"]"#,
        r#""tagStatus":"tagged","tagPrefixList":["v"]"#,
        r#""tagStatus":"tagged","tagPrefixList":["rc","beta"]"#,
        r#""tagStatus":"untagged""#,
        r#""tagStatus":"any""#,
        r#""tagStatus":"tagged""#,
    ]);
    let count = prop::sample::select(vec![
        r#""countType":"imageCountMoreThan","countNumber":"#,
        r#""countType":"sinceImagePushed","countUnit":"days","countNumber":"#,
        r#""storageClass":"standard","countType":"sinceImagePulled","countUnit":"days","countNumber":"#,
        r#""storageClass":"archive","countType":"sinceImageTransitioned","countUnit":"days","countNumber":"#,
    ]);
    let action = prop::sample::select(vec![EXPIRE, ARCHIVE]);
    let description = prop::option::of("[a-zA-Z0-9 é\"\\\\]{0,20}");
    let one_rule = (
        tags,
        count,
        prop::sample::select(vec![1, 90, 400]),
        action,
        description,
    );
    prop::collection::vec(one_rule, 1..4).prop_map(|rules| {
        let rules: Vec<String> = rules
            .iter()
            .enumerate()
            .map(|(index, (tags, count, number, action, description))| {
                let description = description
                    .as_ref()
                    .map(|text| format!(r#""description":{},"#, serde_json::Value::from(text.as_str())))
                    .unwrap_or_default();
                format!(
                    r#"{{"rulePriority":{},{description}"selection":{{{tags},{count}{number}}},"action":{action}}}"#,
                    index * 7 + 1
                )
            })
            .collect();
        document(&rules)
    })
}

proptest! {
    #[test]
    fn a_parsed_policy_round_trips_through_json(text in prop_oneof![policy_text(), plausible_policy_text()]) {
        if let Ok(policy) = LifecyclePolicy::parse(&text, PREFIX) {
            prop_assert_eq!(LifecyclePolicy::parse(&policy.to_json(), PREFIX), Ok(policy));
        }
    }

    #[test]
    fn a_refusal_always_names_a_problem(text in policy_text()) {
        if let Err(violations) = LifecyclePolicy::parse(&text, PREFIX) {
            prop_assert!(!violations.is_empty());
            prop_assert!(violations.iter().all(|v| v.field.starts_with(PREFIX) && !v.description.is_empty()));
        }
    }

    #[test]
    fn parsing_never_panics(text in "\\PC{0,200}") {
        let _ = LifecyclePolicy::parse(&text, PREFIX);
    }
}
