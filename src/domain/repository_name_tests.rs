use super::*;
use proptest::prelude::*;

fn rejection(s: &str) -> Violation {
    RepositoryName::parse(s).expect_err("should be rejected")
}

#[test]
fn nested_name_parses_and_exposes_its_segments() {
    let name = RepositoryName::parse("payments/api/worker").expect("valid");

    assert_eq!(name.namespace(), "payments");
    assert_eq!(name.segments().collect::<Vec<_>>(), ["payments", "api", "worker"]);
    assert_eq!(name.path_after_namespace(), Some("api/worker"));
}

#[test]
fn single_segment_name_has_no_path_after_its_namespace() {
    let name = RepositoryName::parse("nginx").expect("valid");

    assert_eq!(name.namespace(), "nginx");
    assert_eq!(name.path_after_namespace(), None);
}

#[test]
fn single_segments_are_recognised_without_the_length_rule() {
    assert!(RepositoryName::is_valid_segment("a"));
    assert!(!RepositoryName::is_valid_segment("a/b"));
    assert!(!RepositoryName::is_valid_segment("Team"));
}

#[test]
fn all_ecr_separators_are_accepted() {
    for name in ["a.b", "a_b", "a__b", "a-b", "a---b", "a.b_c__d-e"] {
        assert!(RepositoryName::parse(name).is_ok(), "{name}");
    }
}

#[test]
fn name_with_uppercase_is_rejected_suggesting_the_lowercase_form() {
    let violation = rejection("Payments/API");

    assert_eq!(violation.rule, GRAMMAR_RULE);
    assert_eq!(violation.field, "repository");
    assert!(
        violation.description.contains("use `payments/api`"),
        "{}",
        violation.description
    );
}

#[test]
fn name_with_uppercase_and_another_problem_points_at_the_character() {
    let violation = rejection("team/My App");

    assert!(
        violation.description.contains("character 6 `M` is uppercase"),
        "{}",
        violation.description
    );
}

#[test]
fn name_with_a_space_is_rejected_pointing_at_the_character() {
    let violation = rejection("team/my app");

    assert!(
        violation.description.contains("character 8 ` ` is not allowed"),
        "{}",
        violation.description
    );
    assert!(
        violation.description.contains("segment 2 `my app`"),
        "{}",
        violation.description
    );
}

#[test]
fn doubled_slash_is_rejected_as_an_empty_segment() {
    let violation = rejection("team//api");

    assert!(
        violation
            .description
            .contains("segment 2 `` of `team//api`: is empty"),
        "{}",
        violation.description
    );
}

#[test]
fn segment_ending_in_a_separator_is_rejected() {
    let violation = rejection("team/api-");

    assert!(
        violation.description.contains("starts or ends with `-`"),
        "{}",
        violation.description
    );
}

#[test]
fn mixed_separators_are_rejected_naming_the_run() {
    for (name, run) in [
        ("team/a.-b", "`.-`"),
        ("team/a..b", "`..`"),
        ("team/a___b", "`___`"),
    ] {
        let violation = rejection(name);

        assert!(
            violation.description.contains(run),
            "{name}: {}",
            violation.description
        );
    }
}

#[test]
fn one_character_name_is_rejected_by_the_length_rule() {
    let violation = rejection("a");

    assert_eq!(violation.rule, LENGTH_RULE);
}

#[test]
fn empty_name_is_rejected_by_the_length_rule() {
    assert_eq!(rejection("").rule, LENGTH_RULE);
}

#[test]
fn name_of_257_characters_is_rejected_by_the_length_rule() {
    let violation = rejection(&"a".repeat(257));

    assert_eq!(violation.rule, LENGTH_RULE);
    assert!(
        violation.description.contains("257 characters"),
        "{}",
        violation.description
    );
}

#[test]
fn name_of_256_characters_parses() {
    assert!(RepositoryName::parse(&"a".repeat(256)).is_ok());
}

#[test]
fn name_serializes_as_its_string_and_deserializes_with_validation() {
    let name = RepositoryName::parse("team/api").expect("valid");

    assert_eq!(serde_json::to_string(&name).expect("serializes"), "\"team/api\"");
    assert!(serde_json::from_str::<RepositoryName>("\"Team\"").is_err());
}

fn segment() -> impl Strategy<Value = String> {
    let separator = prop_oneof![
        Just(".".to_owned()),
        Just("_".to_owned()),
        Just("__".to_owned()),
        "-{0,3}"
    ];
    (
        "[a-z0-9]{1,5}",
        prop::collection::vec((separator, "[a-z0-9]{1,5}"), 0..3),
    )
        .prop_map(|(head, tail)| {
            tail.into_iter()
                .fold(head, |name, (sep, part)| name + &sep + &part)
        })
}

fn valid_name() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..5)
        .prop_map(|segments| segments.join("/"))
        .prop_filter("ECR length", |name| (2..=256).contains(&name.len()))
}

proptest! {
    #[test]
    fn generated_valid_names_always_parse(name in valid_name()) {
        prop_assert!(RepositoryName::parse(&name).is_ok(), "{}", name);
    }

    #[test]
    fn a_name_that_parses_displays_back_to_the_same_string(s in "[a-z0-9._/-]{0,12}") {
        if let Ok(name) = RepositoryName::parse(&s) {
            prop_assert_eq!(name.to_string(), s);
        }
    }

    #[test]
    fn segments_join_back_to_the_name(name in valid_name()) {
        let parsed = RepositoryName::parse(&name).expect("valid");
        prop_assert_eq!(parsed.segments().collect::<Vec<_>>().join("/"), name);
    }

    #[test]
    fn every_grammar_rejection_finds_a_specific_problem(s in "[a-zA-Z0-9._/ -]{2,12}") {
        if let Err(violation) = RepositoryName::parse(&s) {
            prop_assert!(!violation.description.contains("is not a valid repository name"), "{}", violation.description);
        }
    }

    #[test]
    fn parsing_never_panics(s in "\\PC*") {
        let _ = RepositoryName::parse(&s);
    }
}
