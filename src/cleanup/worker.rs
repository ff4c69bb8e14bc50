//! The cleanup worker: any replica may run one. It takes the oldest
//! unfinished run under a lease, plans it from the cached inventory, then
//! deletes batch by batch:
//!
//! 1. under a per-repository lock that PinImage also takes, it re-reads the
//!    batch's pins and tags, keeps what is pinned or protected now, marks the
//!    rest `submitted` and writes the batch's pending audit record, in one
//!    transaction;
//! 2. it calls BatchDeleteImage (at most 100 images, in the registry's budget);
//! 3. in one transaction it records each image's outcome, drops the deleted
//!    images from the inventory and finalises the audit record.
//!
//! A worker that dies between 1 and 3 leaves `submitted` items. Whoever
//! takes the run up next asks ECR which of them are gone (BatchGetImage):
//! those are recorded as deleted, the rest go back to `pending`. Nothing is
//! sent to ECR twice unless ECR still has it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::plan::{self, Floors};
use crate::domain::{
    AuditOutcome, AuditRecord, AuditResource, AuditStatus, Digest, ImageSelector, RegistryRef, RepositoryName,
};
use crate::ecr::{CallLog, DeleteOutcome, EcrError, Registries, Registry};
use crate::policy::lifecycle_model::{LifecyclePolicy, RuleAction};
use crate::policy::protection::{self, CleanupConfig};
use crate::store::cleanup_runs::{self, ItemRow, Outcome, RunRow, RunState};
use crate::store::{Store, StoreError, audit_events, images, repositories};

/// Consecutive failed batches after which a run fails.
const MAX_FAILURES: u32 = 5;

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Postgres.
    pub store: Store,
    /// ECR.
    pub registries: Registries,
    /// `[policy.cleanup]`: protected tags and retention floors.
    pub protection: CleanupConfig,
    /// This replica's name in leases.
    pub holder: String,
    /// How long a hold on a run lasts without renewal.
    pub lease: Duration,
    /// Images per BatchDeleteImage.
    pub batch_size: usize,
    /// How often an idle worker looks for runs.
    pub poll: Duration,
}

/// Why a run stopped being this worker's business.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Ecr(#[from] EcrError),
    /// Another worker holds the run now (this one's lease ran out).
    #[error("the run's lease passed to another worker")]
    Lost,
}

