//! Settling what a batch left `submitted` (its worker died, ECR's answer was
//! lost, or ECR's answer left images out): BatchGetImage says which are
//! gone, and the rest are sent again or fail.

use std::collections::{BTreeMap, HashSet};

use serde_json::json;
use uuid::Uuid;

use super::{Stop, Worker};
use crate::domain::{AuditOutcome, AuditStatus, Digest, RepositoryName};
use crate::ecr::{CallLog, EcrError, Registry};
use crate::store::cleanup_runs::{self, ItemRow, Outcome, RunRow};
use crate::store::{StoreError, audit_events, images};

impl Worker {
    /// Settles items a batch left `submitted`: its worker died or ECR's answer
    /// was lost (the batch's audit record is still pending), or ECR's answer
    /// left them out. ECR says which are gone; after a lost answer the rest
    /// are sent again later, otherwise they failed.
    pub(super) async fn settle(
        &self,
        run: &RunRow,
        registry: &Registry,
        submitted: Vec<ItemRow>,
    ) -> Result<(), Stop> {
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
}
