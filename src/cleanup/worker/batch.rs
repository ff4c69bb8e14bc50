//! Deleting one batch: under the repository lock, re-read its pins and tags
//! and submit the rest with a pending audit record; call BatchDeleteImage;
//! record each image's outcome, drop the deleted images from the inventory
//! and finalise the audit record.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::{Stop, Worker};
use crate::domain::{
    AuditOutcome, AuditRecord, AuditResource, AuditStatus, Digest, ImageSelector, RegistryRef, RepositoryName,
};
use crate::ecr::{CallLog, DeleteOutcome, Registry};
use crate::policy::protection;
use crate::store::cleanup_runs::{self, ItemRow, Outcome, RunRow};
use crate::store::{StoreError, audit_events, images};

impl Worker {
    /// Deletes one batch of one repository's images.
    pub(super) async fn delete_batch(
        &self,
        run: &RunRow,
        registry: &Registry,
        batch: Vec<ItemRow>,
    ) -> Result<(), Stop> {
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
