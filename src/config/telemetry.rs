//! `[telemetry]`: OpenTelemetry traces and metrics by OTLP/gRPC, and the log
//! format. Off by default; `enabled = true` (or
//! `ECR_GATEWAY__TELEMETRY__ENABLED=true`) is the one setting that turns it on.

use serde::{Deserialize, Serialize};

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export traces and metrics by OTLP and trace every call.
    pub enabled: bool,
    /// The OTLP/gRPC endpoint of the collector.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a caller's sampled
    /// `traceparent` decides for its own trace (parent-based sampling).
    pub sampling_ratio: f64,
    /// How often metrics are exported by OTLP.
    pub metric_export_interval_seconds: u64,
    /// `text` (for people) or `json` (one object a line, with the trace and span ids).
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://localhost:4317".into(),
            service_name: "ecr-gateway".into(),
            sampling_ratio: 1.0,
            metric_export_interval_seconds: 60,
            log_format: LogFormat::Text,
        }
    }
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's human-readable format.
    #[default]
    Text,
    /// One JSON object a line, with `trace_id` and `span_id` of the current span.
    Json,
}

impl TelemetryConfig {
    /// Every problem with `[telemetry]`, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.endpoint.starts_with("http://") {
            problems.push(format!(
                "telemetry.endpoint: `{}` must be an http:// URL of an OTLP/gRPC collector, e.g. http://localhost:4317 \
                 (TLS to the collector is not supported: run a collector beside the gateway)",
                self.endpoint
            ));
        } else if self.endpoint.parse::<http::Uri>().is_err() {
            problems.push(format!("telemetry.endpoint: `{}` is not a URL", self.endpoint));
        }
        if self.service_name.trim().is_empty() {
            problems.push("telemetry.service_name: must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            problems.push(format!(
                "telemetry.sampling_ratio: {} is out of range; use 0.0 (no new traces) to 1.0 (every trace)",
                self.sampling_ratio
            ));
        }
        if self.metric_export_interval_seconds == 0 {
            problems.push("telemetry.metric_export_interval_seconds: must be at least 1".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    use super::*;

    #[test]
    fn telemetry_is_off_by_default_with_text_logs() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert!(!config.telemetry.enabled);
        assert_eq!(config.telemetry.log_format, LogFormat::Text);
        assert_eq!(config.telemetry.endpoint, "http://localhost:4317");
    }

    #[test]
    fn one_key_turns_telemetry_on() {
        let text = format!("{MINIMAL}\n[telemetry]\nenabled = true\nlog_format = \"json\"\n");
        let config = Config::from_toml(&text).expect("valid");
        assert!(config.telemetry.enabled);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn every_telemetry_problem_names_its_key() {
        let text = format!(
            "{MINIMAL}\n[telemetry]\nendpoint = \"collector:4317\"\nservice_name = \" \"\n\
             sampling_ratio = 1.5\nmetric_export_interval_seconds = 0\n"
        );
        let err = Config::from_toml(&text).expect_err("bad telemetry");
        let joined = err.problems.join("\n");
        for key in [
            "telemetry.endpoint",
            "telemetry.service_name",
            "telemetry.sampling_ratio",
            "telemetry.metric_export_interval_seconds",
        ] {
            assert!(joined.contains(key), "{key} in {joined}");
        }
        let text = format!("{MINIMAL}\n[telemetry]\nlog_format = \"xml\"\n");
        let err = Config::from_toml(&text).expect_err("bad format");
        assert!(err.to_string().contains("telemetry.log_format"), "{err}");
    }
}
