//! Resolving mutations that a crash interrupted.
//!
//! A mutation writes its audit record as `pending` (and claims its
//! `request_id`) before it calls ECR, and finalises both with the cache
//! change afterwards (docs/architecture.md, "A mutation"). A process killed
//! in between leaves the record pending. Every replica runs [`run_recovery`]:
//! at start-up and then every minute it takes pending records whose call is
//! certainly over — the operation's lease has expired, or, without a
//! `request_id`, the record is older than the mutation lease — and resolves
//! each against ECR's real state:
//!
//! - calls that change only Postgres (pins, exceptions, cleanup runs) commit
//!   their change with the record, so a pending one was **not made**;
//! - `CreateRepository` was made if ECR has the repository, `DeleteRepository`
//!   if it does not; the cached row is set to what ECR has;
//! - `PromoteImage` was made if the target tag names the source image now;
//!   by digest, not made if it names another (by tag: not known, the source
//!   tag may have moved);
//! - for the rest (settings, lifecycle policies, image deletions, scans) the
//!   repository is re-read from ECR into the inventory, and the record says
//!   that the outcome is not known from the record alone.
//!
//! The record is finalised with `errorCode` `INTERRUPTED` (not made or not
//! known) or as succeeded (made), with `responseElements.recovered = true`.
//! A change found made finishes the operation: it is marked succeeded, and a
//! retry with the same `request_id` replays the answer. Otherwise it is
//! marked failed so that a retry runs at once and converges.
//!
//! One operation has one succeeded record. When a later attempt with the
//! same `request_id` finished the operation first (it took over when the
//! crashed attempt's lease ran out), the crashed attempt's record is
//! finalised as `INTERRUPTED` and superseded, naming the finishing event
//! (`supersededBy`) and saying which attempt made the change
//! (`appliedBy`: `this attempt`, `the finishing attempt`, or `not known`,
//! from what the finishing attempt found in ECR); an operation whose later
//! attempt is still running is judged after it ends. Records of cleanup batches that
//! belong to an unfinished run are left to the cleanup worker, which settles
//! them with BatchGetImage when it resumes the run. Resolution is a
//! conditional update of a pending record, so two replicas never both
//! resolve one.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::AppState;
use crate::api::convert;
use crate::domain::{AuditOutcome, AuditStatus, Digest, ImageSelector, ImageTag, RepositoryName, pinned_uri};
use crate::ecr::{CallLog, Registry};
use crate::inventory::Trigger;
use crate::pb;
use crate::store::audit_events::Interrupted;
use crate::store::operations::{self, Standing};
use crate::store::{StoreError, audit_events, images, repositories};

/// The error code of a record that recovery resolved as not made, or not known.
pub const INTERRUPTED: &str = "INTERRUPTED";
/// Records resolved per pass.
const BATCH: i64 = 100;

/// Calls whose change lives only in Postgres and commits with the record.
const POSTGRES_ONLY: &[&str] = &[
    "PinImage",
    "UnpinImage",
    "CreateVulnerabilityException",
    "RevokeVulnerabilityException",
    "RunCleanup",
    "CancelCleanupRun",
    "RemediateRepositories",
    "CancelRemediationRun",
];

/// What ECR says about an interrupted call.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// The change is in ECR; with the response a retry of its operation replays.
    Made(Value, Option<Vec<u8>>),
    /// The change is not in ECR (or was never sent).
    NotMade(String),
    /// ECR's state was re-read; whether this call changed it is not known.
    Unknown(Value),
    /// A later attempt with the same `request_id` finished the operation.
    Superseded {
        /// The finishing attempt's event, unless the trail no longer holds it.
        by: Option<Uuid>,
        /// Which attempt made the change.
        applied: Applied,
    },
}

/// Which attempt of an operation made its change, when a later one finished it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// The interrupted one: the finishing attempt found the change made.
    ThisAttempt,
    /// The finishing attempt.
    Finisher,
    /// Not known from the records.
    NotKnown,
}

