//! The gateway's Prometheus metrics and their text exposition (format 0.0.4).
//!
//! Written by hand rather than with a metrics crate: a few series families
//! and one gauge updated on the hot path need a mutex-guarded map and atomics,
//! and the text format is a few lines. The state lives in [`Metrics`], built
//! once in `server.rs` and passed to the layer, the ECR clients (as their
//! [`EcrObserver`]), the gauge refresher and the admin server. With
//! telemetry on, the same values are also exported by OTLP
//! ([`super::otlp`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::gauges::DatabaseGauges;
use super::otlp::Instruments;
use crate::ecr::{EcrCallOutcome, EcrObserver};

/// Upper bounds of the call-duration buckets, in seconds (Prometheus' defaults).
pub const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The `method` label of calls to paths the gateway does not serve (bounds
/// the label's values to the methods it knows).
pub const UNKNOWN_METHOD: &str = "unknown";

/// The labels of `ecr_gateway_ecr_calls_total`: registry, action, outcome, throttled.
pub type EcrCallKey = (String, String, &'static str, bool);

/// Everything the gateway counts, shared by the gRPC layer and `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    methods: HashSet<String>,
    durations: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    in_flight: AtomicI64,
    /// ECR operations by (registry, action, outcome, throttled).
    ecr_calls: Mutex<BTreeMap<EcrCallKey, u64>>,
    database: watch::Sender<DatabaseGauges>,
    /// The OTLP instruments, when telemetry is on.
    otlp: OnceLock<Instruments>,
    /// The event intake's counters.
    events: super::events::EventMetrics,
}

/// One histogram series of `N - 1` bounds: cumulative counts are computed when encoding.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Histogram<const N: usize = 12> {
    /// Observations per bucket, plus one for `+Inf`.
    buckets: [u64; N],
    sum: f64,
    count: u64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: [0; N],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn observe_duration(&mut self, seconds: f64) {
        self.observe(&BUCKETS, seconds);
    }
}

impl<const N: usize> Histogram<N> {
    /// Counts one observation into the bucket of `bounds` (N - 1 of them) it falls in.
    pub(super) fn observe(&mut self, bounds: &[f64], value: f64) {
        let bucket = bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(bounds.len())
            .min(N - 1);
        self.buckets[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Appends the series' `_bucket`, `_sum` and `_count` lines.
    pub(super) fn encode(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(self.buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

impl Metrics {
    /// Metrics that label calls with the methods named in `descriptor_sets`
    /// (encoded `FileDescriptorSet`s); calls to other paths get [`UNKNOWN_METHOD`].
    pub fn new(descriptor_sets: &[&[u8]]) -> Metrics {
        Metrics {
            methods: grpc_methods(descriptor_sets),
            durations: Mutex::default(),
            in_flight: AtomicI64::new(0),
            ecr_calls: Mutex::default(),
            database: watch::Sender::new(DatabaseGauges::default()),
            otlp: OnceLock::new(),
            events: super::events::EventMetrics::default(),
        }
    }

    /// Also exports every metric by OTLP through `meter` (telemetry on).
    pub fn export_otlp(self: &Arc<Self>, meter: &opentelemetry::metrics::Meter) {
        let _ = self.otlp.set(super::otlp::register(self, meter));
    }

    /// Replaces the database gauges with a new reading.
    pub fn set_database_gauges(&self, gauges: DatabaseGauges) {
        self.database.send_replace(gauges);
    }

    /// The last reading of the database gauges.
    pub fn database_gauges(&self) -> DatabaseGauges {
        self.database.borrow().clone()
    }

    /// Waits up to `limit` for the first reading of the database gauges.
    pub async fn first_database_reading(&self, limit: Duration) {
        let mut readings = self.database.subscribe();
        let _ = tokio::time::timeout(limit, readings.wait_for(|gauges| gauges.read)).await;
    }

    /// ECR operations counted so far, by (registry, action, outcome, throttled).
    pub fn ecr_calls(&self) -> BTreeMap<EcrCallKey, u64> {
        self.ecr_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The `method` label of a request path.
    pub fn method_label(&self, path: &str) -> String {
        if self.methods.contains(path) {
            path.to_owned()
        } else {
            UNKNOWN_METHOD.to_owned()
        }
    }

    /// A call started.
    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended with `code` after `elapsed`.
    pub fn call_finished(&self, method: String, code: &'static str, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(otlp) = self.otlp.get() {
            otlp.rpc_finished(&method, code, elapsed.as_secs_f64());
        }
        let mut durations = self
            .durations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        durations
            .entry((method, code))
            .or_default()
            .observe_duration(elapsed.as_secs_f64());
    }

    /// The calls being served now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP ecr_gateway_rpc_duration_seconds Duration of gRPC calls until the response ended, by method and gRPC status code.\n\
             # TYPE ecr_gateway_rpc_duration_seconds histogram\n",
        );
        let durations = self
            .durations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for ((method, code), histogram) in &durations {
            let labels = format!("method=\"{}\",code=\"{code}\"", escape(method));
            histogram.encode(&mut out, "ecr_gateway_rpc_duration_seconds", &labels, &BUCKETS);
        }
        let _ = write!(
            out,
            "# HELP ecr_gateway_rpc_in_flight gRPC calls being served.\n\
             # TYPE ecr_gateway_rpc_in_flight gauge\n\
             ecr_gateway_rpc_in_flight {}\n",
            self.in_flight()
        );
        out.push_str(
            "# HELP ecr_gateway_ecr_calls_total ECR operations (retries included) by registry, action, outcome and whether ECR throttled an attempt.\n\
             # TYPE ecr_gateway_ecr_calls_total counter\n",
        );
        for ((registry, action, outcome, throttled), count) in self.ecr_calls() {
            let _ = writeln!(
                out,
                "ecr_gateway_ecr_calls_total{{registry=\"{}\",action=\"{}\",outcome=\"{outcome}\",throttled=\"{throttled}\"}} {count}",
                escape(&registry),
                escape(&action),
            );
        }
        self.database.borrow().encode(&mut out, chrono::Utc::now());
        self.events.encode(&mut out);
        out
    }
}

impl EcrObserver for Metrics {
    fn ecr_call_finished(&self, call: &EcrCallOutcome) {
        *self
            .ecr_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((
                call.registry.clone(),
                call.action.clone(),
                call.outcome,
                call.throttled,
            ))
            .or_default() += 1;
        if let Some(otlp) = self.otlp.get() {
            otlp.ecr_call(call);
        }
    }
}

impl crate::inventory::events::EventObserver for Metrics {
    fn event_received(&self, registry: &str, event_type: &str) {
        self.events.event_received(registry, event_type);
    }

    fn event_finished(
        &self,
        registry: &str,
        event_type: &str,
        outcome: crate::inventory::events::EventOutcome,
        lag: Option<Duration>,
    ) {
        self.events.event_finished(registry, event_type, outcome, lag);
    }

    fn queue_depth(&self, registry: &str, state: &crate::ecr::QueueState) {
        self.events.queue_depth(registry, state);
    }
}

/// `/package.Service/Method` of every method in the descriptor sets.
fn grpc_methods(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    use prost::Message as _;
    let mut methods = HashSet::new();
    for encoded in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
            continue;
        };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let qualified = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                for method in &service.method {
                    methods.insert(format!("/{qualified}/{}", method.name()));
                }
            }
        }
    }
    methods
}