/// Runs the worker until `stop`; `wake` makes it look for runs at once.
pub async fn run_worker(worker: Worker, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        match cleanup_runs::claim_next(worker.store.pool(), &worker.holder, worker.lease).await {
            Ok(Some(run)) => {
                let id = run.id;
                tracing::info!(run = %id, attempt = run.attempts, "cleanup run taken up");
                worker.execute(run, &stop).await;
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!("looking for cleanup runs failed: {error}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(worker.poll) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

impl Worker {
    /// Carries a run to its end, or until the lease is lost or the replica stops.
    async fn execute(&self, run: RunRow, stop: &watch::Receiver<bool>) {
        let Some(registry) = self.registries.at(&run.account_id, &run.region) else {
            let error = format!(
                "registry {}/{} is no longer configured; nothing was deleted after this",
                run.account_id, run.region
            );
            self.end(&run, RunState::Failed, &error).await;
            return;
        };
        let mut failures = 0;
        loop {
            if *stop.borrow() {
                // Hand the run back so that the next replica resumes it at once.
                let _ = cleanup_runs::renew(self.store.pool(), run.id, &self.holder, Duration::ZERO).await;
                return;
            }
            match self.step(&run, registry).await {
                Ok(Step::Continue) => failures = 0,
                Ok(Step::Done) | Err(Stop::Lost) => return,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(run = %run.id, failures, "cleanup batch failed: {error}");
                    let message = format!("{error} (attempt {failures} of {MAX_FAILURES})");
                    let _ = cleanup_runs::note_error(self.store.pool(), run.id, &message).await;
                    if failures >= MAX_FAILURES {
                        let error = format!(
                            "stopped after {MAX_FAILURES} failed attempts in a row; last: {error}. Images not yet \
                             deleted stay; start a new run once the cause is fixed"
                        );
                        self.end(&run, RunState::Failed, &error).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(failures)).await;
                }
            }
        }
    }

    /// One step: plan, settle what a dead worker left in flight, or delete one batch.
    /// Its span is the root of the step's trace (ECR and database spans under it).
    #[tracing::instrument(name = "cleanup.step", skip_all, fields(
        run_id = %run.id, registry = %registry.reference.alias))]
    async fn step(&self, run: &RunRow, registry: &Registry) -> Result<Step, Stop> {
        let renewed = cleanup_runs::renew(self.store.pool(), run.id, &self.holder, self.lease)
            .await?
            .ok_or(Stop::Lost)?;
        if !renewed.planned {
            self.plan(run, &registry.reference).await?;
            return Ok(Step::Continue);
        }
        let submitted = cleanup_runs::submitted(self.store.pool(), run.id).await?;
        if !submitted.is_empty() {
            self.settle(run, registry, submitted).await?;
            return Ok(Step::Continue);
        }
        if renewed.cancel_requested {
            let mut tx = self.store.begin().await?;
            if !cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
                return Err(Stop::Lost);
            }
            cleanup_runs::cancel_pending_items(&mut tx, run.id).await?;
            cleanup_runs::finish(&mut tx, run.id, RunState::Cancelled, "").await?;
            tx.commit().await.map_err(StoreError::from)?;
            tracing::info!(run = %run.id, "cleanup run cancelled");
            return Ok(Step::Done);
        }
        let batch = cleanup_runs::next_batch(self.store.pool(), run.id, self.batch_size as i64).await?;
        if batch.is_empty() {
            let mut tx = self.store.begin().await?;
            if !cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
                return Err(Stop::Lost);
            }
            cleanup_runs::finish(&mut tx, run.id, RunState::Succeeded, "").await?;
            tx.commit().await.map_err(StoreError::from)?;
            tracing::info!(run = %run.id, "cleanup run finished");
            return Ok(Step::Done);
        }
        self.delete_batch(run, registry, batch).await?;
        Ok(Step::Continue)
    }

    /// Ends a run outside the batch path (its registry is gone, too many failures).
    async fn end(&self, run: &RunRow, state: RunState, error: &str) {
        let result = async {
            let mut tx = self.store.begin().await?;
            if cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
                cleanup_runs::finish(&mut tx, run.id, state, error).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        if let Err(store_error) = result.await {
            tracing::error!(run = %run.id, "could not end cleanup run ({error}): {store_error}");
        }
    }

    /// Evaluates the policy over each repository's cached images and stores every selected image.
    async fn plan(&self, run: &RunRow, registry: &RegistryRef) -> Result<(), Stop> {
        let pool = self.store.pool();
        let names: Vec<String> = if run.repository.is_empty() {
            repositories::names(pool, registry)
                .await?
                .into_iter()
                .map(|n| n.to_string())
                .filter(|n| n.starts_with(&run.repository_prefix))
                .collect()
        } else {
            vec![run.repository.clone()]
        };
        let given = run
            .policy_text
            .as_deref()
            .map(|text| LifecyclePolicy::parse(text, "policy_text"));
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for name in names {
            let Ok(repository) = RepositoryName::parse(&name) else {
                continue;
            };
            let Some(cached) = repositories::get(pool, registry, &repository).await? else {
                skipped.push(json!({"repository": name, "reason": "not in the inventory (deleted?)"}));
                continue;
            };
            let policy = match (&given, cached.state.lifecycle_policy.as_deref()) {
                (Some(Ok(policy)), _) => policy.clone(),
                (Some(Err(_)), _) => {
                    skipped.push(json!({"repository": name, "reason": "the run's policy does not parse"}));
                    continue;
                }
                (None, None) => {
                    skipped.push(json!({"repository": name, "reason": "it has no lifecycle policy"}));
                    continue;
                }
                (None, Some(text)) => match LifecyclePolicy::parse(text, "lifecyclePolicy") {
                    Ok(policy) => policy,
                    Err(problems) => {
                        let first = problems
                            .first()
                            .map(|v| v.description.clone())
                            .unwrap_or_default();
                        skipped.push(json!({"repository": name,
                            "reason": format!("its lifecycle policy does not parse: {first}")}));
                        continue;
                    }
                },
            };
            let preview =
                plan::preview(pool, &self.protection, registry, &name, &policy, Floors::Protect).await?;
            for verdict in &preview.verdicts {
                let image = &preview.images[verdict.image];
                let digest = image.digest.to_string();
                let (outcome, message) = if verdict.saved {
                    match (preview.holders.get(&digest), preview.protected.get(&digest)) {
                        (Some(holders), _) => ("saved_by_pin", format!("pinned by {}", holders.join(", "))),
                        (None, why) => (
                            "saved_by_protection",
                            format!("protected: {}", why.map(String::as_str).unwrap_or("org policy")),
                        ),
                    }
                } else if verdict.action == RuleAction::TransitionToArchive {
                    (
                        "skipped",
                        "a transition rule: archiving is left to ECR's own lifecycle; RunCleanup only expires".into(),
                    )
                } else if run.dry_run {
                    ("would_expire", String::new())
                } else {
                    ("pending", String::new())
                };
                items.push(ItemRow {
                    repository: name.clone(),
                    digest,
                    tags: image.tags.clone(),
                    pushed_at: image.pushed_at,
                    rule_priority: i32::try_from(verdict.rule_priority).unwrap_or(i32::MAX),
                    action: match verdict.action {
                        RuleAction::Expire => "expire",
                        RuleAction::TransitionToArchive => "transition",
                    }
                    .into(),
                    outcome: outcome.into(),
                    message,
                    batch: None,
                    audit_event_id: None,
                });
            }
        }
        let mut tx = self.store.begin().await?;
        if !cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
            return Err(Stop::Lost);
        }
        cleanup_runs::store_plan(&mut tx, run.id, &items, &Value::Array(skipped)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(run = %run.id, images = items.len(), "cleanup run planned");
        Ok(())
    }

    /// Deletes one batch of one repository's images.
    async fn delete_batch(&self, run: &RunRow, registry: &Registry, batch: Vec<ItemRow>) -> Result<(), Stop> {
        let repository_text = batch[0].repository.clone();
        let Ok(repository) = RepositoryName::parse(&repository_text) else {
            return self
                .give_up_on(run, &repository_text, &batch, "not a valid repository name")
                .await;
        };
        let reference = &registry.reference;
        // Held until ECR has answered: a pin taken meanwhile waits, so it
        // either counts for this batch or comes after the delete.
        let mut lock =
            cleanup_runs::RepositoryLock::take(self.store.pool(), reference, &repository_text).await?;
        let digests: Vec<String> = batch.iter().map(|i| i.digest.clone()).collect();
        let mut tx = self.store.begin().await?;
        if !cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
            return Err(Stop::Lost);
        }
        let pinned = cleanup_runs::pinned(&mut tx, reference, &repository_text, &digests).await?;
        let tags = cleanup_runs::current_tags(&mut tx, reference, &repository_text, &digests).await?;
        let mut kept = Vec::new();
        let mut send = Vec::new();
        for item in &batch {
            let current = tags.get(&item.digest).unwrap_or(&item.tags);
            if let Some(holders) = pinned.get(&item.digest) {
                kept.push(Outcome {
                    digest: item.digest.clone(),
                    outcome: "saved_by_pin",
                    message: format!("pinned by {} before its batch", holders.join(", ")),
                });
            } else if let Some(pattern) = current
                .iter()
                .find_map(|t| protection::protecting_pattern(&self.protection, &repository_text, t))
            {
                kept.push(Outcome {
                    digest: item.digest.clone(),
                    outcome: "saved_by_protection",
                    message: format!("tagged to match the protected pattern `{pattern}` before its batch"),
                });
            } else if let Ok(digest) = Digest::parse(&item.digest) {
                send.push(digest);
            }
        }
        cleanup_runs::set_outcomes(&mut tx, run.id, &repository_text, &kept, None).await?;
        if send.is_empty() {
            tx.commit().await.map_err(StoreError::from)?;
            lock.release().await;
            return Ok(());
        }
        let number = cleanup_runs::next_batch_number(&mut tx, run.id).await?;
        let mut record = batch_record(run, reference, &repository, number, &send);
        audit_events::insert(&mut tx, &record).await?;
        let submitted: Vec<Outcome> = send
            .iter()
            .map(|d| Outcome {
                digest: d.to_string(),
                outcome: "submitted",
                message: String::new(),
            })
            .collect();
        cleanup_runs::set_outcomes(
            &mut tx,
            run.id,
            &repository_text,
            &submitted,
            Some((number, record.event_id)),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;

        let log = CallLog::default();
        let ids: Vec<ImageSelector> = send.iter().cloned().map(ImageSelector::Digest).collect();
        let answer = registry.batch_delete_images(&log, &repository, &ids).await;
        let result = match answer {
            Ok(answers) => {
                let mut outcomes = Vec::with_capacity(send.len());
                let mut gone = Vec::new();
                let mut failures = Vec::new();
                for (digest, answer) in send.iter().zip(answers) {
                    let (outcome, message) = match answer {
                        DeleteOutcome::Deleted(_) => ("deleted", String::new()),
                        // ECR's answer did not cover it (moto leaves untagged
                        // images out): it stays `submitted`, and the next step
                        // asks ECR whether it is gone.
                        DeleteOutcome::Failed(code, _) if code == "Unknown" => continue,
                        DeleteOutcome::Failed(code, _) if code == "ImageNotFound" => {
                            ("already_gone", "ECR no longer had it".to_owned())
                        }
                        DeleteOutcome::Failed(code, reason) => {
                            failures.push(json!({"imageId": {"imageDigest": digest.as_str()},
                                                 "failureCode": code, "failureReason": reason}));
                            ("failed", format!("{code}: {reason}"))
                        }
                    };
                    if outcome != "failed" {
                        gone.push(digest.to_string());
                    }
                    outcomes.push(Outcome {
                        digest: digest.to_string(),
                        outcome,
                        message,
                    });
                }
                record.outcome = AuditOutcome {
                    status: AuditStatus::Succeeded,
                    response_elements: Some(crate::audit::cap_element(json!({
                        "imageIds": gone.iter().map(|d| json!({"imageDigest": d})).collect::<Vec<_>>(),
                        "failures": failures,
                    }))),
                    error_code: None,
                    error_message: None,
                    ecr_request_ids: log.ids(),
                };
                self.record(run, reference, &repository, &outcomes, &gone, &record)
                    .await
                    .map_err(Stop::from)
            }
            Err(error) => {
                // The items stay `submitted`: the next step asks ECR what became of them.
                record.outcome = AuditOutcome {
                    status: AuditStatus::Failed,
                    response_elements: None,
                    error_code: Some(error.code().to_owned()),
                    error_message: Some(error.to_string()),
                    ecr_request_ids: log.ids(),
                };
                let mut tx = self.store.begin().await?;
                audit_events::finalize(&mut tx, record.event_id, &record.outcome).await?;
                tx.commit().await.map_err(StoreError::from)?;
                Err(Stop::Ecr(error))
            }
        };
        lock.release().await;
        result
    }

    /// Records a batch's outcomes, drops gone images from the inventory and finalises the audit record.
    #[tracing::instrument(name = "db.transaction", skip_all, fields(
        otel.name = "postgresql record_cleanup_batch", otel.kind = "client",
        db.system = "postgresql", db.operation.name = "record_cleanup_batch"))]
    async fn record(
        &self,
        run: &RunRow,
        registry: &RegistryRef,
        repository: &RepositoryName,
        outcomes: &[Outcome],
        gone: &[String],
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        cleanup_runs::set_outcomes(&mut tx, run.id, repository.as_str(), outcomes, None).await?;
        for digest in gone {
            images::delete_one(&mut tx, registry, repository, digest).await?;
        }
        audit_events::finalize(&mut tx, record.event_id, &record.outcome).await?;
        tx.commit().await?;
        self.store.invalidate(registry, repository.as_str());
        Ok(())
    }

    /// Settles items a batch left `submitted`: its worker died or ECR's answer
    /// was lost (the batch's audit record is still pending), or ECR's answer
    /// left them out. ECR says which are gone; after a lost answer the rest
    /// are sent again later, otherwise they failed.
    async fn settle(&self, run: &RunRow, registry: &Registry, submitted: Vec<ItemRow>) -> Result<(), Stop> {
        let mut batches: BTreeMap<(String, i32, Option<Uuid>), Vec<ItemRow>> = BTreeMap::new();
        for item in submitted {
            batches
                .entry((
                    item.repository.clone(),
                    item.batch.unwrap_or(0),
                    item.audit_event_id,
                ))
                .or_default()
                .push(item);
        }
        for ((repository_text, number, event_id), items) in batches {
            let Ok(repository) = RepositoryName::parse(&repository_text) else {
                self.give_up_on(run, &repository_text, &items, "not a valid repository name")
                    .await?;
                continue;
            };
            let digests: Vec<Digest> = items
                .iter()
                .filter_map(|i| Digest::parse(&i.digest).ok())
                .collect();
            let log = CallLog::default();
            let gone: HashSet<String> = match registry.gone_digests(&log, &repository, &digests).await {
                Ok(gone) => gone.into_iter().map(|d| d.to_string()).collect(),
                Err(EcrError::NotFound { .. }) => digests.iter().map(|d| d.to_string()).collect(),
                Err(error) => return Err(error.into()),
            };
            let mut tx = self.store.begin().await?;
            if !cleanup_runs::hold(&mut tx, run.id, &self.holder).await? {
                return Err(Stop::Lost);
            }
            // The batch's audit record is still pending when its answer was
            // lost; when it was recorded, ECR answered but left these out.
            let present: Vec<&str> = items
                .iter()
                .filter(|i| !gone.contains(&i.digest))
                .map(|i| i.digest.as_str())
                .collect();
            let answer_lost = match event_id {
                Some(event_id) => {
                    let outcome = AuditOutcome {
                        status: AuditStatus::Succeeded,
                        response_elements: Some(json!({
                            "settledAfterLostAnswer": true,
                            "imageIds": gone.iter().map(|d| json!({"imageDigest": d})).collect::<Vec<_>>(),
                            "notDeleted": present,
                        })),
                        error_code: None,
                        error_message: None,
                        ecr_request_ids: log.ids(),
                    };
                    audit_events::finalize(&mut tx, event_id, &outcome).await?
                }
                None => true,
            };
            let outcomes: Vec<Outcome> = items
                .iter()
                .map(|item| {
                    let (outcome, message) = if gone.contains(&item.digest) {
                        (
                            "deleted",
                            format!(
                                "ECR's answer to batch {number} did not cover it ({}); BatchGetImage confirmed it \
                                 is gone",
                                if answer_lost { "the answer was lost" } else { "left out of the answer" }
                            ),
                        )
                    } else if answer_lost {
                        (
                            "pending",
                            format!(
                                "batch {number}'s answer was lost and ECR still has it: it goes out again, after \
                                 pins are re-checked"
                            ),
                        )
                    } else {
                        (
                            "failed",
                            format!("ECR's answer to batch {number} left it out, and ECR still has it"),
                        )
                    };
                    Outcome {
                        digest: item.digest.clone(),
                        outcome,
                        message,
                    }
                })
                .collect();
            let gone: Vec<String> = gone.into_iter().collect();
            cleanup_runs::set_outcomes(&mut tx, run.id, &repository_text, &outcomes, None).await?;
            for digest in &gone {
                images::delete_one(&mut tx, &registry.reference, &repository, digest).await?;
            }
            tx.commit().await.map_err(StoreError::from)?;
            self.store.invalidate(&registry.reference, &repository_text);
            let still = present.len();
            tracing::info!(run = %run.id, batch = number, gone = gone.len(), still,
                           "settled a batch ECR's answer did not cover");
        }
        Ok(())
    }

    /// Marks items that cannot be acted on as failed (so the run can go on).
    async fn give_up_on(
        &self,
        run: &RunRow,
        repository: &str,
        items: &[ItemRow],
        why: &str,
    ) -> Result<(), Stop> {
        let outcomes: Vec<Outcome> = items
            .iter()
            .map(|i| Outcome {
                digest: i.digest.clone(),
                outcome: "failed",
                message: why.to_owned(),
            })
            .collect();
        let mut tx = self.store.begin().await?;
        cleanup_runs::set_outcomes(&mut tx, run.id, repository, &outcomes, None).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }
}

