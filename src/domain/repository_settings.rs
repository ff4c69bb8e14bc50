//! Repository settings with a fixed set of ECR values.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::TagPattern;

/// Whether tags in a repository can be moved to another image, as ECR names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TagMutability {
    /// Tags can be overwritten.
    #[serde(rename = "MUTABLE")]
    Mutable,
    /// Tags can never be overwritten.
    #[serde(rename = "IMMUTABLE")]
    Immutable,
    /// Immutable, except tags matching the exclusion filters.
    #[serde(rename = "IMMUTABLE_WITH_EXCLUSION")]
    ImmutableWithExclusion,
    /// Mutable, except tags matching the exclusion filters.
    #[serde(rename = "MUTABLE_WITH_EXCLUSION")]
    MutableWithExclusion,
}

impl TagMutability {
    /// Every value, in ECR's order.
    pub const ALL: [TagMutability; 4] = [
        TagMutability::Mutable,
        TagMutability::Immutable,
        TagMutability::ImmutableWithExclusion,
        TagMutability::MutableWithExclusion,
    ];

    /// ECR's spelling, e.g. `IMMUTABLE_WITH_EXCLUSION`.
    pub fn as_ecr_str(self) -> &'static str {
        match self {
            TagMutability::Mutable => "MUTABLE",
            TagMutability::Immutable => "IMMUTABLE",
            TagMutability::ImmutableWithExclusion => "IMMUTABLE_WITH_EXCLUSION",
            TagMutability::MutableWithExclusion => "MUTABLE_WITH_EXCLUSION",
        }
    }

    /// The value ECR spells `s`, if any (exact, case-sensitive).
    pub fn from_ecr_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_ecr_str() == s)
    }

    /// True for the `*_WITH_EXCLUSION` values, which need 1–5 exclusion filters.
    pub fn has_exclusions(self) -> bool {
        matches!(
            self,
            TagMutability::ImmutableWithExclusion | TagMutability::MutableWithExclusion
        )
    }

    /// Whether `tag` is immutable under this setting, with ECR's semantics:
    /// `IMMUTABLE` always, `MUTABLE` never, `IMMUTABLE_WITH_EXCLUSION` unless
    /// one of `exclusion_filters` matches the tag, `MUTABLE_WITH_EXCLUSION`
    /// only if one matches. The filters are [`TagPattern`]s or their text.
    pub fn is_immutable<F: AsRef<str>>(self, tag: &str, exclusion_filters: &[F]) -> bool {
        let excluded = || {
            exclusion_filters
                .iter()
                .any(|filter| TagPattern::text_matches(filter.as_ref(), tag))
        };
        match self {
            TagMutability::Immutable => true,
            TagMutability::Mutable => false,
            TagMutability::ImmutableWithExclusion => !excluded(),
            TagMutability::MutableWithExclusion => excluded(),
        }
    }
}

impl fmt::Display for TagMutability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_ecr_str())
    }
}

