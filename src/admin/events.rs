//! The event intake's metrics (`inventory::events`): events received and
//! how they ended, by registry and type; the lag from an event's `time` to
//! its commit; the queue's depth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::metrics::{Histogram, escape};
use crate::ecr::QueueState;
use crate::inventory::events::{EventObserver, EventOutcome};

/// Upper bounds of the lag buckets, in seconds.
pub const LAG_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The intake's counters.
#[derive(Debug, Default)]
pub struct EventMetrics {
    received: Mutex<BTreeMap<(String, String), u64>>,
    finished: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    lag: Mutex<BTreeMap<(String, String), Histogram<{ LAG_BUCKETS.len() + 1 }>>>,
    depth: Mutex<BTreeMap<String, QueueState>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EventObserver for EventMetrics {
    fn event_received(&self, registry: &str, event_type: &str) {
        *lock(&self.received)
            .entry((registry.to_owned(), event_type.to_owned()))
            .or_default() += 1;
    }

    fn event_finished(&self, registry: &str, event_type: &str, outcome: EventOutcome, lag: Option<Duration>) {
        *lock(&self.finished)
            .entry((registry.to_owned(), event_type.to_owned(), outcome.as_str()))
            .or_default() += 1;
        if let Some(lag) = lag {
            lock(&self.lag)
                .entry((registry.to_owned(), event_type.to_owned()))
                .or_default()
                .observe(&LAG_BUCKETS, lag.as_secs_f64());
        }
    }

    fn queue_depth(&self, registry: &str, state: &QueueState) {
        lock(&self.depth).insert(registry.to_owned(), state.clone());
    }
}

impl EventMetrics {
    /// Appends the families in the text format.
    pub fn encode(&self, out: &mut String) {
        out.push_str(
            "# HELP ecr_gateway_events_received_total ECR events taken from the queue, by registry and type (unknown: a type or shape the gateway does not follow).\n\
             # TYPE ecr_gateway_events_received_total counter\n",
        );
        for ((registry, event_type), n) in lock(&self.received).iter() {
            let _ = writeln!(
                out,
                "ecr_gateway_events_received_total{{registry=\"{}\",type=\"{}\"}} {n}",
                escape(registry),
                escape(event_type)
            );
        }
        out.push_str(
            "# HELP ecr_gateway_events_total ECR events by how they ended: applied (committed), failed (left in the queue for another delivery) or ignored (nothing to do; deleted).\n\
             # TYPE ecr_gateway_events_total counter\n",
        );
        for ((registry, event_type, outcome), n) in lock(&self.finished).iter() {
            let _ = writeln!(
                out,
                "ecr_gateway_events_total{{registry=\"{}\",type=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(registry),
                escape(event_type)
            );
        }
        out.push_str(
            "# HELP ecr_gateway_event_lag_seconds From an event's time (when ECR acted) to the commit of what it changed.\n\
             # TYPE ecr_gateway_event_lag_seconds histogram\n",
        );
        for ((registry, event_type), histogram) in lock(&self.lag).iter() {
            let labels = format!(
                "registry=\"{}\",type=\"{}\"",
                escape(registry),
                escape(event_type)
            );
            histogram.encode(out, "ecr_gateway_event_lag_seconds", &labels, &LAG_BUCKETS);
        }
        out.push_str(
            "# HELP ecr_gateway_event_queue_messages The event queue's messages as SQS last reported them: waiting (ApproximateNumberOfMessages) and in_flight (received, not deleted).\n\
             # TYPE ecr_gateway_event_queue_messages gauge\n",
        );
        for (registry, state) in lock(&self.depth).iter() {
            let registry = escape(registry);
            let _ = writeln!(
                out,
                "ecr_gateway_event_queue_messages{{registry=\"{registry}\",state=\"waiting\"}} {}",
                state.waiting
            );
            let _ = writeln!(
                out,
                "ecr_gateway_event_queue_messages{{registry=\"{registry}\",state=\"in_flight\"}} {}",
                state.in_flight
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_by_type_and_outcome_with_their_lag() {
        let metrics = EventMetrics::default();
        metrics.event_received("main", "ECR Image Action");
        metrics.event_finished(
            "main",
            "ECR Image Action",
            EventOutcome::Applied,
            Some(Duration::from_millis(300)),
        );
        metrics.event_received("main", "unknown");
        metrics.event_finished("main", "unknown", EventOutcome::Ignored, None);
        metrics.queue_depth(
            "main",
            &QueueState {
                waiting: 12,
                in_flight: 3,
                redrive_policy: None,
            },
        );
        let mut text = String::new();
        metrics.encode(&mut text);
        for line in [
            "ecr_gateway_events_received_total{registry=\"main\",type=\"ECR Image Action\"} 1\n",
            "ecr_gateway_events_total{registry=\"main\",type=\"ECR Image Action\",outcome=\"applied\"} 1\n",
            "ecr_gateway_events_total{registry=\"main\",type=\"unknown\",outcome=\"ignored\"} 1\n",
            "ecr_gateway_event_lag_seconds_bucket{registry=\"main\",type=\"ECR Image Action\",le=\"0.25\"} 0\n",
            "ecr_gateway_event_lag_seconds_bucket{registry=\"main\",type=\"ECR Image Action\",le=\"0.5\"} 1\n",
            "ecr_gateway_event_lag_seconds_count{registry=\"main\",type=\"ECR Image Action\"} 1\n",
            "ecr_gateway_event_queue_messages{registry=\"main\",state=\"waiting\"} 12\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
