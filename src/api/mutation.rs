//! The path every mutation takes after validation:
//! 1. claim the caller's `request_id` and write the pending audit record in
//!    one transaction (if that fails, ECR is not touched: UNAVAILABLE);
//! 2. call ECR (converging, so a retry finishes a half-done job);
//! 3. in one transaction: update the cache, finalise the audit record, and
//!    store the response to replay for a repeated `request_id`.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use prost::Message;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use super::call::{Call, failed, succeeded};
use super::error::ApiError;
use crate::domain::{ImageRecord, RegistryRef, RepositoryName, RepositoryState, Violation};
use crate::ecr::CallLog;
use crate::ecr::ScanReport;
use crate::store::cleanup_runs::NewRun;
use crate::store::images::ManifestFacts;
use crate::store::operations::{self, Claim};
use crate::store::pins::{self, PinRow};
use crate::store::scans::{self, ExceptionRow};
use crate::store::{Store, Tx, audit_events, cleanup_runs, images, repositories};

/// Longest `request_id`.
const MAX_REQUEST_ID: usize = 128;

/// The cache change a mutation made in ECR.
#[derive(Debug)]
pub enum CacheChange {
    /// The repository now looks like this.
    Upsert(RegistryRef, RepositoryState),
    /// The repository is gone.
    Delete(RegistryRef, RepositoryName),
    /// An image's scan as ECR just reported it.
    Scan(RegistryRef, RepositoryName, ScanReport),
    /// A new vulnerability exception.
    InsertException(Box<ExceptionRow>),
    /// A vulnerability exception was revoked.
    RevokeException {
        /// Its id.
        id: uuid::Uuid,
        /// The caller.
        by: String,
        /// Why.
        reason: String,
        /// When.
        at: chrono::DateTime<Utc>,
    },
    /// A pin was taken or renewed.
    Pin(Box<PinRow>),
    /// A holder's pin was removed.
    Unpin {
        /// The registry.
        registry: RegistryRef,
        /// The repository.
        repository: String,
        /// The image.
        digest: String,
        /// The holder.
        holder: String,
    },
    /// Images deleted in ECR (whole) and tags removed from images that remain.
    ImagesDeleted {
        /// The registry.
        registry: RegistryRef,
        /// The repository.
        repository: RepositoryName,
        /// Images gone with all their tags.
        digests: Vec<String>,
        /// Tags gone from images that remain.
        untagged: Vec<String>,
    },
    /// An image as ECR describes it after a PutImage (its tags moved to it),
    /// with what its manifest says.
    ImagePut {
        /// The registry.
        registry: RegistryRef,
        /// The repository.
        repository: RepositoryName,
        /// The image and all its tags.
        image: Box<ImageRecord>,
        /// Its manifest's facts.
        facts: ManifestFacts,
    },
    /// A cleanup run was started (the worker carries it out).
    StartCleanupRun(Box<NewRun>),
    /// A remediation run and its items to record.
    StartRemediationRun(Box<crate::store::remediation_runs::NewRun>),
    /// Nothing the gateway caches changed.
    Nothing,
}

/// What the work of a mutation is told.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1 on the first call with this `request_id` (or without one); more on retries.
    pub number: i32,
    /// Collects the ECR request ids for the audit record.
    pub log: CallLog,
}

/// What the work of a mutation returns.
pub struct Done<R> {
    /// The response.
    pub response: R,
    /// The cache change to commit with the audit record.
    pub change: CacheChange,
    /// The audit record's `responseElements`.
    pub elements: Value,
}

/// Checks a caller's `request_id`: empty (no idempotency) or 1-128 of `[A-Za-z0-9._:-]`.
pub fn check_request_id(request_id: &str) -> Option<Violation> {
    let valid = request_id.len() <= MAX_REQUEST_ID
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    (!valid).then(|| {
        Violation::new(
            "request_id",
            "request-id.format",
            format!("use 1-{MAX_REQUEST_ID} characters of [A-Za-z0-9._:-], e.g. a UUID"),
        )
    })
}

