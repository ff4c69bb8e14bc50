//! A circuit breaker per registry: after `failure_threshold` ECR operations in
//! a row fail in a way that means "ECR is down" (no connection, timeouts, 5xx
//! after the SDK's retries), calls fail fast without touching the network for
//! `open_seconds`; then one probe call goes through, and its success closes
//! the breaker again. Throttling and caller errors (4xx) prove ECR answers,
//! so they never open it. The state machine takes the time as a parameter;
//! [`interceptor`] hooks it into every SDK call.

pub mod interceptor;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::BreakerConfig;

/// How long a caller is told to wait while the probe call is running.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The breaker's phase, as health and the logs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Calls go through.
    Closed,
    /// Calls fail fast until the cool-down ends.
    Open,
    /// The cool-down ended: one probe call goes through, the rest fail fast.
    HalfOpen,
}

/// What the breaker publishes on each change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    /// The phase.
    pub phase: Phase,
    /// Why it opened (empty while closed).
    pub reason: String,
}

/// The answer to a call while the breaker is open: no request was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ECR registry `{registry}` is unavailable: circuit breaker open ({reason}); nothing was sent to ECR")]
pub struct BreakerOpen {
    /// The registry's alias.
    pub registry: String,
    /// Why the breaker opened.
    pub reason: String,
    /// When a retry may get through (the rest of the cool-down).
    pub retry_after: Duration,
}

/// How a call that was let through ended, for the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// ECR answered (success, or an answer about the request such as NotFound or throttling).
    Answered,
    /// ECR could not be reached, timed out or failed on its side.
    Down(Failure),
    /// Says nothing about ECR (the call was abandoned before it was sent).
    Unknown,
}

/// How an ECR operation failed, for the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened, in words fit for callers (e.g. "no connection to
    /// ECR"): it becomes part of the breaker's reason, which refused calls
    /// are told and `/readyz` shows.
    pub summary: String,
    /// The error with its whole chain of causes (e.g. "dispatch failure:
    /// io error: tcp connect error: Connection refused"): logged when the
    /// breaker opens, never told to callers.
    pub detail: String,
}

impl Failure {
    /// A failure whose summary is all there is to say (e.g. "HTTP 503 from ECR").
    pub fn plain(summary: impl Into<String>) -> Failure {
        let summary = summary.into();
        Failure {
            detail: summary.clone(),
            summary,
        }
    }
}

/// What a call was let through as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// An ordinary call while the breaker is closed.
    Normal,
    /// The one probe after the cool-down.
    Probe,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        reason: String,
    },
    HalfOpen {
        probe_started: Option<Instant>,
        reason: String,
    },
}

/// One registry's breaker.
#[derive(Debug)]
pub struct Breaker {
    registry: String,
    settings: BreakerConfig,
    /// A probe that never reports back (its caller gave up) frees the slot after this.
    probe_timeout: Duration,
    state: Mutex<State>,
    changes: watch::Sender<BreakerStatus>,
}

impl Breaker {
    /// A closed breaker for `registry`; `probe_timeout` is the longest an ECR operation may take.
    pub fn new(registry: &str, settings: BreakerConfig, probe_timeout: Duration) -> Breaker {
        let (changes, _) = watch::channel(BreakerStatus {
            phase: Phase::Closed,
            reason: String::new(),
        });
        Breaker {
            registry: registry.to_owned(),
            settings,
            probe_timeout,
            state: Mutex::new(State::Closed { failures: 0 }),
            changes,
        }
    }

    /// Follows the breaker's changes (health reporting).
    pub fn subscribe(&self) -> watch::Receiver<BreakerStatus> {
        self.changes.subscribe()
    }

    /// The current status.
    pub fn status(&self) -> BreakerStatus {
        self.changes.borrow().clone()
    }

