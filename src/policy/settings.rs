//! Repository setting rules: tag mutability and its exclusion filters, scan on push.

use super::naming::backticked;
use crate::config::SettingsConfig;
use crate::domain::{TagMutability, TagPattern, Violation};

/// Field of the mutability setting.
const MUTABILITY_FIELD: &str = "settings.image_tag_mutability";
/// Field of the exclusion filter list.
const FILTERS_FIELD: &str = "settings.image_tag_mutability_exclusion_filters";
/// ECR's maximum number of exclusion filters.
pub(super) const ECR_MAX_EXCLUSION_FILTERS: usize = 5;

/// The mutability a request gets: its own, else the configured default.
pub(super) fn effective_mutability(
    config: &SettingsConfig,
    requested: Option<TagMutability>,
) -> TagMutability {
    requested.unwrap_or(config.default_tag_mutability)
}

/// `settings.tag-mutability`: the mutability is one the organisation allows.
pub(super) fn mutability_violation(config: &SettingsConfig, mutability: TagMutability) -> Option<Violation> {
    let allowed = &config.allowed_tag_mutability;
    (!allowed.contains(&mutability)).then(|| {
        let names: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
        Violation::new(
            MUTABILITY_FIELD,
            "settings.tag-mutability",
            format!("{mutability} is not allowed; use one of: {}", backticked(&names)),
        )
    })
}

/// Count, grammar and allow-list rules for the exclusion filters of `mutability`.
pub(super) fn exclusion_filter_violations(
    config: &SettingsConfig,
    mutability: TagMutability,
    filters: &[String],
) -> Vec<Violation> {
    let mut violations: Vec<Violation> = filter_count_violation(config, mutability, filters.len())
        .into_iter()
        .collect();
    for (index, filter) in filters.iter().enumerate() {
        violations.extend(filter_violation(config, index, filter));
    }
    violations
}

fn filter_count_violation(
    config: &SettingsConfig,
    mutability: TagMutability,
    count: usize,
) -> Option<Violation> {
    let max = config.max_exclusion_filters;
    let description = match (mutability.has_exclusions(), count) {
        (false, 0) | (true, 1..) if count <= max => return None,
        (false, _) => format!(
            "{mutability} takes no exclusion filters; remove them or use IMMUTABLE_WITH_EXCLUSION or MUTABLE_WITH_EXCLUSION"
        ),
        (true, 0) => format!(
            "{mutability} needs at least 1 exclusion filter, e.g. `latest`; add one or use {}",
            without_exclusions(mutability)
        ),
        (true, _) => format!("{count} exclusion filters; at most {max} are allowed"),
    };
    Some(Violation::new(
        FILTERS_FIELD,
        "settings.exclusion-filter-count",
        description,
    ))
}

fn without_exclusions(mutability: TagMutability) -> TagMutability {
    match mutability {
        TagMutability::MutableWithExclusion => TagMutability::Mutable,
        _ => TagMutability::Immutable,
    }
}

fn filter_violation(config: &SettingsConfig, index: usize, filter: &str) -> Option<Violation> {
    let field = format!("{FILTERS_FIELD}[{index}]");
    if !is_valid_exclusion_filter(filter) {
        return Some(Violation::new(
            field,
            "settings.exclusion-filter-grammar",
            format!(
                "`{filter}` is not an ECR exclusion filter: use 1–128 letters, digits, `.`, `_`, `-` and `*` wildcards"
            ),
        ));
    }
    let allowed = &config.allowed_exclusion_filters;
    (!allowed.is_empty() && !allowed.iter().any(|a| a == filter)).then(|| {
        Violation::new(
            field,
            "settings.exclusion-filter-allowed",
            format!(
                "`{filter}` is not an allowed exclusion filter; use one of: {}",
                backticked(allowed)
            ),
        )
    })
}

/// True when ECR accepts `filter` as a `WILDCARD` exclusion filter.
pub(super) fn is_valid_exclusion_filter(filter: &str) -> bool {
    TagPattern::is_valid(filter)
}

/// `settings.scan-on-push`: the value to apply, or why the request's is refused.
pub(super) fn scan_on_push(config: &SettingsConfig, requested: Option<bool>) -> Result<bool, Violation> {
    match requested {
        Some(false) if config.require_scan_on_push => Err(Violation::new(
            "settings.scan_on_push",
            "settings.scan-on-push",
            "scan on push is required for every repository; set it to true or leave it unset",
        )),
        Some(value) => Ok(value),
        None => Ok(config.require_scan_on_push),
    }
}

/// Problems in the mutability part of the configuration, each naming its key.
pub(super) fn config_problems(config: &SettingsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let allowed = &config.allowed_tag_mutability;
    if allowed.is_empty() {
        problems.push("policy.settings.allowed_tag_mutability: empty, so no repository could be created; list at least one".to_owned());
    } else if !allowed.contains(&config.default_tag_mutability) {
        problems.push(format!(
            "policy.settings.default_tag_mutability: {} is not in policy.settings.allowed_tag_mutability",
            config.default_tag_mutability
        ));
    }
    let max = config.max_exclusion_filters;
    if max > ECR_MAX_EXCLUSION_FILTERS {
        problems.push(format!("policy.settings.max_exclusion_filters: {max} is above ECR's maximum of {ECR_MAX_EXCLUSION_FILTERS}"));
    }
    if let Some(needs) = allowed.iter().find(|m| m.has_exclusions()).filter(|_| max == 0) {
        problems.push(format!(
            "policy.settings.max_exclusion_filters: 0, but {needs} is allowed and needs at least 1 filter"
        ));
    }
    for (index, filter) in config.allowed_exclusion_filters.iter().enumerate() {
        if !is_valid_exclusion_filter(filter) {
            problems.push(format!("policy.settings.allowed_exclusion_filters[{index}]: `{filter}` is not an ECR exclusion filter (1–128 of `0-9a-zA-Z._*-`)"));
        }
    }
    problems
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
