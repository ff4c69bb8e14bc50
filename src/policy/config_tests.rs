//! The `[policy]` section as operators write it.

use super::*;
use crate::domain::TagMutability;

/// Wraps `[policy]` TOML the way the gateway's config file holds it.
#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
struct File {
    policy: OrgPolicyConfig,
}

const FULL_EXAMPLE: &str = include_str!("example-policy.toml");

fn parse(text: &str) -> Result<OrgPolicyConfig, toml::de::Error> {
    toml::from_str::<File>(text).map(|file| file.policy)
}

#[test]
fn full_example_deserializes_and_compiles() {
    let config = parse(FULL_EXAMPLE).expect("example parses");

    assert_eq!(config.naming.namespaces, ["payments", "search", "platform"]);
    assert_eq!(
        config.settings.allowed_tag_mutability[1],
        TagMutability::ImmutableWithExclusion
    );
    assert_eq!(
        config.tags.allowed["cost-center"],
        AllowedValues::Pattern {
            pattern: "^cc-[0-9]{4}$".into()
        }
    );
    assert_eq!(config.settings.encryption.encryption_type, EncryptionType::Kms);
    assert!(
        config
            .settings
            .lifecycle_templates
            .namespaces
            .contains_key("payments")
    );
    OrgPolicy::compile(&config).expect("example compiles");
}

#[test]
fn full_example_survives_a_toml_round_trip() {
    let config = parse(FULL_EXAMPLE).expect("example parses");

    let written = toml::to_string(&File {
        policy: config.clone(),
    })
    .expect("serializes");

    assert_eq!(parse(&written).expect("reparses"), config);
}

#[test]
fn empty_policy_section_takes_the_defaults() {
    assert_eq!(parse("[policy]").expect("parses"), OrgPolicyConfig::default());
}

#[test]
fn unknown_key_is_refused() {
    let error = parse("[policy.naming]\nnamespace = [\"x\"]").expect_err("typo");

    assert!(error.to_string().contains("unknown field `namespace`"), "{error}");
}

#[test]
fn allowed_values_with_both_values_and_pattern_is_refused() {
    let error =
        parse("[policy.tags.allowed]\nenv = { values = [\"dev\"], pattern = \"d.*\" }").expect_err("both");

    assert!(error.to_string().contains("exactly one of"), "{error}");
}

#[test]
fn unknown_mutability_is_refused() {
    assert!(parse("[policy.settings]\ndefault_tag_mutability = \"immutable\"").is_err());
}