impl Applied {
    fn as_str(self) -> &'static str {
        match self {
            Applied::ThisAttempt => "this attempt",
            Applied::Finisher => "the finishing attempt",
            Applied::NotKnown => "not known",
        }
    }

    /// From the finishing attempt's record: CreateRepository and
    /// DeleteRepository say when they found their change already made by an
    /// earlier attempt (`alreadyExisted`, `alreadyDeleted`).
    fn of(event_name: &str, finisher: &operations::Finisher) -> Applied {
        let elements = finisher.response_elements.as_ref();
        let flag = |name: &str| elements.and_then(|e| e.get(name)).and_then(Value::as_bool);
        let found_made = match event_name {
            _ if flag("recovered") == Some(true) => return Applied::NotKnown,
            "CreateRepository" => flag("alreadyExisted").unwrap_or(false),
            "DeleteRepository" => flag("alreadyDeleted").unwrap_or(false),
            _ => return Applied::NotKnown,
        };
        match (found_made, finisher.attempts_between) {
            (false, _) => Applied::Finisher,
            // Another attempt came between: either may have made it.
            (true, true) => Applied::NotKnown,
            (true, false) => Applied::ThisAttempt,
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records finalised as succeeded.
    pub made: usize,
    /// Records finalised as not made.
    pub not_made: usize,
    /// Records finalised with the outcome unknown (ECR re-read).
    pub unknown: usize,
    /// Records of attempts whose operation a later attempt finished.
    pub superseded: usize,
    /// Records left pending (ECR could not be asked; tried again next pass).
    pub deferred: usize,
}

/// Resolves up to [`BATCH`] interrupted calls, oldest first.
pub async fn recover_once(state: &AppState) -> Result<Recovered, StoreError> {
    let lease = chrono::Duration::from_std(state.mutation_lease).unwrap_or(chrono::Duration::hours(1));
    let rows = audit_events::interrupted(state.store.pool(), Utc::now() - lease, BATCH).await?;
    let mut done = Recovered::default();
    for row in rows {
        let request_id = row.client_request_id.clone().filter(|r| !r.is_empty());
        // A later attempt that finished the operation settles it without asking ECR.
        let finished = match &request_id {
            Some(request_id) => {
                let mut tx = state.store.begin().await?;
                let standing = operations::lock_standing(&mut tx, &row.principal, request_id).await?;
                tx.rollback().await?;
                standing == Some(Standing::Succeeded)
            }
            None => false,
        };
        let log = CallLog::default();
        let judged = if finished {
            None
        } else {
            match judge(state, &row, &log).await {
                Ok(verdict) => Some(verdict),
                Err(why) => {
                    tracing::warn!(event_id = %row.event_id, event = %row.event_name, "recovery deferred: {why}");
                    done.deferred += 1;
                    continue;
                }
            }
        };
        let mut tx = state.store.begin().await?;
        // Under the operation's lock: a retry may have taken over or finished it meanwhile.
        let standing = match &request_id {
            Some(request_id) => operations::lock_standing(&mut tx, &row.principal, request_id).await?,
            None => None,
        };
        let verdict = match (&request_id, standing) {
            (Some(_), Some(Standing::Running)) => {
                // Judged once that attempt ends.
                done.deferred += 1;
                continue;
            }
            (Some(request_id), Some(Standing::Succeeded)) => {
                match operations::finisher(&mut tx, &row.principal, request_id, &row.event_name, row.event_id)
                    .await?
                {
                    Some(finisher) => Verdict::Superseded {
                        by: Some(finisher.event_id),
                        applied: Applied::of(&row.event_name, &finisher),
                    },
                    // Its record is no longer in the trail (purged by retention).
                    None => Verdict::Superseded {
                        by: None,
                        applied: Applied::NotKnown,
                    },
                }
            }
            _ => match judged {
                Some(verdict) => verdict,
                None => continue, // judged on the next pass
            },
        };
        let outcome = outcome_of(&verdict, log.ids());
        if !audit_events::finalize(&mut tx, row.event_id, &outcome).await? {
            continue; // another replica resolved it
        }
        if let Some(request_id) = &request_id {
            match &verdict {
                Verdict::Made(_, Some(response)) => {
                    operations::succeed_recovered(&mut tx, &row.principal, request_id, response).await?;
                }
                Verdict::Superseded { .. } => {}
                _ => {
                    let why = outcome
                        .error_message
                        .as_deref()
                        .unwrap_or("interrupted; resolved by recovery");
                    operations::fail_abandoned(&mut tx, &row.principal, request_id, INTERRUPTED, why).await?;
                }
            }
        }
        tx.commit().await?;
        tracing::info!(event_id = %row.event_id, event = %row.event_name, ?verdict, "resolved an interrupted call");
        match verdict {
            Verdict::Made(..) => done.made += 1,
            Verdict::NotMade(_) => done.not_made += 1,
            Verdict::Unknown(_) => done.unknown += 1,
            Verdict::Superseded { .. } => done.superseded += 1,
        }
    }
    Ok(done)
}

/// Runs [`recover_once`] now and every `interval` until `stop` flips.
pub async fn run_recovery(
    state: std::sync::Arc<AppState>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        loop {
            match recover_once(&state).await {
                Ok(done)
                    if done.made + done.not_made + done.unknown + done.superseded > 0 && !*stop.borrow() =>
                {
                    continue;
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!("recovery of interrupted calls failed, retrying later: {error}");
                    break;
                }
            }
        }
        if !crate::tasks::pause(interval, &mut stop).await {
            return;
        }
    }
}