/// What the run loop does next.
enum Step {
    Continue,
    Done,
}

/// The audit record of one batch: ECR's `BatchDeleteImage`, on behalf of
/// whoever started the run.
fn batch_record(
    run: &RunRow,
    registry: &RegistryRef,
    repository: &RepositoryName,
    number: i32,
    digests: &[Digest],
) -> AuditRecord {
    AuditRecord {
        event_id: Uuid::now_v7(),
        event_time: Utc::now(),
        event_name: "BatchDeleteImage".into(),
        read_only: false,
        identity: run.identity(),
        source_ip: None,
        user_agent: Some("ecr-gateway cleanup worker".into()),
        registry: Some(registry.clone()),
        gateway_request_id: Uuid::new_v4(),
        client_request_id: Some(format!("cleanup-run:{}:batch:{number}", run.id)),
        request_parameters: crate::audit::cap_element(json!({
            "cleanupRunId": run.id.to_string(),
            "batch": number,
            "registryId": registry.account_id,
            "repositoryName": repository.as_str(),
            "imageIds": digests.iter().map(|d| json!({"imageDigest": d.as_str()})).collect::<Vec<_>>(),
        })),
        resources: vec![AuditResource {
            resource_type: "AWS::ECR::Repository".into(),
            arn: registry.repository_arn(repository),
        }],
        authorization: None,
        outcome: AuditOutcome::pending(),
    }
}
