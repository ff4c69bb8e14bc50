use proptest::prelude::*;

use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

fn parsed(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap_or_else(|violations| panic!("`{s}` should parse: {violations:?}"))
}

fn rejection(s: &str) -> Vec<Violation> {
    ImageRef::parse(s).expect_err("should be rejected")
}

fn rules(s: &str) -> Vec<&'static str> {
    rejection(s).into_iter().map(|v| v.rule).collect()
}

fn tag(s: &str) -> ImageTag {
    ImageTag::parse(s).expect("valid tag")
}

fn digest() -> Digest {
    Digest::parse(DIGEST).expect("valid digest")
}

#[test]
fn name_and_tag_select_by_tag_without_a_registry() {
    let reference = parsed("payments/api:v1.2.3");

    assert_eq!(reference.repository.as_str(), "payments/api");
    assert_eq!(reference.selector, ImageSelector::Tag(tag("v1.2.3")));
    assert_eq!((reference.registry, reference.tag_hint), (None, None));
}

#[test]
fn name_and_digest_select_by_digest() {
    let reference = parsed(&format!("payments/api@{DIGEST}"));

    assert_eq!(reference.selector, ImageSelector::Digest(digest()));
    assert_eq!(reference.digest(), Some(&digest()));
    assert_eq!(reference.tag(), None);
}

#[test]
fn a_digest_wins_over_a_tag_written_next_to_it_and_the_tag_is_kept_as_a_hint() {
    let reference = parsed(&format!("payments/api:v1@{DIGEST}"));

    assert_eq!(reference.selector, ImageSelector::Digest(digest()));
    assert_eq!(reference.tag_hint, Some(tag("v1")));
    assert_eq!(reference.to_string(), format!("payments/api:v1@{DIGEST}"));
}

#[test]
fn a_full_ecr_uri_names_its_account_and_region() {
    let reference = parsed(&format!("{HOST}/payments/api:v1"));

    let host = reference.registry.expect("registry");
    assert_eq!(host.account_id.as_str(), "123456789012");
    assert_eq!(host.region, "eu-west-1");
}

#[test]
fn a_china_region_host_parses_and_displays_under_amazonaws_com_cn() {
    let text = "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/payments/api:v1";

    assert_eq!(parsed(text).to_string(), text);
}

#[test]
fn a_dual_stack_host_is_the_same_registry_and_displays_as_the_standard_host() {
    let reference = parsed("123456789012.dkr-ecr.eu-west-1.on.aws/payments/api:v1");

    assert_eq!(reference, parsed(&format!("{HOST}/payments/api:v1")));
    assert_eq!(reference.to_string(), format!("{HOST}/payments/api:v1"));
}

#[test]
fn an_uppercase_registry_host_is_read_case_insensitively() {
    let reference = parsed("123456789012.DKR.ECR.EU-WEST-1.AMAZONAWS.COM/payments/api:v1");

    assert_eq!(reference.to_string(), format!("{HOST}/payments/api:v1"));
}

#[test]
fn a_bare_name_is_refused_asking_for_a_tag_or_digest() {
    let violations = rejection("payments/api");

    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].rule, MISSING_SELECTOR_RULE);
    assert!(violations[0].description.contains("add `:tag` or `@sha256:…`"));
}

#[test]
fn a_bare_ecr_uri_is_refused_asking_for_a_tag_or_digest() {
    assert_eq!(
        rules(&format!("{HOST}/payments/api")),
        vec![MISSING_SELECTOR_RULE]
    );
}

#[test]
fn docker_hub_and_other_registries_are_refused_showing_the_ecr_form() {
    let violations = rejection("docker.io/library/nginx:1.27");

    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].rule, HOST_RULE);
    assert!(
        violations[0]
            .description
            .contains("only ECR references are accepted")
    );
    assert!(
        violations[0]
            .description
            .contains("ACCOUNT.dkr.ecr.REGION.amazonaws.com/name:tag")
    );
}

#[test]
fn a_registry_with_a_port_is_a_host_not_a_tag() {
    let violations = rejection("localhost:5000/payments/api:v1");

    assert_eq!(
        violations.iter().map(|v| v.rule).collect::<Vec<_>>(),
        vec![HOST_RULE]
    );
    assert!(violations[0].description.contains("`localhost:5000`"));
}

#[test]
fn ecr_public_is_refused_by_name() {
    let violations = rejection("public.ecr.aws/nginx/nginx:1.27");

    assert!(violations[0].description.contains("ECR Public"), "{violations:?}");
}

#[test]
fn a_url_scheme_is_refused_asking_to_remove_it() {
    let violations = rejection(&format!("https://{HOST}/payments/api:v1"));

    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].description.contains("remove `https://`"));
}

#[test]
fn an_ecr_host_with_a_short_account_keeps_the_account_rule() {
    let found = rules("12345678901.dkr.ecr.eu-west-1.amazonaws.com/payments/api:v1");

    assert_eq!(found, vec!["aws.account-id.format"]);
}

#[test]
fn an_ecr_host_with_a_made_up_region_is_refused() {
    let violations = rejection("123456789012.dkr.ecr.moon.amazonaws.com/payments/api:v1");

    assert_eq!(violations[0].rule, HOST_RULE);
    assert!(violations[0].description.contains("`moon`"), "{violations:?}");
}

#[test]
fn a_china_region_under_the_global_domain_is_refused_naming_the_right_domain() {
    let violations = rejection("123456789012.dkr.ecr.cn-north-1.amazonaws.com/payments/api:v1");

    assert!(
        violations[0].description.contains("`.amazonaws.com.cn`"),
        "{violations:?}"
    );
}

