//! Recording the audit trail. Mutations write a pending record in the same
//! transaction that claims the operation, before ECR is called, and finalise
//! it with the cache update ([`store::audit_events`]). Read calls and calls
//! rejected before any change hand a finished record to [`AuditLog::record`],
//! which a background writer stores in batches; shutdown drains it.

pub mod chain;
pub mod digest;
pub mod retention;
pub mod sink;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::domain::AuditRecord;
use crate::store::audit_events::FinalBatch;
use crate::store::{Store, insert_final_batch};

/// Largest `requestParameters` / `responseElements` kept whole, in bytes (CloudTrail's cap).
pub const MAX_ELEMENT_BYTES: usize = 100 * 1024;
/// Largest `userAgent` kept, in bytes.
pub const MAX_USER_AGENT_BYTES: usize = 1024;
/// Records written per statement by the background writer.
const BATCH: usize = 500;
/// Records waiting for the writer before `record` waits for room. Enough for
/// the writer to always find a full batch; a deeper queue only holds more
/// memory (a record is a few KiB) and adds latency when Postgres falls behind.
const QUEUE: usize = 2_000;
/// Batches written at once (their links are appended one at a time); also
/// the size of the writer's own connection pool.
pub const IN_FLIGHT: usize = 4;
/// How much less CPU the writer's thread asks for than the threads serving
/// calls (a nice value): batches are written in the machine's spare time, and
/// when it has none the queue's bound slows callers down instead.
const WRITER_NICENESS: i32 = 10;

/// Hands finished records to the background writer.
#[derive(Clone, Debug)]
pub struct AuditLog {
    sender: mpsc::Sender<AuditRecord>,
}

/// The background writer; `shutdown` waits until every queued record is stored.
#[derive(Debug)]
pub struct AuditWriter {
    task: JoinHandle<()>,
}

impl AuditLog {
    /// Starts the background writer on a thread of its own, at a lower CPU
    /// priority than the threads serving calls, with its own runtime and a
    /// pool of [`IN_FLIGHT`] connections (to the store's database): turning
    /// a batch into its records' canonical forms and a statement takes
    /// milliseconds of CPU, which on a worker of the call runtime held up
    /// every call queued behind it. Where no thread can be started, the
    /// writer runs as a task of the current runtime instead.
    pub fn start(store: Store) -> (AuditLog, AuditWriter) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let pool = store.own_pool(IN_FLIGHT as u32);
        // The thread takes the receiver from here; if it cannot start, it is
        // still here for the fallback task.
        let slot = Arc::new(Mutex::new(Some(receiver)));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|runtime| {
                let slot = slot.clone();
                std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || {
                        lower_priority();
                        let receiver = slot.lock().ok().and_then(|mut r| r.take());
                        if let Some(receiver) = receiver {
                            runtime.block_on(async {
                                // Its connections belong to this runtime.
                                let pool = pool.connect_lazy();
                                write_batches(pool.clone(), receiver).await;
                                pool.close().await;
                            });
                        }
                        let _ = done_tx.send(());
                    })
            });
        let fallback = match started {
            Ok(_) => None,
            Err(error) => {
                tracing::warn!("no thread for the audit writer ({error}); it runs on the call runtime");
                slot.lock().ok().and_then(|mut r| r.take())
            }
        };
        let task = match fallback {
            Some(receiver) => tokio::spawn(write_batches(store.pool().clone(), receiver)),
            None => tokio::spawn(async move {
                let _ = done_rx.await;
            }),
        };
        (AuditLog { sender }, AuditWriter { task })
    }

    /// Queues a finished record; waits for room when the writer is behind.
    pub async fn record(&self, record: AuditRecord) {
        if let Err(error) = self.sender.send(record).await {
            tracing::error!(event_id = %error.0.event_id, "audit writer stopped; record logged instead: {:?}", error.0);
        }
    }
}

impl AuditWriter {
    /// Waits until every queued record is written (all senders must be gone).
    pub async fn shutdown(self, grace: Duration) {
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::error!("audit writer did not drain within {grace:?}");
        }
    }
}

/// Lowers the calling thread's CPU priority by [`WRITER_NICENESS`] (Linux:
/// a nice value is per thread; raising it needs no privilege). Where that
/// fails the writer runs at normal priority, which only costs latency.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, thread);
        if libc::setpriority(libc::PRIO_PROCESS, thread, current + WRITER_NICENESS) != 0 {
            tracing::debug!("could not lower the audit writer's priority");
        }
    }
}

/// Takes up to [`BATCH`] records at a time and keeps up to [`IN_FLIGHT`]
/// batches being written at once: one batch's round trip to Postgres does not
/// hold up the next (the order of rows does not matter; event ids are
/// time-ordered UUIDv7s).
async fn write_batches(pool: PgPool, mut receiver: mpsc::Receiver<AuditRecord>) {
    let mut writing = tokio::task::JoinSet::new();
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        if receiver.recv_many(&mut batch, BATCH).await == 0 {
            break;
        }
        while writing.len() >= IN_FLIGHT {
            let _ = writing.join_next().await;
        }
        let pool = pool.clone();
        writing.spawn(async move { write_with_retry(&pool, FinalBatch::new(batch, chain::LINKER)).await });
    }
    while writing.join_next().await.is_some() {}
}

