//! Naming rules: ECR's grammar, then the team namespace, pattern, depth and reserved words.

use regex::Regex;

use crate::config::NamingConfig;
use crate::domain::{RepositoryName, Violation};

/// Field of every naming violation.
const FIELD: &str = "repository";

/// The naming rules, compiled.
#[derive(Debug, Clone)]
pub(super) struct NamingRules {
    config: NamingConfig,
    pattern: Regex,
}

impl NamingRules {
    /// Builds the rules; each problem names its config key.
    pub(super) fn compile(config: &NamingConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(segment_problems("policy.naming.namespaces", &config.namespaces));
        problems.extend(segment_problems("policy.naming.reserved", &config.reserved));
        problems.extend(reserved_namespace_problems(config));
        if config.max_depth < 2 {
            problems.push(format!(
                "policy.naming.max_depth: {} leaves no room for a name after the namespace; use at least 2",
                config.max_depth
            ));
        }
        let pattern = super::anchored_regex("policy.naming.pattern", &config.pattern)
            .map_err(|problem| problems.push(problem))
            .ok();
        match pattern {
            Some(pattern) if problems.is_empty() => Ok(Self {
                config: config.clone(),
                pattern,
            }),
            _ => Err(problems),
        }
    }

    /// Checks `raw` against every naming rule; several problems may be reported at once.
    pub(super) fn check(&self, raw: &str) -> Result<RepositoryName, Vec<Violation>> {
        let parsed = RepositoryName::parse(raw);
        let mut violations: Vec<Violation> = parsed.clone().err().into_iter().collect();
        if !raw.is_empty() {
            let segments: Vec<&str> = raw.split('/').collect();
            violations.extend(self.namespace_violation(segments.first().copied().unwrap_or_default()));
            violations.extend(self.depth_violation(raw, segments.len()));
            violations.extend(self.reserved_violations(&segments));
            let grammar_failed = violations.iter().any(|v| v.rule == RepositoryName::GRAMMAR_RULE);
            if !grammar_failed {
                violations.extend(self.pattern_violation(raw));
            }
        }
        match parsed {
            Ok(name) if violations.is_empty() => Ok(name),
            _ => Err(violations),
        }
    }

    fn namespace_violation(&self, first: &str) -> Option<Violation> {
        let namespaces = &self.config.namespaces;
        if namespaces.is_empty() || namespaces.iter().any(|n| n == first) {
            return None;
        }
        Some(Violation::new(
            FIELD,
            "naming.namespace",
            format!(
                "`{first}` is not a team namespace; the first path segment must be one of: {}",
                backticked(namespaces)
            ),
        ))
    }

    fn pattern_violation(&self, raw: &str) -> Option<Violation> {
        let pattern = &self.config.pattern;
        let description = match raw.split_once('/') {
            None => format!(
                "`{raw}` is only a namespace; add the repository's own name after it, e.g. `{raw}/my-service`"
            ),
            Some((_, rest)) if self.pattern.is_match(rest) => return None,
            Some((namespace, rest)) => format!(
                "`{rest}` (the name after `{namespace}/`) does not match the naming pattern `{pattern}`"
            ),
        };
        Some(Violation::new(FIELD, "naming.pattern", description))
    }

    fn depth_violation(&self, raw: &str, depth: usize) -> Option<Violation> {
        let max = self.config.max_depth;
        (depth > max).then(|| {
            Violation::new(
                FIELD,
                "naming.max-depth",
                format!(
                    "`{raw}` has {depth} path segments; at most {max} are allowed, counting the namespace"
                ),
            )
        })
    }

    fn reserved_violations(&self, segments: &[&str]) -> Vec<Violation> {
        let reserved = &self.config.reserved;
        let mut hits: Vec<&str> = Vec::new();
        for segment in segments {
            if reserved.iter().any(|r| r == segment) && !hits.contains(segment) {
                hits.push(segment);
            }
        }
        hits.into_iter()
            .map(|segment| {
                Violation::new(
                    FIELD,
                    "naming.reserved",
                    format!("`{segment}` is reserved and cannot be a path segment (reserved: {}); choose another name", backticked(reserved)),
                )
            })
            .collect()
    }
}

fn segment_problems(key: &str, segments: &[String]) -> Vec<String> {
    segments
        .iter()
        .enumerate()
        .filter(|(_, s)| !RepositoryName::is_valid_segment(s))
        .map(|(i, s)| format!("{key}[{i}]: `{s}` is not a valid repository name segment (lowercase letters and digits joined by `.`, `_`, `__` or `-`)"))
        .collect()
}

fn reserved_namespace_problems(config: &NamingConfig) -> Vec<String> {
    config
        .namespaces
        .iter()
        .filter(|n| config.reserved.contains(n))
        .map(|n| format!("policy.naming.reserved: `{n}` is also a team namespace in policy.naming.namespaces; remove it from one list"))
        .collect()
}

/// `a`, `b` and `c` as "`a`, `b`, `c`".
pub(super) fn backticked(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "naming_tests.rs"]
mod tests;
