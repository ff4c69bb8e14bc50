//! WatchImages: the inventory's changes as they commit (docs/events.md).
//!
//! A stream subscribes to the replica's change feed, then reads the change
//! log from its cursor until it has caught up, then follows the feed; the
//! cursor of every message is the seq of the last change it sent or passed
//! over, so a stream resumed from it misses nothing and repeats nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::Status;

use super::AppState;
use crate::api::call::Call;
use crate::api::convert::timestamp;
use crate::api::error::{ApiError, OrRecord as _, invalid};
use crate::api::page_token::PageKey;
use crate::auth::authz::Scope;
use crate::domain::{ChangeFilter, ChangeKind, InventoryChange, RegistryRef, Violation};
use crate::pb;
use crate::store::changes;

/// The stream WatchImages answers with.
pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchImagesResponse, Status>> + Send>>;

/// Heartbeat interval when the request gives none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Longest heartbeat interval a request may ask for.
const MAX_HEARTBEAT_SECONDS: i32 = 300;
/// Changes read per backlog query.
const BACKLOG_BATCH: i64 = 500;
/// Messages queued for a stream's HTTP/2 sender: beyond it, the stream waits
/// and its place in the feed's ring falls behind.
const QUEUED: usize = 16;

/// What a WatchImages request asks for, checked.
#[derive(Debug)]
struct WatchCommand {
    filter: ChangeFilter,
    cursor: Option<i64>,
    heartbeat: Duration,
    /// The registries the stream covers.
    registries: Vec<RegistryRef>,
}

fn parse(
    state: &AppState,
    key: &PageKey,
    request: &pb::WatchImagesRequest,
) -> Result<WatchCommand, ApiError> {
    let mut violations = Vec::new();
    let registries: Vec<RegistryRef> = state
        .registries_named(&request.registry)
        .or_record(&mut violations)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.reference.clone())
        .collect();
    if let Some(v) = crate::api::check_prefix("repository_prefix", &request.repository_prefix) {
        violations.push(v);
    }
    let kinds: Vec<ChangeKind> = request
        .kinds
        .iter()
        .filter_map(|k| kind_of(*k).or_record(&mut violations))
        .collect();
    let cursor = (!request.cursor.is_empty())
        .then(|| key.decode_change_cursor(&request.cursor))
        .transpose()
        .or_record(&mut violations)
        .flatten();
    let heartbeat = match request.heartbeat_seconds {
        0 => DEFAULT_HEARTBEAT,
        s @ 1..=MAX_HEARTBEAT_SECONDS => Duration::from_secs(s as u64),
        _ => {
            violations.push(Violation::new(
                "heartbeat_seconds",
                "watch-images.heartbeat",
                format!("between 1 and {MAX_HEARTBEAT_SECONDS} seconds, or 0 for the default of 15"),
            ));
            DEFAULT_HEARTBEAT
        }
    };
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    let filter = ChangeFilter {
        registry: (!request.registry.is_empty())
            .then(|| {
                registries
                    .first()
                    .map(|r| (r.account_id.clone(), r.region.clone()))
            })
            .flatten(),
        repository_prefix: (!request.repository_prefix.is_empty()).then(|| request.repository_prefix.clone()),
        kinds,
    };
    Ok(WatchCommand {
        filter,
        cursor,
        heartbeat,
        registries,
    })
}

fn kind_of(value: i32) -> Result<ChangeKind, Violation> {
    use pb::ImageChangeKind as K;
    let kind = match K::try_from(value) {
        Ok(K::Pushed) => ChangeKind::Pushed,
        Ok(K::Tagged) => ChangeKind::Tagged,
        Ok(K::Untagged) => ChangeKind::Untagged,
        Ok(K::Deleted) => ChangeKind::Deleted,
        Ok(K::Archived) => ChangeKind::Archived,
        Ok(K::Restored) => ChangeKind::Restored,
        Ok(K::Scanned) => ChangeKind::Scanned,
        Ok(K::Pinned) => ChangeKind::Pinned,
        Ok(K::Unpinned) => ChangeKind::Unpinned,
        Ok(K::Unspecified) | Err(_) => {
            return Err(Violation::new(
                "kinds",
                "watch-images.kind",
                format!(
                    "{value} is not a change kind: use IMAGE_CHANGE_KIND_PUSHED … IMAGE_CHANGE_KIND_UNPINNED, or none for all"
                ),
            ));
        }
    };
    Ok(kind)
}