/// Retries while Postgres is down, so that no record is dropped; the queue's
/// bound pushes back on callers meanwhile. A batch Postgres refuses for its
/// values is written record by record, and a record it refuses is stored
/// with its free text replaced by why ([`FinalBatch::strip`]): the event is
/// kept and the writer does not stall.
async fn write_with_retry(pool: &PgPool, batch: FinalBatch) {
    let mut delay = Duration::from_millis(100);
    let mut batch = batch;
    let mut stripped = false;
    loop {
        match insert_final_batch(pool, &batch, chain::LINKER).await {
            Ok(()) => return,
            Err(error) if error.is_data_error() && batch.len() > 1 => {
                tracing::warn!(
                    records = batch.len(),
                    "Postgres refused an audit batch ({error}); writing its records one by one"
                );
                for single in batch.split() {
                    Box::pin(write_with_retry(pool, single)).await;
                }
                return;
            }
            Err(error) if error.is_data_error() && !stripped => {
                tracing::error!(
                    "Postgres refused an audit record ({error}); storing it without its free text"
                );
                batch.strip(&error.to_string());
                stripped = true;
            }
            Err(error) if error.is_data_error() => {
                tracing::error!(
                    "Postgres refused an audit record even without its free text ({error}): {batch:?}"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(
                    records = batch.len(),
                    "writing audit records failed, retrying in {delay:?}: {error}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Links finalised events into the hash chain until `stop` flips: any
/// replica may run it; one chains at a time (the chain head's row lock).
pub async fn run_chainer(store: Store, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let pause = match crate::store::audit_trail::chain_step(store.pool(), 1000, chain::LINKER).await {
            Ok(0) => Duration::from_millis(100),
            Ok(_) => Duration::ZERO,
            Err(error) => {
                tracing::warn!("chaining audit events failed, retrying: {error}");
                Duration::from_secs(1)
            }
        };
        if !crate::tasks::pause(pause, &mut stop).await {
            return;
        }
    }
}

/// Signs the chain's head every `interval` when it moved since the last
/// digest, until `stop` flips.
pub async fn run_digester(
    store: Store,
    key: ed25519_dalek::SigningKey,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if !crate::tasks::pause(interval, &mut stop).await {
            return;
        }
        if let Err(error) = sign_head(&store, &key).await {
            tracing::warn!("signing the audit chain's head failed, retrying later: {error}");
        }
    }
}

/// Signs the chain's head if no digest covers it yet.
pub async fn sign_head(
    store: &Store,
    key: &ed25519_dalek::SigningKey,
) -> Result<(), crate::store::StoreError> {
    use crate::store::audit_trail;
    let (sequence, hash) = audit_trail::head_with_hash(store.pool()).await?;
    if sequence > audit_trail::last_digest(store.pool()).await? {
        let signed = digest::sign(key, sequence, &hash, chrono::Utc::now());
        audit_trail::insert_digest(store.pool(), &signed).await?;
    }
    Ok(())
}

/// Cuts a JSON element that is larger than [`MAX_ELEMENT_BYTES`], keeping a marker.
pub fn cap_element(value: Value) -> Value {
    // Nearly every element is a few hundred bytes: no need to serialise it to know.
    if size_bound(&value) <= MAX_ELEMENT_BYTES {
        return value;
    }
    let text = value.to_string();
    if text.len() <= MAX_ELEMENT_BYTES {
        return value;
    }
    let mut cut = MAX_ELEMENT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "truncated": true,
        "originalBytes": text.len(),
        "preview": &text[..cut],
    })
}

/// An upper bound of `value`'s serialised length: every character of a
/// string escaped as `\uXXXX` (6 bytes), every number at its longest.
fn size_bound(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(text) => 2 + 6 * text.len(),
        Value::Array(items) => 2 + items.iter().map(|item| 1 + size_bound(item)).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(key, item)| 4 + 6 * key.len() + size_bound(item))
                .sum::<usize>()
        }
    }
}

/// Cuts a user agent to [`MAX_USER_AGENT_BYTES`] on a character boundary.
pub fn cap_user_agent(agent: &str) -> String {
    let mut cut = agent.len().min(MAX_USER_AGENT_BYTES);
    while !agent.is_char_boundary(cut) {
        cut -= 1;
    }
    agent[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_elements_are_kept_whole() {
        let value = serde_json::json!({"repository": "payments/api"});
        assert_eq!(cap_element(value.clone()), value);
    }

    #[test]
    fn large_elements_are_cut_with_a_marker() {
        let value = serde_json::json!({"policy": "x".repeat(MAX_ELEMENT_BYTES * 2)});
        let capped = cap_element(value);
        assert_eq!(capped["truncated"], true);
        assert!(
            capped["preview"]
                .as_str()
                .is_some_and(|p| p.len() <= MAX_ELEMENT_BYTES)
        );
    }

    #[test]
    fn the_size_bound_is_never_below_the_serialised_length() {
        let values = [
            serde_json::json!(null),
            serde_json::json!(-1.2345678901234567e-300),
            serde_json::json!(u64::MAX),
            serde_json::json!(i64::MIN),
            serde_json::json!("\u{0}\u{1f}\"\\é😀"),
            serde_json::json!({"k\u{1}": [true, false, null, {"": ""}], "n": [1, -2.5, "x"]}),
        ];
        for value in values {
            assert!(size_bound(&value) >= value.to_string().len(), "{value}");
        }
        // Just under and just over the cap: kept whole, then cut.
        let under = serde_json::json!({"p": "x".repeat(MAX_ELEMENT_BYTES / 6 - 10)});
        assert_eq!(cap_element(under.clone()), under);
        let over = serde_json::json!({"p": "\u{1}".repeat(MAX_ELEMENT_BYTES / 6 + 10)});
        assert!(over.to_string().len() > MAX_ELEMENT_BYTES);
        assert_eq!(cap_element(over)["truncated"], true);
    }

    #[test]
    fn user_agents_are_cut_on_a_character_boundary() {
        let agent = "é".repeat(MAX_USER_AGENT_BYTES);
        let capped = cap_user_agent(&agent);
        assert!(capped.len() <= MAX_USER_AGENT_BYTES);
        assert!(capped.chars().all(|c| c == 'é'));
    }
}