/// Runs a validated mutation; returns its response and whether it was replayed.
pub async fn run<R, F, Fut>(
    store: &Store,
    call: &mut Call,
    request_id: &str,
    request: &impl Message,
    lease: Duration,
    work: F,
) -> Result<(R, bool), ApiError>
where
    R: Message + Default,
    F: FnOnce(Attempt) -> Fut,
    Fut: Future<Output = Result<Done<R>, ApiError>>,
{
    let principal = call.caller()?.identity.principal.clone();
    let number = loop {
        match record_pending(store, call, &principal, request_id, request, lease).await? {
            Claim::Owned { attempt } => break attempt,
            Claim::Succeeded(stored) => return replay(stored.response),
            Claim::InProgress { lease_until } => {
                // Another call with this id is running: wait for it while it
                // can still finish and the caller waits, then replay its
                // answer (or run, if it failed).
                let running = Running {
                    lease_until,
                    in_flight_until: in_flight_until(lease_until, lease),
                };
                let until = running.in_flight_until.min(wait_limit(call.deadline));
                if !wait_for(store, &principal, request_id, &running, until).await {
                    return Err(in_progress(request_id, &running));
                }
            }
            Claim::Mismatch { method } => return Err(reused(request_id, &method)),
        }
    };
    call.persisted = true;

    let log = CallLog::default();
    let result = work(Attempt {
        number,
        log: log.clone(),
    })
    .await;
    match result {
        Ok(done) => finish_success(store, call, &principal, request_id, done, log.ids()).await,
        Err(error) => {
            finish_failure(store, call, &principal, request_id, &error, log.ids()).await;
            Err(error)
        }
    }
}

/// Step 3, one transaction: claims `request_id` (when given) and, when this
/// call owns it, writes the pending audit record. Any other claim is
/// returned without writing anything.
#[tracing::instrument(name = "db.transaction", skip_all, fields(
    otel.name = "postgresql record_pending", otel.kind = "client",
    db.system = "postgresql", db.operation.name = "record_pending"))]
async fn record_pending(
    store: &Store,
    call: &Call,
    principal: &str,
    request_id: &str,
    request: &impl Message,
    lease: Duration,
) -> Result<Claim, ApiError> {
    let mut tx = store.begin().await.map_err(audit_unavailable)?;
    let claim = if request_id.is_empty() {
        Claim::Owned { attempt: 1 }
    } else {
        let hash = request_hash(&call.record.event_name, request);
        let lease_until = Utc::now() + lease;
        operations::claim(
            &mut tx,
            principal,
            request_id,
            &call.record.event_name,
            &hash,
            lease_until,
        )
        .await
        .map_err(audit_unavailable)?
    };
    if matches!(claim, Claim::Owned { .. }) {
        audit_events::insert(&mut tx, &call.record)
            .await
            .map_err(audit_unavailable)?;
        tx.commit().await.map_err(|e| audit_unavailable(e.into()))?;
    }
    Ok(claim)
}

async fn finish_success<R: Message>(
    store: &Store,
    call: &Call,
    principal: &str,
    request_id: &str,
    done: Done<R>,
    ecr_ids: Vec<String>,
) -> Result<(R, bool), ApiError> {
    let outcome = succeeded(done.elements, ecr_ids);
    let commit = async {
        let mut tx = store.begin().await?;
        apply_change(&mut tx, &done.change).await?;
        audit_events::finalize(&mut tx, call.record.event_id, &outcome).await?;
        if !request_id.is_empty() {
            operations::succeed(&mut tx, principal, request_id, &done.response.encode_to_vec()).await?;
        }
        tx.commit().await?;
        invalidate_changed(store, &done.change);
        Ok::<_, crate::store::StoreError>(())
    }
    .instrument(crate::store::transaction_span("finalize_mutation"));
    match commit.await {
        Ok(()) => Ok((done.response, false)),
        Err(error) => {
            tracing::error!(event_id = %call.record.event_id, "ECR was changed but the outcome could not be recorded: {error}");
            Err(ApiError::Unavailable {
                reason: "OUTCOME_NOT_RECORDED",
                description: "ECR was changed but the gateway's database did not take the outcome; \
                              retry with the same request_id to converge"
                    .into(),
                retry_after: Duration::from_secs(2),
            })
        }
    }
}

async fn finish_failure(
    store: &Store,
    call: &Call,
    principal: &str,
    request_id: &str,
    error: &ApiError,
    ecr_ids: Vec<String>,
) {
    let outcome = failed(error, ecr_ids);
    let commit = async {
        let mut tx = store.begin().await?;
        audit_events::finalize(&mut tx, call.record.event_id, &outcome).await?;
        if !request_id.is_empty() {
            let code = format!("{:?}", error.code());
            operations::fail(&mut tx, principal, request_id, &code, &error.to_string()).await?;
        }
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(())
    }
    .instrument(crate::store::transaction_span("finalize_failed_mutation"));
    if let Err(store_error) = commit.await {
        // The pending record stays; start-up recovery resolves it against ECR.
        tracing::error!(event_id = %call.record.event_id, "could not record a failed mutation: {store_error}");
    }
}

