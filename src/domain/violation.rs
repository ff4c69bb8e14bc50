//! One broken rule, reported to the caller as a `google.rpc.BadRequest` field violation.

use std::fmt;

/// One broken rule in a request: becomes a google.rpc.BadRequest field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The request field at fault, as the caller spelled it, e.g. `settings.tags["team"]`.
    pub field: String,
    /// A stable rule id such as `naming.namespace`; callers may match on it.
    pub rule: &'static str,
    /// What is wrong and how to fix it, in one or two sentences.
    pub description: String,
}

impl Violation {
    /// A violation of `rule` by `field`, described for a person.
    pub fn new(field: impl Into<String>, rule: &'static str, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule,
            description: description.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.field, self.description, self.rule)
    }
}

impl std::error::Error for Violation {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_displays_field_description_and_rule() {
        let violation = Violation::new("tag", "oci.tag.grammar", "use letters");

        assert_eq!(violation.to_string(), "tag: use letters [oci.tag.grammar]");
    }
}