fn outcome_of(verdict: &Verdict, ecr_request_ids: Vec<String>) -> AuditOutcome {
    let recovered_at = Utc::now().to_rfc3339();
    match verdict {
        Verdict::Made(state, _) => AuditOutcome {
            status: AuditStatus::Succeeded,
            response_elements: Some(json!({"recovered": true, "recoveredAt": recovered_at, "ecrState": state})),
            error_code: None,
            error_message: None,
            ecr_request_ids,
        },
        Verdict::NotMade(why) => AuditOutcome {
            status: AuditStatus::Failed,
            response_elements: Some(json!({"recovered": true, "recoveredAt": recovered_at})),
            error_code: Some(INTERRUPTED.into()),
            error_message: Some(format!(
                "the gateway stopped before this call finished; {why}: the change was not made. A retry with the \
                 same request_id runs it again"
            )),
            ecr_request_ids,
        },
        Verdict::Superseded { by, applied } => AuditOutcome {
            status: AuditStatus::Failed,
            response_elements: Some(json!({
                "recovered": true, "recoveredAt": recovered_at, "supersededBy": by.map(|id| id.to_string()),
                "appliedBy": applied.as_str(),
            })),
            error_code: Some(INTERRUPTED.into()),
            error_message: Some(format!(
                "the gateway stopped before this call finished; a later attempt with the same request_id \
                 finished the operation ({}), which supersedes this one. {}",
                match by {
                    Some(id) => format!("event {id}"),
                    None => "its record is no longer in the trail".into(),
                },
                match applied {
                    Applied::ThisAttempt =>
                        "This attempt had made the change: the finishing attempt found it made in ECR",
                    Applied::Finisher => "This attempt did not make the change: the finishing attempt made it",
                    Applied::NotKnown => "Which attempt made the change is not known from the records",
                }
            )),
            ecr_request_ids,
        },
        Verdict::Unknown(state) => AuditOutcome {
            status: AuditStatus::Failed,
            response_elements: Some(json!({"recovered": true, "recoveredAt": recovered_at, "ecrState": state})),
            error_code: Some(INTERRUPTED.into()),
            error_message: Some(
                "the gateway stopped after it called ECR and before it recorded the answer; whether ECR made the \
                 change is not known from this record. The inventory was re-read from ECR (ecrState); a retry \
                 with the same request_id converges"
                    .into(),
            ),
            ecr_request_ids,
        },
    }
}

async fn judge(state: &AppState, row: &Interrupted, log: &CallLog) -> Result<Verdict, String> {
    if POSTGRES_ONLY.contains(&row.event_name.as_str()) {
        return Ok(Verdict::NotMade(
            "this call changes only the gateway's database, together with its audit record".into(),
        ));
    }
    let registry = row
        .registry_alias
        .as_deref()
        .and_then(|alias| state.registries.get(alias))
        .or_else(|| state.registries.all().next())
        .ok_or("no registry is configured")?;
    if row.event_name == "PromoteImage" {
        return judge_promotion(state, registry, &row.request_parameters, log).await;
    }
    let Some(name) = row
        .request_parameters
        .get("repositoryName")
        .and_then(Value::as_str)
        .and_then(|n| RepositoryName::parse(n).ok())
    else {
        // Registry-wide calls (scanning configuration) or a name that never parsed.
        return Ok(Verdict::Unknown(json!({"registry": registry.reference.alias})));
    };
    let present = reread_repository(state, registry, &name, log).await?;
    let ecr_state = json!({"repositoryName": name.as_str(), "exists": present.is_some(),
                           "repository": present.as_ref().map(convert::repository_json)});
    Ok(match (row.event_name.as_str(), present) {
        // What a retry that converges answers.
        ("CreateRepository", Some(repository)) => {
            let response = pb::CreateRepositoryResponse {
                repository: Some(repository),
                replayed: false,
            };
            Verdict::Made(ecr_state, Some(prost::Message::encode_to_vec(&response)))
        }
        ("CreateRepository", None) => Verdict::NotMade("ECR has no such repository".into()),
        ("DeleteRepository", None) => Verdict::Made(
            ecr_state,
            Some(prost::Message::encode_to_vec(
                &pb::DeleteRepositoryResponse::default(),
            )),
        ),
        ("DeleteRepository", Some(_)) => Verdict::NotMade("ECR still has the repository".into()),
        _ => Verdict::Unknown(ecr_state),
    })
}

