//! `[registries.events]`: the SQS queue that ECR's EventBridge events arrive
//! on (docs/events.md), and `[watch]`: the change log WatchImages streams.

use serde::{Deserialize, Serialize};

/// `[registries.events]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The queue's URL, e.g. `https://sqs.eu-west-1.amazonaws.com/123456789012/ecr-events`.
    pub queue_url: String,
    /// The queue's region; unset: the registry's.
    pub region: Option<String>,
    /// Endpoint override for SQS: a VPC endpoint or an emulator.
    pub endpoint_url: Option<String>,
    /// Receive loops of this replica (each takes up to 10 messages at a time).
    pub workers: usize,
    /// Long-poll wait of one receive, 0-20 s.
    pub wait_seconds: i32,
    /// Visibility timeout asked for on receive; unset: the queue's own. A
    /// message not deleted within it (its changes not committed) is delivered again.
    pub visibility_timeout_seconds: Option<i32>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            region: None,
            endpoint_url: None,
            workers: 4,
            wait_seconds: 20,
            visibility_timeout_seconds: None,
        }
    }
}

impl EventsConfig {
    /// Problems with these settings, each naming its key under `key`.
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        if !is_url(&self.queue_url) {
            problems.push(format!(
                "{key}.queue_url: `{}` must be the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)",
                self.queue_url
            ));
        }
        if let Some(url) = &self.endpoint_url
            && !is_url(url)
        {
            problems.push(format!(
                "{key}.endpoint_url: `{url}` must start with http:// or https://"
            ));
        }
        if self.region.as_deref() == Some("") {
            problems.push(format!(
                "{key}.region: empty; leave it out for the registry's region"
            ));
        }
        if !(1..=64).contains(&self.workers) {
            problems.push(format!(
                "{key}.workers: {} is out of range; use 1 to 64",
                self.workers
            ));
        }
        if !(0..=20).contains(&self.wait_seconds) {
            problems.push(format!(
                "{key}.wait_seconds: {} is out of range; SQS long-polls 0 to 20 seconds",
                self.wait_seconds
            ));
        }
        if let Some(t) = self.visibility_timeout_seconds
            && !(1..=43_200).contains(&t)
        {
            problems.push(format!(
                "{key}.visibility_timeout_seconds: {t} is out of range; SQS allows 1 to 43200 seconds"
            ));
        }
        problems
    }
}

/// `[watch]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// How long the change log keeps a change: a WatchImages cursor older
    /// than this is OUT_OF_RANGE.
    pub retention_hours: u64,
    /// How many changes a stream may fall behind the newest before it is cut
    /// off (RESOURCE_EXHAUSTED, with the cursor to resume from).
    pub max_lag_changes: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            max_lag_changes: 4096,
        }
    }
}

impl WatchConfig {
    /// Problems with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=24 * 90).contains(&self.retention_hours) {
            problems.push(format!(
                "watch.retention_hours: {} is out of range; use 1 to 2160 hours",
                self.retention_hours
            ));
        }
        if !(16..=1_000_000).contains(&self.max_lag_changes) {
            problems.push(format!(
                "watch.max_lag_changes: {} is out of range; use 16 to 1000000",
                self.max_lag_changes
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_needs_its_url_and_sane_numbers() {
        let good = EventsConfig {
            queue_url: "https://sqs.eu-west-1.amazonaws.com/123456789012/ecr-events".into(),
            ..EventsConfig::default()
        };
        assert!(good.problems("registries[0].events").is_empty());
        let bad = EventsConfig {
            queue_url: "ecr-events".into(),
            endpoint_url: Some("localhost:9324".into()),
            region: Some(String::new()),
            workers: 0,
            wait_seconds: 21,
            visibility_timeout_seconds: Some(0),
        };
        let problems = bad.problems("registries[0].events");
        for key in [
            "queue_url",
            "endpoint_url",
            "region",
            "workers",
            "wait_seconds",
            "visibility_timeout_seconds",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("registries[0].events.{key}:"))),
                "{key}: {problems:?}"
            );
        }
        assert!(WatchConfig::default().problems().is_empty());
        let watch = WatchConfig {
            retention_hours: 0,
            max_lag_changes: 1,
        };
        assert_eq!(watch.problems().len(), 2);
    }
}