/// A label value as the text format wants it.
pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&[crate::pb::FILE_DESCRIPTOR_SET])
    }

    #[test]
    fn methods_of_the_gateway_are_labelled_and_other_paths_are_unknown() {
        let metrics = metrics();
        assert_eq!(
            metrics.method_label("/ecrgateway.v1.ImageService/ResolveImage"),
            "/ecrgateway.v1.ImageService/ResolveImage"
        );
        assert_eq!(
            metrics.method_label("/ecrgateway.v1.ImageService/Nope"),
            UNKNOWN_METHOD
        );
        assert_eq!(metrics.method_label("/favicon.ico"), UNKNOWN_METHOD);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_in_flight_follows_calls() {
        let metrics = metrics();
        metrics.call_started();
        metrics.call_started();
        assert!(metrics.encode().contains("ecr_gateway_rpc_in_flight 2\n"));
        let method = "/ecrgateway.v1.ImageService/ResolveImage".to_owned();
        metrics.call_finished(method.clone(), "OK", Duration::from_millis(3));
        metrics.call_finished(method, "OK", Duration::from_millis(30));

        metrics.set_database_gauges(DatabaseGauges {
            audit_events_pending: Some(7),
            ..DatabaseGauges::default()
        });
        let text = metrics.encode();

        let labels = r#"method="/ecrgateway.v1.ImageService/ResolveImage",code="OK""#;
        for (le, count) in [("0.005", 1), ("0.025", 1), ("0.05", 2), ("10", 2), ("+Inf", 2)] {
            let line = format!("ecr_gateway_rpc_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains(&format!("ecr_gateway_rpc_duration_seconds_count{{{labels}}} 2\n")));
        assert!(text.contains("ecr_gateway_rpc_in_flight 0\n"), "{text}");
        assert!(text.contains("ecr_gateway_audit_events_pending 7\n"), "{text}");
        metrics.set_database_gauges(DatabaseGauges::default());
        assert!(!metrics.encode().contains("audit_events_pending"));
    }

    #[test]
    fn ecr_calls_are_counted_by_registry_action_outcome_and_throttling() {
        let metrics = metrics();
        let call = EcrCallOutcome {
            registry: "main".into(),
            action: "CreateRepository".into(),
            outcome: "ok",
            throttled: true,
            attempts: 2,
        };
        metrics.ecr_call_finished(&call);
        metrics.ecr_call_finished(&call);

        let text = metrics.encode();

        let line = "ecr_gateway_ecr_calls_total{registry=\"main\",action=\"CreateRepository\",outcome=\"ok\",throttled=\"true\"} 2\n";
        assert!(text.contains(line), "{line} in\n{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