fn kind_message(kind: ChangeKind) -> pb::ImageChangeKind {
    use pb::ImageChangeKind as K;
    match kind {
        ChangeKind::Pushed => K::Pushed,
        ChangeKind::Tagged => K::Tagged,
        ChangeKind::Untagged => K::Untagged,
        ChangeKind::Deleted => K::Deleted,
        ChangeKind::Archived => K::Archived,
        ChangeKind::Restored => K::Restored,
        ChangeKind::Scanned => K::Scanned,
        ChangeKind::Pinned => K::Pinned,
        ChangeKind::Unpinned => K::Unpinned,
    }
}

/// Starts the stream: decode → authorize (the caller's readable scope
/// filters it) → check the cursor against the log → follow.
pub(super) async fn watch_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::WatchImagesRequest,
) -> Result<(WatchStream, Value), ApiError> {
    call.caller()?;
    let key = state.page_key().await?;
    let command = parse(state, &key, request)?;
    let scope = call.authorize_list(&state.authz, command.registries.iter())?;
    // Subscribed before the log is read: what the backlog read misses, the ring has.
    let ring = state.feed.subscribe();
    let bounds = changes::bounds(state.store.pool()).await?;
    let after = match command.cursor {
        Some(cursor) => check_cursor(cursor, bounds, &key)?,
        None => bounds.head,
    };
    let watch = Watch {
        pool: state.store.pool().clone(),
        key,
        filter: command.filter,
        scope,
        registries: command.registries,
        heartbeat: command.heartbeat,
        draining: state.draining.clone(),
        capacity: state.feed.capacity(),
    };
    let (sender, receiver) = mpsc::channel(QUEUED);
    tokio::spawn(watch.run(after, ring, sender));
    let stream: WatchStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver));
    Ok((stream, json!({"fromSequence": after})))
}

/// A cursor the log still covers, else OUT_OF_RANGE saying what to do.
fn check_cursor(cursor: i64, bounds: changes::Bounds, key: &PageKey) -> Result<i64, ApiError> {
    if cursor < bounds.pruned_through {
        return Err(ApiError::OutOfRange {
            reason: "CHANGE_LOG_PRUNED",
            description: format!(
                "the change log no longer holds the changes after this cursor (retention removed everything up to \
                 sequence {}): list the images again (ListImages, SearchImages), then watch from the cursor of a \
                 new stream opened before the listing",
                bounds.pruned_through
            ),
        });
    }
    if cursor > bounds.head {
        return Err(ApiError::OutOfRange {
            reason: "CHANGE_LOG_AHEAD",
            description: format!(
                "this cursor is ahead of the change log (its head is `{}`): the database was restored from an \
                 earlier state; list the images again, then watch without a cursor",
                key.encode_change_cursor(bounds.head)
            ),
        });
    }
    Ok(cursor)
}

/// One stream's state.
struct Watch {
    pool: sqlx::PgPool,
    key: Arc<PageKey>,
    filter: ChangeFilter,
    scope: Scope,
    registries: Vec<RegistryRef>,
    heartbeat: Duration,
    draining: watch::Receiver<bool>,
    capacity: usize,
}

type Sender = mpsc::Sender<Result<pb::WatchImagesResponse, Status>>;

impl Watch {
    /// The backlog after `after`, then the feed, until the caller goes away,
    /// falls behind, or the gateway shuts down.
    async fn run(self, after: i64, mut ring: broadcast::Receiver<Arc<InventoryChange>>, sender: Sender) {
        let Some(mut after) = self.catch_up(after, i64::MAX, &sender).await else {
            return;
        };
        let mut beat = Instant::now() + self.heartbeat;
        let mut draining = self.draining.clone();
        loop {
            let received = tokio::select! {
                () = async { let _ = draining.wait_for(|d| *d).await; } => {
                    let _ = sender.send(Err(self.shutting_down(after))).await;
                    return;
                }
                () = sender.closed() => return,
                received = tokio::time::timeout_at(beat, ring.recv()) => received,
            };
            let sent = match received {
                Err(_quiet) => sender.send(Ok(self.heartbeat_message(after))).await.is_ok(),
                Ok(Ok(change)) if change.seq <= after => continue,
                Ok(Ok(change)) => {
                    // A gap (never expected: the ring follows the log) is read from the log.
                    if change.seq > after + 1 && self.catch_up(after, change.seq - 1, &sender).await.is_none()
                    {
                        return;
                    }
                    after = change.seq;
                    match self.message(&change) {
                        Some(message) => sender.send(Ok(message)).await.is_ok(),
                        None => continue,
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let _ = sender.send(Err(self.fell_behind(after))).await;
                    return;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    let _ = sender.send(Err(self.shutting_down(after))).await;
                    return;
                }
            };
            if !sent {
                return;
            }
            beat = Instant::now() + self.heartbeat;
        }
    }

    /// Sends what the log holds after `after` up to `upto`; the last seq
    /// read, or `None` when the stream ended.
    async fn catch_up(&self, mut after: i64, upto: i64, sender: &Sender) -> Option<i64> {
        loop {
            let batch = match changes::after(&self.pool, after, BACKLOG_BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    let _ = sender.send(Err(ApiError::from(error).to_status())).await;
                    return None;
                }
            };
            let full = batch.len() as i64 == BACKLOG_BATCH;
            for change in batch.iter().take_while(|c| c.seq <= upto) {
                after = change.seq;
                if let Some(message) = self.message(change) {
                    sender.send(Ok(message)).await.ok()?;
                }
            }
            if !full || after >= upto {
                return Some(after);
            }
        }
    }

