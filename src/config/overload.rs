//! `[overload]` and `[rate_limits]`: how many calls the gateway serves at once
//! before it sheds, and how fast each caller may call.

use serde::{Deserialize, Serialize};

/// `[overload]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Calls served at once by the whole process; beyond it a call is
    /// answered RESOURCE_EXHAUSTED at once. Health checks are never shed.
    pub max_concurrent_calls: usize,
    /// The `RetryInfo` delay a shed call is given, in milliseconds.
    pub retry_after_ms: u64,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 512,
            retry_after_ms: 250,
        }
    }
}

/// One rate: calls per second with a burst, per caller.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained calls per second.
    pub per_second: u32,
    /// Calls allowed at once after a quiet spell; defaults to `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Rate {
    /// The burst, `per_second` when unset.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }
}

/// `[[rate_limits.groups]]`: the rate of callers in one group (a role).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupRate {
    /// The group (as the identity carries it, e.g. `deployers`).
    pub group: String,
    /// Calls per second per caller in the group.
    pub per_second: u32,
    /// Burst per caller; defaults to `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl GroupRate {
    /// The group's rate.
    pub fn rate(&self) -> Rate {
        Rate {
            per_second: self.per_second,
            burst: self.burst,
        }
    }
}

/// `[rate_limits]`: per-caller limits of the gateway's own RPCs (health and
/// reflection are not limited). A caller in several listed groups gets the
/// most generous of their rates; a caller in none gets `default`; no
/// `default` leaves those callers unlimited.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// The rate of callers in no listed group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Rate>,
    /// Rates by group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupRate>,
}

/// Every problem of `[overload]` and `[rate_limits]`.
pub(crate) fn problems(overload: &OverloadConfig, limits: &RateLimitsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if overload.max_concurrent_calls == 0 {
        problems.push("overload.max_concurrent_calls: must be at least 1".into());
    }
    if overload.retry_after_ms == 0 || overload.retry_after_ms > 60_000 {
        problems.push(format!(
            "overload.retry_after_ms: {} is out of range; use 1 to 60000 milliseconds",
            overload.retry_after_ms
        ));
    }
    if let Some(rate) = &limits.default {
        check_rate("rate_limits.default", *rate, &mut problems);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, group) in limits.groups.iter().enumerate() {
        let key = format!("rate_limits.groups[{index}]");
        if group.group.trim().is_empty() {
            problems.push(format!("{key}.group: must name a group"));
        } else if !seen.insert(group.group.as_str()) {
            problems.push(format!(
                "{key}.group: `{}` is listed twice; give each group one rate",
                group.group
            ));
        }
        check_rate(&key, group.rate(), &mut problems);
    }
    problems
}

fn check_rate(key: &str, rate: Rate, problems: &mut Vec<String>) {
    if rate.per_second == 0 {
        problems.push(format!(
            "{key}.per_second: must be at least 1 (leave the limit out for no limit)"
        ));
    }
    if rate.burst == Some(0) {
        problems.push(format!("{key}.burst: must be at least 1"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert!(problems(&OverloadConfig::default(), &RateLimitsConfig::default()).is_empty());
    }

    #[test]
    fn every_problem_names_its_key() {
        let overload = OverloadConfig {
            max_concurrent_calls: 0,
            retry_after_ms: 0,
        };
        let limits = RateLimitsConfig {
            default: Some(Rate {
                per_second: 0,
                burst: Some(0),
            }),
            groups: vec![
                GroupRate {
                    group: "deployers".into(),
                    per_second: 10,
                    burst: None,
                },
                GroupRate {
                    group: "deployers".into(),
                    per_second: 5,
                    burst: None,
                },
                GroupRate {
                    group: " ".into(),
                    per_second: 5,
                    burst: None,
                },
            ],
        };
        let found = problems(&overload, &limits);
        for key in [
            "overload.max_concurrent_calls",
            "overload.retry_after_ms",
            "rate_limits.default.per_second",
            "rate_limits.default.burst",
            "rate_limits.groups[1].group: `deployers` is listed twice",
            "rate_limits.groups[2].group",
        ] {
            assert!(found.iter().any(|p| p.starts_with(key)), "{key} in {found:#?}");
        }
        assert_eq!(found.len(), 6, "{found:#?}");
    }
}
