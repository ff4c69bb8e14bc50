//! Event intake: ECR's EventBridge events, routed to an SQS queue per
//! registry (`[registries.events]`), keep the inventory current within
//! seconds (docs/events.md).
//!
//! Several receive loops per replica long-poll the queue for batches of 10;
//! replicas share it. Each event names what to read again
//! ([`crate::domain::events::Reread`]); a batch's re-reads are deduplicated,
//! applied (each its own transaction), and only then are their messages
//! deleted. A message whose re-read fails stays in the queue: it comes back
//! after its visibility timeout, and the queue's redrive policy moves it to
//! a dead-letter queue once it has failed `maxReceiveCount` times; its
//! repository is also marked for the backstop pass. An event of an unknown
//! type or shape is counted, logged once per type, and deleted.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::Syncer;
use crate::domain::events::{Parsed, Reread, UNKNOWN_TYPE, parse_message};
use crate::ecr::{CallLog, EventQueue, QueueMessage, QueueState, Registry};

/// How often the queue's depth is read for the metrics.
const DEPTH_EVERY: Duration = Duration::from_secs(15);
/// How long a receive loop waits after the queue failed.
const QUEUE_RETRY: Duration = Duration::from_secs(5);
/// From this many receives on, a failing message is logged as bound for the dead-letter queue.
const REDRIVE_WARNING: u32 = 3;
/// Locks that keep one replica's loops from re-reading one repository at once.
const STRIPES: usize = 64;

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Its re-reads committed.
    Applied,
    /// A re-read failed: the message stays for another delivery.
    Failed,
    /// Nothing to do (a failed action, a foreign registry, an unknown type): deleted.
    Ignored,
}

impl EventOutcome {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Applied => "applied",
            EventOutcome::Failed => "failed",
            EventOutcome::Ignored => "ignored",
        }
    }
}

/// Who counts the intake (the metrics).
pub trait EventObserver: Send + Sync + std::fmt::Debug {
    /// A message of `event_type` arrived.
    fn event_received(&self, registry: &str, event_type: &str);
    /// It ended so; `lag` is from the event's `time` to its commit (applied events).
    fn event_finished(&self, registry: &str, event_type: &str, outcome: EventOutcome, lag: Option<Duration>);
    /// The queue's depth as last read.
    fn queue_depth(&self, registry: &str, state: &QueueState);
}

/// Counts nothing (tests, tools).
#[derive(Debug, Default)]
pub struct Unobserved;

impl EventObserver for Unobserved {
    fn event_received(&self, _: &str, _: &str) {}
    fn event_finished(&self, _: &str, _: &str, _: EventOutcome, _: Option<Duration>) {}
    fn queue_depth(&self, _: &str, _: &QueueState) {}
}