/// PromoteImage was made if the target tag names the source image now. By
/// digest, a target tag elsewhere means not made; by tag, the source tag may
/// have moved since, so that is not known.
async fn judge_promotion(
    state: &AppState,
    registry: &Registry,
    parameters: &Value,
    log: &CallLog,
) -> Result<Verdict, String> {
    let text = |key: &str| parameters.get(key).and_then(Value::as_str).unwrap_or_default();
    let parsed = (
        RepositoryName::parse(text("repositoryName")),
        ImageTag::parse(text("targetImageTag")),
        match text("imageDigest") {
            "" => ImageTag::parse(text("imageTag")).map(ImageSelector::Tag),
            digest => Digest::parse(digest).map(ImageSelector::Digest),
        },
    );
    let (Ok(source), Ok(tag), Ok(selector)) = parsed else {
        return Ok(Verdict::NotMade(
            "the request did not name a valid source and target tag".into(),
        ));
    };
    let target = match text("targetRepositoryName") {
        "" => source.clone(),
        name => RepositoryName::parse(name).map_err(|v| v.description)?,
    };
    let found = registry
        .describe_image(log, &source, &selector)
        .await
        .map_err(|e| e.to_string())?;
    let current = registry
        .describe_image(log, &target, &ImageSelector::Tag(tag.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let ecr_state = json!({"repositoryName": target.as_str(), "imageTag": tag.as_str(),
                           "imageDigest": current.as_ref().map(|c| c.digest.to_string())});
    Ok(match (found, current) {
        (Some(image), Some(current)) if image.digest == current.digest => {
            let digest = ImageSelector::Digest(image.digest.clone());
            if let Err(error) = state.syncer.refresh_image(registry, &target, &digest, log).await {
                tracing::warn!(repository = %target, "recovery: re-reading the promoted image failed: {error}");
            }
            let reference = &registry.reference;
            let response = pb::PromoteImageResponse {
                pinned_uri: pinned_uri(&reference.account_id, &reference.region, &target, &image.digest),
                digest: image.digest.to_string(),
                changed: true,
                ..Default::default()
            };
            Verdict::Made(ecr_state, Some(prost::Message::encode_to_vec(&response)))
        }
        _ if matches!(selector, ImageSelector::Digest(_)) => {
            Verdict::NotMade("ECR's target tag does not name the image".into())
        }
        _ => Verdict::Unknown(ecr_state),
    })
}

/// Reads the repository from ECR into the cache (and its images, when it
/// exists); returns it, or None when ECR has no such repository.
async fn reread_repository(
    state: &AppState,
    registry: &Registry,
    name: &RepositoryName,
    log: &CallLog,
) -> Result<Option<pb::Repository>, String> {
    let fetched = registry
        .fetch_repository(log, name)
        .await
        .map_err(|e| e.to_string())?;
    let mut tx = state.store.begin().await.map_err(|e| e.to_string())?;
    match &fetched {
        Some(repository) => repositories::upsert(&mut tx, &registry.reference, repository, Utc::now()).await,
        None => {
            images::delete_repository(&mut tx, &registry.reference, name)
                .await
                .map_err(|e| e.to_string())?;
            repositories::delete(&mut tx, &registry.reference, name).await
        }
    }
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    state.store.invalidate(&registry.reference, name.as_str());
    if fetched.is_some()
        && let Err(error) = state
            .syncer
            .sync_repository(registry, name, Trigger::WriteThrough)
            .await
    {
        tracing::warn!(repository = %name, "recovery: re-reading the images failed: {error}");
    }
    Ok(fetched.map(|r| convert::repository(&registry.reference, &r, Some(Utc::now()), true)))
}
