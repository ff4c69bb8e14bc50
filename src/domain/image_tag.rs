//! OCI image tags.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Violation;

/// Field named by violations of [`ImageTag::parse`].
const FIELD: &str = "tag";
/// Rule id of a tag outside the OCI grammar.
const RULE: &str = "oci.tag.grammar";
/// Most characters in a portable OCI tag.
const MAX_LENGTH: usize = 128;

/// An image tag in the portable OCI grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageTag(String);

impl ImageTag {
    /// Parses the OCI tag grammar; the violation names the first offending character.
    pub fn parse(s: &str) -> Result<ImageTag, Violation> {
        match tag_problem(s) {
            None => Ok(ImageTag(s.to_owned())),
            Some(problem) => Err(Violation::new(
                FIELD,
                RULE,
                format!(
                    "{problem}; an OCI tag is 1–{MAX_LENGTH} of `a-z A-Z 0-9 . _ -`, not starting with `.` or `-`"
                ),
            )),
        }
    }

    /// The tag as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn tag_problem(s: &str) -> Option<String> {
    let length = s.chars().count();
    let Some(first) = s.chars().next() else {
        return Some("the tag is empty".to_owned());
    };
    if length > MAX_LENGTH {
        return Some(format!("the tag has {length} characters"));
    }
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Some(format!("`{s}` starts with `{first}`"));
    }
    s.chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|(at, c)| format!("character {} `{c}` of `{s}` is not allowed", at + 1))
}

impl fmt::Display for ImageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ImageTag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageTag {
    type Error = Violation;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        ImageTag::parse(&value)
    }
}

impl From<ImageTag> for String {
    fn from(value: ImageTag) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rejection(s: &str) -> Violation {
        ImageTag::parse(s).expect_err("should be rejected")
    }

    #[test]
    fn common_tags_parse() {
        for tag in ["latest", "v1.2.3", "_internal", "2024-01-01", "A_b.C-d"] {
            assert!(ImageTag::parse(tag).is_ok(), "{tag}");
        }
    }

    #[test]
    fn empty_tag_is_rejected_naming_the_rule() {
        let violation = rejection("");

        assert_eq!((violation.field.as_str(), violation.rule), (FIELD, RULE));
        assert!(
            violation.description.contains("empty"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn tag_starting_with_a_dot_is_rejected() {
        assert!(rejection(".hidden").description.contains("starts with `.`"));
    }

    #[test]
    fn tag_with_a_plus_is_rejected_pointing_at_the_character() {
        let violation = rejection("v1+build");

        assert!(
            violation.description.contains("character 3 `+`"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn tag_of_129_characters_is_rejected_and_128_parse() {
        assert!(rejection(&"a".repeat(129)).description.contains("129 characters"));
        assert!(ImageTag::parse(&"a".repeat(128)).is_ok());
    }

    proptest! {
        #[test]
        fn generated_valid_tags_always_parse(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
            prop_assert!(ImageTag::parse(&s).is_ok());
        }

        #[test]
        fn a_tag_that_parses_displays_back_to_the_same_string(s in "[a-zA-Z0-9._+ -]{0,10}") {
            if let Ok(tag) = ImageTag::parse(&s) {
                prop_assert_eq!(tag.to_string(), s);
            }
        }

        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = ImageTag::parse(&s);
        }
    }
}