/// Encryption at rest of a repository's images.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Encryption {
    /// Amazon S3-managed keys (ECR's default).
    #[serde(rename = "AES256")]
    Aes256,
    /// AWS KMS; `key` is a key ARN, or `None` for the AWS-managed `aws/ecr` key.
    #[serde(rename = "KMS")]
    Kms {
        /// The KMS key, if not the AWS-managed one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

impl Encryption {
    /// ECR's `encryptionType`: `AES256` or `KMS`.
    pub fn encryption_type_str(&self) -> &'static str {
        match self {
            Encryption::Aes256 => "AES256",
            Encryption::Kms { .. } => "KMS",
        }
    }

    /// The KMS key, when there is one.
    pub fn kms_key(&self) -> Option<&str> {
        match self {
            Encryption::Aes256 => None,
            Encryption::Kms { key } => key.as_deref(),
        }
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kms_key() {
            Some(key) => write!(f, "KMS with key `{key}`"),
            None => f.write_str(self.encryption_type_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutability_round_trips_through_its_ecr_string() {
        for mutability in TagMutability::ALL {
            assert_eq!(
                TagMutability::from_ecr_str(mutability.as_ecr_str()),
                Some(mutability)
            );
        }
    }

    #[test]
    fn unknown_or_lowercase_mutability_strings_are_not_recognised() {
        assert_eq!(TagMutability::from_ecr_str("immutable"), None);
        assert_eq!(TagMutability::from_ecr_str("SOMETIMES"), None);
    }

    #[test]
    fn only_the_with_exclusion_mutabilities_have_exclusions() {
        let with: Vec<_> = TagMutability::ALL
            .into_iter()
            .filter(|m| m.has_exclusions())
            .collect();

        assert_eq!(
            with,
            [
                TagMutability::ImmutableWithExclusion,
                TagMutability::MutableWithExclusion
            ]
        );
    }

    #[test]
    fn immutable_and_mutable_ignore_the_filters() {
        let filters = [TagPattern::parse("dev-*").expect("valid pattern")];
        for tag in ["dev-1", "v1.0.0", ""] {
            assert!(TagMutability::Immutable.is_immutable(tag, &filters), "{tag}");
            assert!(TagMutability::Immutable.is_immutable::<&str>(tag, &[]), "{tag}");
            assert!(!TagMutability::Mutable.is_immutable(tag, &filters), "{tag}");
            assert!(!TagMutability::Mutable.is_immutable::<&str>(tag, &[]), "{tag}");
        }
    }

    #[test]
    fn exclusion_filters_flip_the_rule_for_matching_tags() {
        let filters = vec!["dev-*".to_owned(), "*-rc*".to_owned()];
        for (tag, excluded) in [
            ("dev-", true),
            ("v1-rc2", true),
            ("prod-1", false),
            ("latest", false),
        ] {
            assert_eq!(
                TagMutability::ImmutableWithExclusion.is_immutable(tag, &filters),
                !excluded,
                "{tag}"
            );
            assert_eq!(
                TagMutability::MutableWithExclusion.is_immutable(tag, &filters),
                excluded,
                "{tag}"
            );
        }
        let patterns: Vec<TagPattern> = filters
            .iter()
            .map(|f| TagPattern::parse(f).expect("valid pattern"))
            .collect();
        assert!(!TagMutability::ImmutableWithExclusion.is_immutable("dev-7", &patterns));
        assert!(TagMutability::MutableWithExclusion.is_immutable("dev-7", &patterns));
        // No filter: nothing is excluded.
        assert!(TagMutability::ImmutableWithExclusion.is_immutable::<String>("dev-7", &[]));
        assert!(!TagMutability::MutableWithExclusion.is_immutable::<String>("dev-7", &[]));
    }

    #[test]
    fn mutability_serializes_with_the_ecr_string() {
        let json = serde_json::to_string(&TagMutability::ImmutableWithExclusion).expect("serializes");

        assert_eq!(json, "\"IMMUTABLE_WITH_EXCLUSION\"");
        assert_eq!(
            serde_json::from_str::<TagMutability>("\"MUTABLE\"").expect("parses"),
            TagMutability::Mutable
        );
    }

    #[test]
    fn encryption_names_its_ecr_type() {
        assert_eq!(Encryption::Aes256.encryption_type_str(), "AES256");
        assert_eq!(Encryption::Kms { key: None }.encryption_type_str(), "KMS");
    }

    #[test]
    fn encryption_serializes_with_a_type_field() {
        let kms = Encryption::Kms {
            key: Some("arn:k".into()),
        };

        assert_eq!(
            serde_json::to_string(&kms).expect("serializes"),
            r#"{"type":"KMS","key":"arn:k"}"#
        );
        assert_eq!(
            serde_json::to_string(&Encryption::Aes256).expect("serializes"),
            r#"{"type":"AES256"}"#
        );
    }
}