#[test]
fn a_bad_name_and_a_bad_tag_are_both_reported_with_their_own_rules() {
    let found = rules("payments//api:bad+tag");

    assert_eq!(found, vec![RepositoryName::GRAMMAR_RULE, "oci.tag.grammar"]);
}

#[test]
fn a_bad_host_a_bad_name_and_a_bad_digest_are_all_reported() {
    let found = rules("ghcr.io/Payments/API@sha256:abc");

    assert_eq!(
        found,
        vec![HOST_RULE, RepositoryName::GRAMMAR_RULE, "oci.digest.format"]
    );
}

#[test]
fn every_violation_names_the_reference_field() {
    let violations = rejection("ghcr.io/Payments/API:bad+tag@sha512:abc");

    assert!(
        violations.iter().all(|v| v.field == "reference"),
        "{violations:?}"
    );
}

#[test]
fn an_empty_tag_after_the_colon_is_a_tag_problem_not_a_missing_tag() {
    assert_eq!(rules("payments/api:"), vec!["oci.tag.grammar"]);
}

#[test]
fn empty_references_are_refused_showing_the_accepted_forms() {
    let violations = rejection("");

    assert_eq!(violations[0].rule, EMPTY_RULE);
    assert!(violations[0].description.contains("`name:tag`"));
}

#[test]
fn references_over_1024_characters_are_refused_and_1024_are_measured_normally() {
    let too_long = format!("payments/api:{}", "a".repeat(1024 - 12));
    let at_limit = format!("payments/api:{}", "a".repeat(1024 - 13));

    assert_eq!(rules(&too_long), vec![TOO_LONG_RULE]);
    assert_eq!(rules(&at_limit), vec!["oci.tag.grammar"]);
}

#[test]
fn the_selector_shows_the_tag_or_digest_as_written() {
    assert_eq!(ImageSelector::Tag(tag("v1")).as_str(), "v1");
    assert_eq!(ImageSelector::Digest(digest()).as_str(), DIGEST);
}

#[test]
fn pinned_uris_name_the_registry_host_and_the_digest() {
    let name = RepositoryName::parse("payments/api").expect("name");

    assert_eq!(
        pinned_uri("123456789012", "eu-west-1", &name, &digest()),
        format!("{HOST}/payments/api@{DIGEST}")
    );
    assert_eq!(
        pinned_uri("123456789012", "cn-northwest-1", &name, &digest()),
        format!("123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn/payments/api@{DIGEST}")
    );
}

#[test]
fn a_pinned_uri_parses_back_to_its_registry_repository_and_digest() {
    let name = RepositoryName::parse("payments/api").expect("name");

    let reference = parsed(&pinned_uri("123456789012", "us-gov-west-1", &name, &digest()));

    assert_eq!(
        reference.registry.map(|h| h.region),
        Some("us-gov-west-1".to_owned())
    );
    assert_eq!(
        (reference.repository, reference.selector),
        (name, ImageSelector::Digest(digest()))
    );
}

/// Any valid reference: optional host, a repository, then a tag, a digest or both.
fn valid_reference() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        Just(String::new()),
        "[0-9]{12}".prop_map(|account| format!("{account}.dkr.ecr.us-east-1.amazonaws.com/")),
        "[0-9]{12}".prop_map(|account| format!("{account}.dkr.ecr.cn-north-1.amazonaws.com.cn/")),
    ];
    let name = "[a-z0-9]{2,8}(/[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?){0,2}";
    let tag = proptest::option::of("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,30}");
    let digest = proptest::option::of("[0-9a-f]{64}");
    (host, name, tag, digest)
        .prop_filter("a tag or a digest", |(_, _, tag, digest)| {
            tag.is_some() || digest.is_some()
        })
        .prop_map(|(host, name, tag, digest)| {
            let tag = tag.map_or(String::new(), |t| format!(":{t}"));
            let digest = digest.map_or(String::new(), |d| format!("@sha256:{d}"));
            format!("{host}{name}{tag}{digest}")
        })
}

proptest! {
    #[test]
    fn generated_valid_references_always_parse(text in valid_reference()) {
        prop_assert!(ImageRef::parse(&text).is_ok(), "{}", text);
    }

    #[test]
    fn a_valid_reference_displays_back_to_itself_and_reparses_equal(text in valid_reference()) {
        let reference = ImageRef::parse(&text).expect("valid");
        prop_assert_eq!(reference.to_string(), text);
        prop_assert_eq!(ImageRef::parse(&reference.to_string()), Ok(reference));
    }

    #[test]
    fn any_reference_that_parses_displays_to_a_string_that_reparses_equal(
        text in "([a-zA-Z0-9.:-]{1,20}/)?[a-zA-Z0-9._/-]{0,20}(:[a-zA-Z0-9._-]{0,8})?(@sha256:[0-9a-f]{64})?"
    ) {
        if let Ok(reference) = ImageRef::parse(&text) {
            prop_assert_eq!(ImageRef::parse(&reference.to_string()), Ok(reference));
        }
    }

    #[test]
    fn parsing_never_panics_and_every_violation_names_the_reference_field(text in "\\PC{0,300}") {
        if let Err(violations) = ImageRef::parse(&text) {
            prop_assert!(!violations.is_empty());
            prop_assert!(violations.iter().all(|v| v.field == "reference"));
        }
    }
}