    /// Lets a call through, or refuses it while the breaker is open.
    pub fn admit(&self, now: Instant) -> Result<Admission, BreakerOpen> {
        if !self.settings.enabled {
            return Ok(Admission::Normal);
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let admission = match &mut *state {
            State::Closed { .. } => Ok(Admission::Normal),
            State::Open { until, reason } if now >= *until => {
                *state = State::HalfOpen {
                    probe_started: Some(now),
                    reason: std::mem::take(reason),
                };
                Ok(Admission::Probe)
            }
            State::Open { until, reason } => Err(self.refusal(reason, until.saturating_duration_since(now))),
            State::HalfOpen {
                probe_started,
                reason,
            } => match probe_started {
                Some(started) if now.saturating_duration_since(*started) < self.probe_timeout => {
                    Err(self.refusal(reason, PROBE_RETRY_AFTER))
                }
                _ => {
                    *probe_started = Some(now);
                    Ok(Admission::Probe)
                }
            },
        };
        self.publish(&state);
        admission
    }

    /// Takes the outcome of a call [`Breaker::admit`] let through.
    pub fn settle(&self, admission: Admission, outcome: Outcome, now: Instant) {
        if !self.settings.enabled {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let detail = match &outcome {
            Outcome::Down(failure) => failure.detail.clone(),
            _ => String::new(),
        };
        let next = match (&mut *state, outcome) {
            // ECR answered: whatever the phase, it is up.
            (_, Outcome::Answered) => Some(State::Closed { failures: 0 }),
            (State::Closed { failures }, Outcome::Down(why)) => {
                *failures += 1;
                (*failures >= self.settings.failure_threshold).then(|| State::Open {
                    until: now + self.open_for(),
                    reason: format!(
                        "{failures} ECR calls in a row failed, the last with: {}",
                        why.summary
                    ),
                })
            }
            (State::HalfOpen { .. }, Outcome::Down(why)) if admission == Admission::Probe => {
                Some(State::Open {
                    until: now + self.open_for(),
                    reason: format!("the probe after the cool-down failed too: {}", why.summary),
                })
            }
            (State::HalfOpen { probe_started, .. }, Outcome::Unknown) if admission == Admission::Probe => {
                // The probe was abandoned: the next call may probe.
                *probe_started = None;
                None
            }
            // Late results of calls let through before the breaker opened.
            _ => None,
        };
        if let Some(next) = next {
            self.log_transition(&state, &next, &detail);
            *state = next;
        }
        self.publish(&state);
    }

    fn open_for(&self) -> Duration {
        Duration::from_secs(self.settings.open_seconds)
    }

    fn refusal(&self, reason: &str, retry_after: Duration) -> BreakerOpen {
        BreakerOpen {
            registry: self.registry.clone(),
            reason: reason.to_owned(),
            // A retry sooner than a second would only be refused again.
            retry_after: retry_after.max(Duration::from_secs(1)),
        }
    }

    /// Logs a change of phase; `detail` is the last failure's whole error chain.
    fn log_transition(&self, from: &State, to: &State, detail: &str) {
        match (from, to) {
            (State::Closed { .. }, State::Open { reason, .. }) => tracing::warn!(
                registry = %self.registry,
                open_seconds = self.settings.open_seconds,
                error = detail,
                "ECR circuit breaker OPEN: {reason}; calls fail fast with UNAVAILABLE, cached reads go on"
            ),
            (State::HalfOpen { .. }, State::Open { reason, .. }) => tracing::warn!(
                registry = %self.registry,
                open_seconds = self.settings.open_seconds,
                error = detail,
                "ECR circuit breaker OPEN again: {reason}"
            ),
            (State::Open { .. } | State::HalfOpen { .. }, State::Closed { .. }) => {
                tracing::info!(registry = %self.registry, "ECR circuit breaker CLOSED: ECR answers again")
            }
            _ => {}
        }
    }

    fn publish(&self, state: &State) {
        let status = match state {
            State::Closed { .. } => BreakerStatus {
                phase: Phase::Closed,
                reason: String::new(),
            },
            State::Open { reason, .. } => BreakerStatus {
                phase: Phase::Open,
                reason: reason.clone(),
            },
            State::HalfOpen { reason, .. } => BreakerStatus {
                phase: Phase::HalfOpen,
                reason: reason.clone(),
            },
        };
        self.changes.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

#[cfg(test)]
mod tests;