async fn apply_change(tx: &mut Tx, change: &CacheChange) -> Result<(), crate::store::StoreError> {
    match change {
        CacheChange::Upsert(registry, state) => repositories::upsert(tx, registry, state, Utc::now()).await,
        CacheChange::Delete(registry, name) => {
            images::delete_repository(tx, registry, name).await?;
            repositories::delete(tx, registry, name).await
        }
        CacheChange::Scan(registry, name, report) => {
            scans::store_report(tx, registry, name.as_str(), report, Utc::now()).await
        }
        CacheChange::InsertException(row) => scans::insert_exception(tx, row).await,
        CacheChange::RevokeException { id, by, reason, at } => {
            scans::revoke_exception(tx, *id, by, reason, *at)
                .await
                .map(|_| ())
        }
        CacheChange::Pin(pin) => {
            // Waits while a cleanup batch of this repository is between its pin check and ECR's answer.
            cleanup_runs::lock_repository(tx, &pin.account_id, &pin.region, &pin.repository).await?;
            pins::upsert(tx, pin).await
        }
        CacheChange::Unpin {
            registry,
            repository,
            digest,
            holder,
        } => pins::delete(tx, registry, repository, digest, holder)
            .await
            .map(|_| ()),
        CacheChange::ImagesDeleted {
            registry,
            repository,
            digests,
            untagged,
        } => {
            for digest in digests {
                images::delete_one(tx, registry, repository, digest).await?;
            }
            for tag in untagged {
                images::untag(tx, registry, repository, tag).await?;
            }
            Ok(())
        }
        CacheChange::ImagePut {
            registry,
            repository,
            image,
            facts,
        } => {
            images::upsert_one(tx, registry, repository, image, Utc::now()).await?;
            images::store_manifest_facts(tx, registry, repository, std::slice::from_ref(facts)).await
        }
        CacheChange::StartCleanupRun(run) => cleanup_runs::insert(tx, run).await,
        CacheChange::StartRemediationRun(run) => crate::store::remediation_runs::insert(tx, run).await,
        CacheChange::Nothing => Ok(()),
    }
}

/// The writer reads its own writes: drop what this process cached of the changed repository.
fn invalidate_changed(store: &Store, change: &CacheChange) {
    match change {
        CacheChange::Upsert(registry, state) => store.invalidate(registry, state.name.as_str()),
        CacheChange::Delete(registry, name)
        | CacheChange::Scan(registry, name, _)
        | CacheChange::ImagesDeleted {
            registry,
            repository: name,
            ..
        }
        | CacheChange::ImagePut {
            registry,
            repository: name,
            ..
        } => store.invalidate(registry, name.as_str()),
        CacheChange::Pin(_) | CacheChange::Unpin { .. } => {}
        CacheChange::InsertException(_) | CacheChange::RevokeException { .. } => store.invalidate_all(),
        CacheChange::StartCleanupRun(_) | CacheChange::StartRemediationRun(_) | CacheChange::Nothing => {}
    }
}

fn replay<R: Message + Default>(bytes: Vec<u8>) -> Result<(R, bool), ApiError> {
    R::decode(bytes.as_slice())
        .map(|response| (response, true))
        .map_err(|e| ApiError::internal(&e))
}

fn request_hash(method: &str, request: &impl Message) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(request.encode_to_vec());
    hasher.finalize().to_vec()
}

fn audit_unavailable(error: crate::store::StoreError) -> ApiError {
    tracing::warn!("cannot record the audit event, refusing the mutation: {error}");
    ApiError::Unavailable {
        reason: "AUDIT_UNAVAILABLE",
        description: "the audit record could not be written, so ECR was not touched; retry later".into(),
        retry_after: Duration::from_secs(2),
    }
}

/// The attempt that holds an operation's lease.
struct Running {
    /// When its lease ends.
    lease_until: chrono::DateTime<Utc>,
    /// When its call is over at the latest, finished or not.
    in_flight_until: chrono::DateTime<Utc>,
}

