//! AWS account ids.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Violation;

/// Field named by violations of [`AccountId::parse`].
const FIELD: &str = "account_id";
/// Rule id of an account id that is not 12 digits.
const RULE: &str = "aws.account-id.format";

/// A 12-digit AWS account id (leading zeros kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// Parses exactly 12 ASCII digits.
    pub fn parse(s: &str) -> Result<AccountId, Violation> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(s.to_owned()))
        } else {
            Err(Violation::new(FIELD, RULE, describe_problem(s)))
        }
    }

    /// The account id as 12 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn describe_problem(s: &str) -> String {
    let expected = "an AWS account id is exactly 12 digits, e.g. `123456789012` (keep leading zeros)";
    match s.chars().find(|c| !c.is_ascii_digit()) {
        Some(c) => format!("`{s}` contains `{c}`; {expected}"),
        None => format!("`{s}` has {} digits; {expected}", s.chars().count()),
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AccountId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = Violation;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        AccountId::parse(&value)
    }
}

impl From<AccountId> for String {
    fn from(value: AccountId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn twelve_digits_with_leading_zeros_parse() {
        let account = AccountId::parse("000123456789").expect("valid");

        assert_eq!(account.as_str(), "000123456789");
    }

    #[test]
    fn eleven_digits_are_rejected_counting_the_digits() {
        let violation = AccountId::parse("12345678901").expect_err("too short");

        assert_eq!((violation.field.as_str(), violation.rule), (FIELD, RULE));
        assert!(
            violation.description.contains("has 11 digits"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn account_id_with_a_letter_is_rejected_naming_the_letter() {
        let violation = AccountId::parse("12345678901x").expect_err("letter");

        assert!(
            violation.description.contains("contains `x`"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn unicode_digits_are_rejected() {
        assert!(AccountId::parse("１２３４５６７８９０１２").is_err());
    }

    proptest! {
        #[test]
        fn generated_account_ids_parse_and_display_back(s in "[0-9]{12}") {
            let account = AccountId::parse(&s).expect("valid");
            prop_assert_eq!(account.to_string(), s);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = AccountId::parse(&s);
        }
    }
}
