//! The gateway's metrics as OpenTelemetry instruments, exported by OTLP when
//! telemetry is on: the call histogram and the ECR counter are recorded
//! alongside their Prometheus series; the gauges are observed from the same
//! state `/metrics` shows (the database ones from the last reading of
//! [`super::gauges`]), so the two never disagree.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use super::metrics::{BUCKETS, Metrics};
use crate::ecr::EcrCallOutcome;

/// The instruments recorded on the hot path.
#[derive(Debug)]
pub struct Instruments {
    rpc_duration: Histogram<f64>,
    ecr_calls: Counter<u64>,
}

impl Instruments {
    /// A gRPC call ended.
    pub fn rpc_finished(&self, method: &str, code: &'static str, seconds: f64) {
        self.rpc_duration.record(
            seconds,
            &[
                KeyValue::new("rpc.method", method.to_owned()),
                KeyValue::new("rpc.grpc.status", code),
            ],
        );
    }

    /// An ECR operation ended.
    pub fn ecr_call(&self, call: &EcrCallOutcome) {
        self.ecr_calls.add(
            1,
            &[
                KeyValue::new("registry", call.registry.clone()),
                KeyValue::new("action", call.action.clone()),
                KeyValue::new("outcome", call.outcome),
                KeyValue::new("throttled", call.throttled),
            ],
        );
    }
}

/// Creates the instruments on `meter`; the observable gauges read `metrics`
/// at each export (through a weak reference: the meter provider outlives
/// nothing it should keep alive).
pub fn register(metrics: &Arc<Metrics>, meter: &Meter) -> Instruments {
    let rpc_duration = meter
        .f64_histogram("ecr_gateway.rpc.duration")
        .with_description("Duration of gRPC calls until the response ended, by method and status code.")
        .with_unit("s")
        .with_boundaries(BUCKETS.to_vec())
        .build();
    let ecr_calls = meter
        .u64_counter("ecr_gateway.ecr.calls")
        .with_description("ECR operations by registry, action, outcome and whether ECR throttled an attempt.")
        .build();
    let weak = Arc::downgrade(metrics);
    let _ = meter
        .i64_observable_gauge("ecr_gateway.rpc.in_flight")
        .with_description("gRPC calls being served.")
        .with_callback(observe(&weak, |metrics, observer| {
            observer.observe(metrics.in_flight(), &[]);
        }))
        .build();
    let _ = meter
        .i64_observable_gauge("ecr_gateway.audit.events_pending")
        .with_description("Audit events recorded but not yet linked into the hash chain.")
        .with_callback(observe(&weak, |metrics, observer| {
            if let Some(pending) = metrics.database_gauges().audit_events_pending {
                observer.observe(pending, &[]);
            }
        }))
        .build();
    let _ = meter
        .f64_observable_gauge("ecr_gateway.sync.lag")
        .with_description("Seconds since the most recent completed sync of a repository of the registry.")
        .with_unit("s")
        .with_callback(observe(&weak, |metrics, observer| {
            let gauges = metrics.database_gauges();
            for (registry, seconds) in gauges.sync_lag(chrono::Utc::now()) {
                observer.observe(seconds, &[KeyValue::new("registry", registry.to_owned())]);
            }
        }))
        .build();
    let _ = meter
        .f64_observable_gauge("ecr_gateway.cache.age")
        .with_description(
            "Seconds since the least recently synced cached repository of the registry was synced.",
        )
        .with_unit("s")
        .with_callback(observe(&weak, |metrics, observer| {
            let gauges = metrics.database_gauges();
            for (registry, seconds) in gauges.cache_age(chrono::Utc::now()) {
                observer.observe(seconds, &[KeyValue::new("registry", registry.to_owned())]);
            }
        }))
        .build();
    for (name, description, deleted) in [
        (
            "ecr_gateway.cleanup.images_planned",
            "Images a running cleanup run set out to delete.",
            false,
        ),
        (
            "ecr_gateway.cleanup.images_deleted",
            "Images a running cleanup run has deleted so far.",
            true,
        ),
    ] {
        let _ = meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(observe(&weak, move |metrics, observer| {
                for run in metrics.database_gauges().cleanups {
                    let value = if deleted { run.deleted } else { run.planned };
                    observer.observe(
                        value,
                        &[
                            KeyValue::new("run_id", run.run_id.to_string()),
                            KeyValue::new("registry", run.registry),
                        ],
                    );
                }
            }))
            .build();
    }
    Instruments {
        rpc_duration,
        ecr_calls,
    }
}

/// A gauge callback that reads `metrics` while they exist.
fn observe<T>(
    metrics: &Weak<Metrics>,
    read: impl Fn(&Metrics, &dyn opentelemetry::metrics::AsyncInstrument<T>) + Send + Sync + 'static,
) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<T>) + Send + Sync + 'static {
    let metrics = metrics.clone();
    move |observer| {
        if let Some(metrics) = metrics.upgrade() {
            read(&metrics, observer);
        }
    }
}
