//! Content digests.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Violation;

/// Field named by violations of [`Digest::parse`].
const FIELD: &str = "digest";
/// Rule id of a digest not in `sha256:<64 hex>` form.
const RULE: &str = "oci.digest.format";
/// The only algorithm ECR uses.
const PREFIX: &str = "sha256:";
/// Hex digits in a SHA-256 digest.
const HEX_LENGTH: usize = 64;
/// How a digest looks, for descriptions.
const EXPECTED: &str = "a digest is `sha256:` followed by 64 lowercase hex digits, \
    e.g. `sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`";

/// An image digest: `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; the violation says what differs from that form.
    pub fn parse(s: &str) -> Result<Digest, Violation> {
        match digest_problem(s) {
            None => Ok(Digest(s.to_owned())),
            Some(problem) => Err(Violation::new(FIELD, RULE, format!("{problem}; {EXPECTED}"))),
        }
    }

    /// The whole digest, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The algorithm, always `sha256`.
    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex digits after `sha256:`.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix(PREFIX).unwrap_or(&self.0)
    }
}

fn digest_problem(s: &str) -> Option<String> {
    let Some(hex) = s.strip_prefix(PREFIX) else {
        return Some(match s.split_once(':') {
            Some((algorithm, _)) => format!("`{algorithm}` is not a supported algorithm"),
            None => format!("`{s}` has no `sha256:` prefix"),
        });
    };
    let is_hex_digit = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if let Some(c) = hex.chars().find(|c| !is_hex_digit(*c)) {
        return Some(match c.is_ascii_hexdigit() {
            true => format!("`{c}` is uppercase: use `{}{}`", PREFIX, hex.to_ascii_lowercase()),
            false => format!("`{c}` is not a hex digit"),
        });
    }
    (hex.len() != HEX_LENGTH).then(|| format!("the digest has {} hex digits", hex.len()))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = Violation;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Digest::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(value: Digest) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn rejection(s: &str) -> Violation {
        Digest::parse(s).expect_err("should be rejected")
    }

    #[test]
    fn sha256_digest_parses_and_splits_into_algorithm_and_hex() {
        let digest = Digest::parse(EMPTY_SHA256).expect("valid");

        assert_eq!(digest.algorithm(), "sha256");
        assert_eq!(digest.hex().len(), 64);
    }

    #[test]
    fn digest_without_prefix_is_rejected_describing_the_expected_form() {
        let violation = rejection(&EMPTY_SHA256[7..]);

        assert_eq!((violation.field.as_str(), violation.rule), (FIELD, RULE));
        assert!(
            violation.description.contains("no `sha256:` prefix"),
            "{}",
            violation.description
        );
        assert!(
            violation.description.contains("64 lowercase hex digits"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn sha512_digest_is_rejected_naming_the_algorithm() {
        assert!(
            rejection("sha512:abcd")
                .description
                .contains("`sha512` is not a supported")
        );
    }

    #[test]
    fn uppercase_hex_is_rejected_suggesting_the_lowercase_digest() {
        let violation = rejection(&EMPTY_SHA256.to_uppercase().replace("SHA256", "sha256"));

        assert!(
            violation.description.contains(&format!("use `{EMPTY_SHA256}`")),
            "{}",
            violation.description
        );
    }

    #[test]
    fn short_digest_is_rejected_counting_the_digits() {
        assert!(rejection("sha256:abc").description.contains("has 3 hex digits"));
    }

    proptest! {
        #[test]
        fn generated_digests_parse_and_display_back(hex in "[0-9a-f]{64}") {
            let s = format!("sha256:{hex}");
            let digest = Digest::parse(&s).expect("valid");
            prop_assert_eq!(digest.to_string(), s);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = Digest::parse(&s);
        }
    }
}