/// The intake of one registry's queue.
#[derive(Debug)]
pub struct Intake {
    syncer: Syncer,
    registry: Registry,
    queue: EventQueue,
    observer: Arc<dyn EventObserver>,
    /// Unknown types logged so far (each once).
    logged: Mutex<HashSet<String>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Intake {
    /// The intake of `registry`'s queue; `None` when it has none.
    pub fn new(syncer: Syncer, registry: Registry, observer: Arc<dyn EventObserver>) -> Option<Arc<Intake>> {
        let queue = registry.events()?.clone();
        Some(Arc::new(Intake {
            syncer,
            registry,
            queue,
            observer,
            logged: Mutex::default(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }))
    }

    /// Runs `workers` receive loops and the depth reader until `shutdown` flips.
    pub async fn run(self: Arc<Self>, workers: usize, shutdown: watch::Receiver<bool>) {
        self.check_redrive().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            tasks.spawn(self.clone().receive_loop(shutdown.clone()));
        }
        tasks.spawn(self.clone().depth_loop(shutdown));
        while tasks.join_next().await.is_some() {}
    }

    /// Says once at start when the queue has no redrive policy: a message
    /// that always fails would then come back for as long as the queue keeps it.
    async fn check_redrive(&self) {
        match self.queue.state().await {
            Ok(state) if state.redrive_policy.is_none() => tracing::warn!(
                registry = %self.registry.reference.alias, queue = %self.queue.url(),
                "the event queue has no redrive policy: a message that fails again and again is retried until \
                 the queue's retention drops it; give it a dead-letter queue (deploy/events/ecr-events.yaml)"
            ),
            Ok(state) => self.observer.queue_depth(&self.registry.reference.alias, &state),
            Err(error) => tracing::warn!(registry = %self.registry.reference.alias, "event queue: {error}"),
        }
    }

    async fn receive_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let received = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                received = self.queue.receive() => received,
            };
            match received {
                Ok(messages) if messages.is_empty() => {}
                Ok(messages) => self.handle(&messages).await,
                Err(error) => {
                    tracing::warn!(registry = %self.registry.reference.alias, "event queue: {error}");
                    if !crate::tasks::pause(QUEUE_RETRY, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn depth_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while crate::tasks::pause(DEPTH_EVERY, &mut shutdown).await {
            match self.queue.state().await {
                Ok(state) => self.observer.queue_depth(&self.registry.reference.alias, &state),
                Err(error) => {
                    tracing::debug!(registry = %self.registry.reference.alias, "event queue depth: {error}")
                }
            }
        }
    }

    /// One batch: parse → re-read what the events name (each once) → delete
    /// the messages whose re-reads all committed (and those there was nothing to do for).
    pub async fn handle(&self, messages: &[QueueMessage]) {
        let alias = self.registry.reference.alias.as_str();
        let parsed: Vec<Parsed> = messages
            .iter()
            .map(|m| self.triage(&parse_message(&m.body)))
            .collect();
        let mut work: BTreeMap<&Reread, Vec<usize>> = BTreeMap::new();
        for (i, parsed) in parsed.iter().enumerate() {
            if let Parsed::Event(event) = parsed {
                for reread in &event.rereads {
                    work.entry(reread).or_default().push(i);
                }
            }
        }
        let mut failed = HashSet::new();
        for (reread, users) in &work {
            if let Err(error) = self.apply(reread).await {
                failed.extend(users.iter().copied());
                tracing::warn!(registry = %alias, repository = %reread.repository(), ?reread, "event re-read failed: {error}");
            }
        }
        let mut done = Vec::with_capacity(messages.len());
        for (i, (message, parsed)) in messages.iter().zip(&parsed).enumerate() {
            let (event_type, outcome, lag) = match parsed {
                Parsed::Event(event) if failed.contains(&i) => {
                    self.left_for_redrive(message, event.event_type);
                    (event.event_type, EventOutcome::Failed, None)
                }
                Parsed::Event(event) => {
                    let lag = (Utc::now() - event.time).to_std().ok();
                    (
                        event.event_type,
                        EventOutcome::Applied,
                        Some(lag.unwrap_or_default()),
                    )
                }
                Parsed::Ignored { event_type, .. } => (*event_type, EventOutcome::Ignored, None),
                Parsed::Unknown { .. } => (UNKNOWN_TYPE, EventOutcome::Ignored, None),
            };
            self.observer.event_received(alias, event_type);
            self.observer.event_finished(alias, event_type, outcome, lag);
            if outcome != EventOutcome::Failed {
                done.push(message);
            }
        }
        for chunk in done.chunks(crate::ecr::RECEIVE_BATCH as usize) {
            match self.queue.delete(chunk).await {
                Ok(undeleted) if undeleted.is_empty() => {}
                Ok(undeleted) => tracing::warn!(registry = %alias, ?undeleted,
                    "SQS did not delete these messages: they are delivered again and re-read again (no harm)"),
                Err(error) => tracing::warn!(registry = %alias,
                    "event queue: {error}; the batch is delivered again and re-read again (no harm)"),
            }
        }
    }

    /// An event of another registry is not this queue's: it is ignored as unknown.
    fn triage(&self, parsed: &Parsed) -> Parsed {
        let reference = &self.registry.reference;
        let parsed = match parsed {
            Parsed::Event(event)
                if event.account != reference.account_id || event.region != reference.region =>
            {
                Parsed::Unknown {
                    detail_type: event.event_type.to_owned(),
                    reason: format!(
                        "an event of account {} in {}, not of registry `{}` ({} in {})",
                        event.account, event.region, reference.alias, reference.account_id, reference.region
                    ),
                }
            }
            other => other.clone(),
        };
        match &parsed {
            Parsed::Unknown { detail_type, reason } => self.log_unknown(detail_type, reason),
            Parsed::Ignored {
                event_type, reason, ..
            } => {
                tracing::debug!(registry = %reference.alias, event_type, "event ignored: {reason}")
            }
            Parsed::Event(_) => {}
        }
        parsed
    }

    fn log_unknown(&self, detail_type: &str, reason: &str) {
        let first = self
            .logged
            .lock()
            .map(|mut logged| logged.len() < 1000 && logged.insert(detail_type.to_owned()))
            .unwrap_or(false);
        if first {
            tracing::warn!(registry = %self.registry.reference.alias, detail_type,
                "deleting an event the gateway does not follow: {reason} (logged once per type; counted as type=\"unknown\")");
        }
    }

    fn left_for_redrive(&self, message: &QueueMessage, event_type: &str) {
        let alias = &self.registry.reference.alias;
        if message.receive_count >= REDRIVE_WARNING {
            tracing::error!(registry = %alias, message_id = %message.message_id, event_type,
                receive_count = message.receive_count,
                "an event has failed {} times: it stays in the queue, whose redrive policy moves it to the \
                 dead-letter queue at maxReceiveCount; its repository is read by the next reconcile pass",
                message.receive_count);
        } else {
            tracing::info!(registry = %alias, message_id = %message.message_id, event_type,
                receive_count = message.receive_count, "event left in the queue for another delivery");
        }
    }

    /// Applies one re-read under its repository's stripe (so that two loops
    /// of this replica never interleave the read and write of one repository).
    /// A failure also marks the repository for the backstop.
    async fn apply(&self, reread: &Reread) -> Result<(), super::SyncError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        reread.repository().as_str().hash(&mut hasher);
        let _turn = self.stripes[hasher.finish() as usize % STRIPES].lock().await;
        let log = CallLog::default();
        let result = self.syncer.reread(&self.registry, reread, &log).await;
        if result.is_err()
            && let Err(error) = self.syncer.mark_dirty(&self.registry, reread.repository()).await
        {
            tracing::warn!(repository = %reread.repository(), "cannot mark the repository for the backstop: {error}");
        }
        result
    }
}