/// An attempt's call ends within the request timeout, half the lease
/// (server.rs makes the lease twice the request timeout), so an attempt
/// claimed at `lease_until - lease` is in flight until half its lease is over.
/// Later, while still pending, its owner died or its call was cut off, and
/// only the lease's end frees the operation.
fn in_flight_until(lease_until: chrono::DateTime<Utc>, lease: Duration) -> chrono::DateTime<Utc> {
    let half = chrono::Duration::from_std(lease / 2).unwrap_or(chrono::Duration::zero());
    lease_until - half
}

/// How long a call may wait for another attempt: until shortly before its
/// caller's deadline, and at most [`MAX_WAIT`].
fn wait_limit(deadline: Option<std::time::Instant>) -> chrono::DateTime<Utc> {
    let left = deadline
        .map(|d| d.saturating_duration_since(std::time::Instant::now()))
        .unwrap_or(MAX_WAIT);
    // Room to answer before the caller gives up.
    let left = left
        .saturating_sub(left / 10 + Duration::from_millis(20))
        .min(MAX_WAIT);
    Utc::now() + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::zero())
}

/// The longest a call waits for another attempt with its `request_id`.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Polls the operation until the running attempt ends (true) or `until` (false).
async fn wait_for(
    store: &Store,
    principal: &str,
    request_id: &str,
    running: &Running,
    until: chrono::DateTime<Utc>,
) -> bool {
    let mut pause = Duration::from_millis(10);
    loop {
        let left = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
        match operations::still_running(store.pool(), principal, request_id, running.lease_until).await {
            Ok(true) => {}
            Ok(false) => return true,
            Err(error) => {
                tracing::warn!("cannot read the state of request_id `{request_id}`: {error}");
                return false;
            }
        }
    }
}

fn in_progress(request_id: &str, running: &Running) -> ApiError {
    let now = Utc::now();
    let lease_until = running.lease_until;
    if now < running.in_flight_until {
        // The caller's deadline came first; the attempt is still in flight
        // and takes about as long as this call would.
        return ApiError::Aborted {
            description: format!(
                "a call with request_id `{request_id}` is still running and did not finish within this call's \
                 deadline; retry in a moment to get its answer"
            ),
            retry_after: Duration::from_secs(1),
        };
    }
    let wait = (lease_until - now).to_std().unwrap_or(Duration::from_secs(1));
    ApiError::Aborted {
        description: format!(
            "an earlier call with request_id `{request_id}` stopped before it finished (its gateway died or its \
             call was cut off); retry after its lease ends at {lease_until}, and the retry finishes the operation"
        ),
        retry_after: wait.min(Duration::from_secs(30)),
    }
}

fn reused(request_id: &str, method: &str) -> ApiError {
    ApiError::invalid(
        "request_id",
        "request-id.reused",
        format!(
            "`{request_id}` was already used by you for a different {method} request; \
             use a new request_id for a new request"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_attempt_gets_a_short_retry_delay_and_a_dead_ones_lease_the_rest_of_its_lease() {
        let now = Utc::now();
        let retry_after = |in_flight: i64, lease: i64| match in_progress(
            "r-1",
            &Running {
                lease_until: now + chrono::Duration::seconds(lease),
                in_flight_until: now + chrono::Duration::seconds(in_flight),
            },
        ) {
            ApiError::Aborted { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        // Still in flight (the caller's deadline came first): about an attempt's length.
        assert_eq!(retry_after(10, 30), Duration::from_secs(1));
        // Its call must have ended, yet it is pending: its owner died; wait out the lease.
        let dead = retry_after(-10, 20);
        assert!(
            dead > Duration::from_secs(18) && dead <= Duration::from_secs(20),
            "{dead:?}"
        );
        assert_eq!(retry_after(-10, 100), Duration::from_secs(30));
        // In flight for half the lease, the request timeout.
        let lease_until = now + chrono::Duration::seconds(40);
        assert_eq!(
            in_flight_until(lease_until, Duration::from_secs(40)),
            now + chrono::Duration::seconds(20)
        );
    }

    #[test]
    fn request_ids_follow_the_documented_grammar() {
        assert!(check_request_id("").is_none());
        assert!(check_request_id("0f8e2b1c-demo:1.2_3").is_none());
        assert!(check_request_id("has space").is_some());
        assert!(check_request_id(&"x".repeat(129)).is_some());
    }
}
