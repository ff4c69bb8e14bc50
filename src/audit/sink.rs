//! Sinks that ship the audit trail elsewhere: JSON lines (stdout or a file,
//! for log shippers) and a NATS JetStream subject.
//!
//! The chain is the outbox: a read call's event is linked in the transaction
//! that writes it, a mutation's joins `audit_chain_queue` in the transaction
//! that finalises it, and links commit in sequence order.
//! Each sink keeps a cursor (the last sequence delivered) in
//! `audit_sink_cursors`; one replica at a time holds a sink's cursor row
//! while it delivers a batch and moves the cursor only after the whole batch
//! is written or acknowledged. Delivery is at least once: a batch that fails
//! (NATS down) is sent again, and JetStream drops the duplicates by message
//! id (the event id) within the stream's duplicate window.

use std::io::Write as _;
use std::time::Duration;

use async_nats::jetstream::{self, context::Publish};
use tokio::sync::watch;

use super::chain;
use crate::store::audit_trail::{self, AuditFilter, AuditRow};
use crate::store::{Store, StoreError};

/// Events delivered per batch.
const BATCH: i64 = 500;
/// How long a JetStream acknowledgement may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where events go.
pub enum Target {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File(std::path::PathBuf),
    /// A JetStream subject (the stream is created when missing).
    Nats {
        /// The server, e.g. nats://127.0.0.1:4222.
        url: String,
        /// The subject events are published on.
        subject: String,
        /// The stream that holds the subject.
        stream: String,
    },
}

/// The sinks `[audit]` configures.
pub fn configured(config: &crate::config::AuditConfig) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(jsonl) = &config.jsonl {
        targets.push(if jsonl == "-" {
            Target::Stdout
        } else {
            Target::File(jsonl.into())
        });
    }
    if let Some(url) = &config.nats_url {
        targets.push(Target::Nats {
            url: url.clone(),
            subject: config.nats_subject.clone(),
            stream: config.nats_stream.clone(),
        });
    }
    targets
}

impl Target {
    /// The cursor's name.
    pub fn name(&self) -> String {
        match self {
            Target::Stdout => "jsonl:stdout".into(),
            Target::File(path) => format!("jsonl:{}", path.display()),
            Target::Nats { subject, .. } => format!("nats:{subject}"),
        }
    }
}

/// A connected sink.
enum Connected {
    Lines(Box<dyn std::io::Write + Send>),
    Nats {
        context: jetstream::Context,
        subject: String,
    },
}

async fn connect(target: &Target) -> Result<Connected, String> {
    match target {
        Target::Stdout => Ok(Connected::Lines(Box::new(std::io::stdout()))),
        Target::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| Connected::Lines(Box::new(std::io::BufWriter::new(f))))
            .map_err(|e| format!("cannot open {}: {e}", path.display())),
        Target::Nats { url, subject, stream } => {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connection_timeout(Duration::from_secs(5))
                .connect(url.as_str())
                .await
                .map_err(|e| format!("NATS {url}: {e}"))?;
            let context = jetstream::new(client);
            context
                .get_or_create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![subject.clone()],
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("JetStream stream {stream}: {e}"))?;
            Ok(Connected::Nats {
                context,
                subject: subject.clone(),
            })
        }
    }
}

impl Connected {
    /// Writes or publishes `rows` in order; Ok only when every one is written or acknowledged.
    async fn deliver(&mut self, rows: &[AuditRow]) -> Result<(), String> {
        match self {
            Connected::Lines(out) => {
                for row in rows {
                    serde_json::to_writer(&mut *out, &chain::export_json(row)).map_err(|e| e.to_string())?;
                    out.write_all(b"\n").map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())
            }
            Connected::Nats { context, subject } => {
                let mut acks = Vec::with_capacity(rows.len());
                for row in rows {
                    let payload = serde_json::to_vec(&chain::export_json(row)).map_err(|e| e.to_string())?;
                    let publish = Publish::build()
                        .payload(payload.into())
                        .message_id(row.event_id.to_string());
                    acks.push(
                        context
                            .send_publish(subject.clone(), publish)
                            .await
                            .map_err(|e| format!("publish: {e}"))?,
                    );
                }
                for ack in acks {
                    tokio::time::timeout(ACK_TIMEOUT, ack.into_future())
                        .await
                        .map_err(|_| "no acknowledgement from JetStream in time".to_owned())?
                        .map_err(|e| format!("acknowledgement: {e}"))?;
                }
                Ok(())
            }
        }
    }
}

/// Delivers the chain to `target` from its cursor on, until `stop` flips.
pub async fn run_sink(store: Store, target: Target, mut stop: watch::Receiver<bool>) {
    let name = target.name();
    let mut connected: Option<Connected> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        let pause = match step(&store, &target, &name, &mut connected).await {
            Ok(0) => Duration::from_millis(250),
            Ok(_) => {
                backoff = Duration::from_millis(500);
                Duration::ZERO
            }
            Err(error) => {
                tracing::warn!(sink = %name, "audit sink is behind, retrying in {backoff:?}: {error}");
                connected = None;
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                pause
            }
        };
        if !crate::tasks::pause(pause, &mut stop).await {
            return;
        }
    }
}

/// One batch: returns how many events were delivered (0: nothing new, or another replica holds the sink).
async fn step(
    store: &Store,
    target: &Target,
    name: &str,
    connected: &mut Option<Connected>,
) -> Result<usize, String> {
    let store_error = |e: StoreError| e.to_string();
    let mut tx = store.begin().await.map_err(store_error)?;
    let Some(cursor) = audit_trail::lock_sink(&mut tx, name).await.map_err(store_error)? else {
        return Ok(0);
    };
    let (rows, upto) = audit_trail::chained_after(store.pool(), &AuditFilter::default(), cursor, BATCH)
        .await
        .map_err(store_error)?;
    if upto == cursor {
        return Ok(0);
    }
    if connected.is_none() {
        *connected = Some(connect(target).await?);
    }
    if let Some(sink) = connected.as_mut() {
        sink.deliver(&rows).await?;
    }
    audit_trail::advance_sink(&mut tx, name, upto)
        .await
        .map_err(store_error)?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(rows.len())
}
