//! Logging and OpenTelemetry, started once by `main` before the server runs.
//!
//! - Logs go to standard error as text or JSON lines (`telemetry.log_format`);
//!   a JSON line logged inside a traced span carries its `trace_id` and
//!   `span_id` ([`json`]). `RUST_LOG` filters logs and spans alike.
//! - With `telemetry.enabled`, spans are exported by OTLP/gRPC through a
//!   batch processor, and metrics by a periodic reader; the meter provider
//!   is installed as OpenTelemetry's global one, which `server.rs` asks for
//!   the instruments of `admin::otlp` (the metrics are the admin's
//!   `Metrics`, exported). Spans come from [`rpc`] (one per gRPC
//!   call, child of the caller's `traceparent`), `ecr::telemetry` (one per
//!   ECR operation) and the store's transactions.
//! - [`Telemetry::shutdown`] flushes both providers; `main` calls it after
//!   the server has drained.

pub mod json;
pub mod rpc;

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, TelemetryConfig};

/// The instrumentation scope of the gateway's spans and instruments.
pub const SCOPE: &str = "ecr-gateway";

/// The default log filter when `RUST_LOG` is unset: the SDKs' chatter stays out.
const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn";

/// The running exporters; [`Telemetry::shutdown`] flushes them.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

/// Installs the log subscriber and, when `config.enabled`, the OTLP
/// exporters. Call it inside the Tokio runtime: the exporters' gRPC channel
/// lives there.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    if !config.enabled {
        init_logs(config.log_format, None);
        return Ok(Telemetry::default());
    }
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let span_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .build()
        .context("telemetry.endpoint: cannot build the OTLP span exporter")?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(span_exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource.clone())
        .build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .build()
        .context("telemetry.endpoint: cannot build the OTLP metric exporter")?;
    let reader = PeriodicReader::builder(metric_exporter)
        .with_interval(Duration::from_secs(config.metric_export_interval_seconds))
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    init_logs(config.log_format, Some(tracer_provider.tracer(SCOPE)));
    tracing::info!(
        endpoint = %config.endpoint,
        service_name = %config.service_name,
        sampling_ratio = config.sampling_ratio,
        "telemetry on: exporting traces and metrics by OTLP/gRPC"
    );
    Ok(Telemetry {
        tracer_provider: Some(tracer_provider),
        meter_provider: Some(meter_provider),
    })
}

/// Installs the log subscriber alone (commands that read no configuration).
pub fn init_logs_only() {
    init_logs(LogFormat::Text, None);
}

/// Targets that print whole HTTP bodies and SDK outputs at TRACE: ECR's
/// docker passwords and STS's session keys among them. No `RUST_LOG` raises
/// them above DEBUG (tests/access.rs greps a trace-level log for the secrets).
const SECRET_BEARING_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_sdk_ecr",
    "aws_sdk_sts",
];

/// `RUST_LOG` (or the default), with [`SECRET_BEARING_TARGETS`] capped at DEBUG.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let requested = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&requested)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    for target in SECRET_BEARING_TARGETS {
        // The most verbose level RUST_LOG gave the target (or its default), at most DEBUG.
        let level = requested_level(&requested, target).min(tracing::Level::DEBUG.into());
        if let Ok(directive) = format!("{target}={level}").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// The level `filter` gives `target`: its own directive, else the bare default (INFO when none).
fn requested_level(filter: &str, target: &str) -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    let mut default = LevelFilter::INFO;
    let mut own = None;
    for directive in filter.split(',').map(str::trim) {
        match directive.split_once('=') {
            Some((name, level)) if name == target || target.starts_with(&format!("{name}::")) => {
                own = level.parse().ok().or(own);
            }
            None => default = directive.parse().unwrap_or(default),
            _ => {}
        }
    }
    own.unwrap_or(default)
}

fn init_logs(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    let filter = log_filter();
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(json::JsonLines)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let spans = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    // A second call (tests that start several servers in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .with(filter)
        .try_init();
}

impl Telemetry {
    /// True when traces and metrics are exported.
    pub fn enabled(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Exports what is buffered and stops the exporters. Call it outside
    /// the runtime's worker threads (`main` does, after `block_on`), with
    /// the runtime still alive: the export rides its gRPC channel.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {error}");
        }
        if let Some(provider) = self.meter_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: flushing metrics failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn the_level_asked_for_a_target_is_its_own_directive_or_the_default() {
        assert_eq!(requested_level("trace", "aws_smithy_runtime"), LevelFilter::TRACE);
        assert_eq!(
            requested_level(DEFAULT_FILTER, "aws_smithy_runtime"),
            LevelFilter::WARN
        );
        assert_eq!(requested_level(DEFAULT_FILTER, "aws_sdk_sts"), LevelFilter::INFO);
        assert_eq!(
            requested_level("warn,aws_smithy_runtime=trace", "aws_smithy_runtime"),
            LevelFilter::TRACE
        );
        assert_eq!(requested_level("off", "aws_sdk_ecr"), LevelFilter::OFF);
    }
}
