//! ECR's wildcard tag patterns: tag-mutability exclusion filters, lifecycle
//! `tagPatternList` entries and the gateway's protected tags all match the
//! same way: `*` stands for any run of characters (none included), every other
//! character for itself, and the pattern must cover the whole tag.

use std::fmt;

/// A tag pattern: literal text with `*` wildcards.
///
/// [`TagPattern::parse`] holds the text to ECR's grammar for a filter
/// (`^[0-9a-zA-Z._*-]{1,128}$`); [`TagPattern::new`] takes any text, for
/// callers whose own rules differ (ECR checks a lifecycle `tagPatternList`
/// entry only for its number of wildcards). Matching is the same either way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagPattern(String);

/// Text that is not a tag pattern in ECR's grammar for a filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a tag pattern (1-128 of A-Z a-z 0-9 . _ - and * wildcards)")]
pub struct InvalidTagPattern(pub String);

impl TagPattern {
    /// ECR's longest filter.
    pub const MAX_LEN: usize = 128;

    /// `text` as a pattern when it meets ECR's grammar for a filter:
    /// 1-128 of `A-Z a-z 0-9 . _ -` and `*`.
    pub fn parse(text: &str) -> Result<Self, InvalidTagPattern> {
        if Self::is_valid(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidTagPattern(text.to_owned()))
        }
    }

    /// Any text as a pattern, unchecked: for patterns whose rules are not ECR's
    /// filter grammar (a lifecycle `tagPatternList` entry).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// True when `text` meets ECR's grammar for a filter (`^[0-9a-zA-Z._*-]{1,128}$`).
    pub fn is_valid(text: &str) -> bool {
        (1..=Self::MAX_LEN).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number of `*` wildcards.
    pub fn wildcards(&self) -> usize {
        self.0.matches('*').count()
    }

    /// Whether `tag` matches the whole pattern, each `*` standing for any run
    /// of characters.
    pub fn matches(&self, tag: &str) -> bool {
        Self::text_matches(&self.0, tag)
    }

    /// The same match for a pattern held as plain text (a configured or
    /// stored filter checked elsewhere), without building a `TagPattern`.
    pub fn text_matches(pattern: &str, tag: &str) -> bool {
        wildcard_match(pattern.as_bytes(), tag.as_bytes())
    }
}

impl AsRef<str> for TagPattern {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Greedy matching that backtracks only to the last `*`: linear for ECR's short tags.
/// Bytes are safe here: `*` never occurs inside a multi-byte UTF-8 character, and
/// literal bytes match exactly when the characters they encode do.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                last_star = Some((p + 1, t));
                p += 1;
            }
            Some(&byte) if byte == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match last_star {
                Some((after_star, matched_from)) => {
                    last_star = Some((after_star, matched_from + 1));
                    p = after_star;
                    t = matched_from + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    fn pattern(text: &str) -> TagPattern {
        TagPattern::parse(text).expect("valid pattern")
    }

    /// The pattern as an anchored regex: each literal run escaped, `*` as `.*`.
    fn as_regex(pattern: &str) -> Regex {
        let body: Vec<String> = pattern.split('*').map(regex::escape).collect();
        Regex::new(&format!("^(?s:{})$", body.join(".*"))).expect("escaped regex")
    }

    #[test]
    fn wildcards_match_runs_of_characters() {
        for (pattern_text, tag, want) in [
            ("v*", "v1.2.3", true),
            ("v*", "latest", false),
            ("release-*", "release-", true),
            ("*-prod", "api-prod", true),
            ("*-prod", "api-prod-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-b-c-d", false),
            ("ab*ba", "aba", false),
            ("a*a", "a", false),
            ("*-rc*", "v1-rc2", true),
            ("prod*", "my-prod", false),
            ("*prod*", "repo-production", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
            ("**", "anything", true),
        ] {
            assert_eq!(pattern(pattern_text).matches(tag), want, "{pattern_text} ~ {tag}");
            assert_eq!(
                TagPattern::text_matches(pattern_text, tag),
                want,
                "{pattern_text} ~ {tag}"
            );
        }
    }

    #[test]
    fn the_grammar_is_ecrs_filter_grammar() {
        for good in ["*", "v*", "release-1.2_3", "A-Z*a.z", &"a".repeat(128)] {
            assert!(TagPattern::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "sp ace", "a/b", "tag:1", "é*", "v*\n", &"a".repeat(129)] {
            assert_eq!(
                TagPattern::parse(bad),
                Err(InvalidTagPattern(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn new_takes_any_text_and_counts_its_wildcards() {
        let pattern = TagPattern::new("é*/x*");
        assert_eq!(pattern.as_str(), "é*/x*");
        assert_eq!(pattern.wildcards(), 2);
        assert!(pattern.matches("éa/xb"));
        assert!(!pattern.matches("e/x"));
        assert_eq!(pattern.to_string(), "é*/x*");
    }

    /// Text in ECR's grammar, with wildcards and a few repeated letters so that
    /// patterns and tags overlap often.
    fn pattern_text() -> impl Strategy<Value = String> {
        "[ab*.-]{1,12}"
    }

    fn tag_text() -> impl Strategy<Value = String> {
        "[ab.-]{0,16}"
    }

    proptest! {
        #[test]
        fn a_pattern_without_wildcards_matches_only_itself(literal in "[a-zA-Z0-9._-]{1,20}", tag in "[a-zA-Z0-9._-]{0,20}") {
            let pattern = pattern(&literal);
            prop_assert!(pattern.matches(&literal));
            prop_assert_eq!(pattern.matches(&tag), tag == literal);
        }

        #[test]
        fn a_lone_wildcard_matches_everything(tag in any::<String>()) {
            prop_assert!(pattern("*").matches(&tag));
        }

        #[test]
        fn a_trailing_wildcard_matches_exactly_the_strings_with_the_prefix(prefix in "[a-z0-9._-]{1,8}", tag in "[a-z0-9._-]{0,12}") {
            let pattern = pattern(&format!("{prefix}*"));
            prop_assert_eq!(pattern.matches(&tag), tag.starts_with(&prefix));
            let tagged = format!("{prefix}{tag}");
            prop_assert!(pattern.matches(&tagged));
        }

        #[test]
        fn a_leading_wildcard_matches_exactly_the_strings_with_the_suffix(suffix in "[a-z0-9._-]{1,8}", tag in "[a-z0-9._-]{0,12}") {
            prop_assert_eq!(pattern(&format!("*{suffix}")).matches(&tag), tag.ends_with(&suffix));
        }

        #[test]
        fn matching_agrees_with_a_regex_translation(pattern_text in pattern_text(), tag in tag_text()) {
            prop_assert_eq!(
                pattern(&pattern_text).matches(&tag),
                as_regex(&pattern_text).is_match(&tag),
                "{} ~ {}", pattern_text, tag
            );
        }

        #[test]
        fn unchecked_patterns_agree_with_a_regex_translation(pattern_text in "[aé/*]{0,8}", tag in "[aé/]{0,10}") {
            prop_assert_eq!(
                TagPattern::new(pattern_text.clone()).matches(&tag),
                as_regex(&pattern_text).is_match(&tag)
            );
        }

        #[test]
        fn the_grammar_agrees_with_ecrs_regex(text in "[a-zA-Z0-9._*/: -]{0,130}") {
            let ecr = Regex::new("^[0-9a-zA-Z._*-]{1,128}$").expect("literal regex");
            prop_assert_eq!(TagPattern::parse(&text).is_ok(), ecr.is_match(&text));
        }
    }
}
