//! `[registries.breaker]`: the circuit breaker of one registry (see `ecr::Breaker`).

use serde::{Deserialize, Serialize};

/// `[registries.breaker]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// False lets every call through, however ECR fails.
    pub enabled: bool,
    /// ECR operations in a row (each after the SDK's retries) that must fail
    /// with no answer from ECR (connection errors, timeouts, 5xx) to open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe call may go through.
    pub open_seconds: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            open_seconds: 30,
        }
    }
}

impl BreakerConfig {
    /// Problems with these settings, each naming its key under `key` (e.g. `registries[0].breaker`).
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=1000).contains(&self.failure_threshold) {
            problems.push(format!(
                "{key}.failure_threshold: {} is out of range; use 1 to 1000 failed operations in a row",
                self.failure_threshold
            ));
        }
        if !(1..=3600).contains(&self.open_seconds) {
            problems.push(format!(
                "{key}.open_seconds: {} is out of range; use 1 to 3600 seconds",
                self.open_seconds
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert!(
            BreakerConfig::default()
                .problems("registries[0].breaker")
                .is_empty()
        );
    }

    #[test]
    fn a_zero_threshold_and_cool_down_are_reported_by_key() {
        let config = BreakerConfig {
            enabled: true,
            failure_threshold: 0,
            open_seconds: 0,
        };

        let problems = config.problems("registries[1].breaker");

        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("registries[1].breaker.failure_threshold: 0"));
        assert!(problems[1].starts_with("registries[1].breaker.open_seconds: 0"));
    }
}
