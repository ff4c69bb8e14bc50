//! Protection rules: tag patterns that deletion through the gateway never
//! touches (DeleteImages, cleanup), org-wide or per namespace.

use crate::domain::TagPattern;

pub use crate::config::{CleanupConfig, NamespaceCleanup, RetentionFloor};

/// Problems in `[policy.cleanup]`, each naming its key.
pub fn config_problems(config: &CleanupConfig) -> Vec<String> {
    let check = |key: String, patterns: &[String]| {
        patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| !TagPattern::is_valid(p))
            .map(|(i, p)| {
                format!("{key}[{i}]: `{p}` is not a tag pattern (1-128 of A-Z a-z 0-9 . _ - and * wildcards)")
            })
            .collect::<Vec<_>>()
    };
    let floors = |key: String, floors: &[RetentionFloor]| {
        let patterns: Vec<String> = floors.iter().map(|f| f.tags.clone()).collect();
        let mut problems = check(format!("{key}.tags"), &patterns);
        problems.extend(
            floors
                .iter()
                .enumerate()
                .filter(|(_, f)| f.count == 0)
                .map(|(i, _)| format!("{key}[{i}].count: keep at least 1 image")),
        );
        problems
    };
    let mut problems = check("policy.cleanup.protected_tags".into(), &config.protected_tags);
    problems.extend(floors("policy.cleanup.keep_newest".into(), &config.keep_newest));
    for (namespace, rules) in &config.namespaces {
        problems.extend(check(
            format!("policy.cleanup.namespaces.{namespace}.protected_tags"),
            &rules.protected_tags,
        ));
        problems.extend(floors(
            format!("policy.cleanup.namespaces.{namespace}.keep_newest"),
            &rules.keep_newest,
        ));
    }
    problems
}

/// The retention floors that apply to `repository` (org-wide, then its namespace's).
pub fn floors_for<'a>(config: &'a CleanupConfig, repository: &str) -> Vec<&'a RetentionFloor> {
    let namespace = repository.split('/').next().unwrap_or(repository);
    config
        .keep_newest
        .iter()
        .chain(
            config
                .namespaces
                .get(namespace)
                .into_iter()
                .flat_map(|n| &n.keep_newest),
        )
        .collect()
}

/// The pattern that protects `tag` in `repository`, if any.
pub fn protecting_pattern<'a>(config: &'a CleanupConfig, repository: &str, tag: &str) -> Option<&'a str> {
    let namespace = repository.split('/').next().unwrap_or(repository);
    config
        .protected_tags
        .iter()
        .chain(
            config
                .namespaces
                .get(namespace)
                .into_iter()
                .flat_map(|n| &n.protected_tags),
        )
        .find(|pattern| TagPattern::text_matches(pattern, tag))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn globs() {
        for (pattern, text, want) in [
            ("v*", "v1.2.3", true),
            ("v*", "latest", false),
            ("release-*", "release-", true),
            ("*-prod", "api-prod", true),
            ("*-prod", "api-prod-2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
        ] {
            assert_eq!(
                TagPattern::text_matches(pattern, text),
                want,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn org_wide_and_namespace_patterns() {
        let config = CleanupConfig {
            protected_tags: vec!["release-*".into()],
            keep_newest: Vec::new(),
            namespaces: BTreeMap::from([(
                "payments".to_owned(),
                NamespaceCleanup {
                    protected_tags: vec!["v*".into()],
                    keep_newest: vec![RetentionFloor {
                        tags: "v*".into(),
                        count: 10,
                    }],
                },
            )]),
        };
        assert_eq!(protecting_pattern(&config, "payments/api", "v1.0.0"), Some("v*"));
        assert_eq!(protecting_pattern(&config, "search/api", "v1.0.0"), None);
        assert_eq!(
            protecting_pattern(&config, "search/api", "release-7"),
            Some("release-*")
        );
        assert_eq!(protecting_pattern(&config, "payments/api", "latest"), None);
        assert!(config_problems(&config).is_empty());
        assert_eq!(floors_for(&config, "payments/api").len(), 1);
        assert!(floors_for(&config, "search/api").is_empty());
        let bad = CleanupConfig {
            protected_tags: vec!["".into(), "ok-*".into(), "sp ace".into()],
            keep_newest: vec![RetentionFloor {
                tags: "v*".into(),
                count: 0,
            }],
            ..Default::default()
        };
        let problems = config_problems(&bad);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[2].starts_with("policy.cleanup.keep_newest[0].count"),
            "{problems:?}"
        );
        assert!(problems[0].starts_with("policy.cleanup.protected_tags[0]"));
    }
}