    /// The message of a change this stream passes, with its cursor.
    fn message(&self, change: &InventoryChange) -> Option<pb::WatchImagesResponse> {
        if !self.filter.admits(change) {
            return None;
        }
        let registry = self
            .registries
            .iter()
            .find(|r| r.account_id == change.account_id && r.region == change.region)?;
        if !self.scope.allows(&registry.alias, &change.repository) {
            return None;
        }
        Some(pb::WatchImagesResponse {
            cursor: self.key.encode_change_cursor(change.seq),
            event: Some(pb::watch_images_response::Event::Change(change_message(
                registry, change,
            ))),
        })
    }

    fn heartbeat_message(&self, after: i64) -> pb::WatchImagesResponse {
        pb::WatchImagesResponse {
            cursor: self.key.encode_change_cursor(after),
            event: Some(pb::watch_images_response::Event::Heartbeat(pb::WatchHeartbeat {
                sent_at: Some(timestamp(chrono::Utc::now())),
            })),
        }
    }

    fn fell_behind(&self, after: i64) -> Status {
        ApiError::ResourceExhausted {
            reason: "WATCH_FELL_BEHIND",
            subject: "WatchImages".into(),
            description: format!(
                "the stream fell more than {} changes behind (it reads slower than the inventory changes); \
                 open a new one with cursor `{}` to resume without a gap",
                self.capacity,
                self.key.encode_change_cursor(after)
            ),
            retry_after: Duration::from_secs(1),
        }
        .to_status()
    }

    fn shutting_down(&self, after: i64) -> Status {
        ApiError::Unavailable {
            reason: "SHUTTING_DOWN",
            description: format!(
                "this gateway replica is shutting down; resume on another with cursor `{}`",
                self.key.encode_change_cursor(after)
            ),
            retry_after: Duration::from_secs(1),
        }
        .to_status()
    }
}

fn change_message(registry: &RegistryRef, change: &InventoryChange) -> pb::ImageChange {
    let repository = crate::domain::RepositoryName::parse(&change.repository).ok();
    let digest = crate::domain::Digest::parse(&change.digest).ok();
    let pinned_uri = match (&repository, &digest) {
        (Some(repository), Some(digest)) => {
            crate::domain::pinned_uri(&registry.account_id, &registry.region, repository, digest)
        }
        _ => String::new(),
    };
    let mut tags = change.tags.clone();
    tags.sort();
    pb::ImageChange {
        registry: registry.alias.clone(),
        registry_id: registry.account_id.clone(),
        region: registry.region.clone(),
        repository: change.repository.clone(),
        digest: change.digest.clone(),
        kind: kind_message(change.kind) as i32,
        tags,
        changed_tags: change.changed_tags.clone(),
        changed_at: Some(timestamp(change.at)),
        pushed_at: change.pushed_at.map(timestamp),
        scan: change.scan.as_ref().map(|scan| pb::ScanSummary {
            registry: registry.alias.clone(),
            repository: change.repository.clone(),
            digest: change.digest.clone(),
            status: scan.status.clone(),
            completed_at: scan.completed_at.map(timestamp),
            counts: Some(pb::SeverityCounts {
                critical: scan.critical as i32,
                high: scan.high as i32,
                medium: scan.medium as i32,
                low: scan.low as i32,
                informational: scan.informational as i32,
                undefined: scan.undefined as i32,
            }),
            ..pb::ScanSummary::default()
        }),
        pin_holder: change.holder.clone().unwrap_or_default(),
        pinned_uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_message_and_back() {
        for kind in ChangeKind::ALL {
            assert_eq!(kind_of(kind_message(kind) as i32).unwrap(), kind);
        }
        assert_eq!(kind_of(0).unwrap_err().rule, "watch-images.kind");
        assert_eq!(kind_of(99).unwrap_err().field, "kinds");
    }
}
