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
//!
//! This file holds the run loop (taking runs up, one step at a time, ending
//! them); the steps are in files of their own: `worker/planning.rs` (the
//! plan of a run), `worker/batch.rs` (steps 1 to 3 for one batch) and
//! `worker/settle.rs` (the items a dead worker or a lost answer left
//! `submitted`).

mod batch;
mod planning;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::ecr::{EcrError, Registries, Registry};
use crate::policy::protection::CleanupConfig;
use crate::store::cleanup_runs::{self, ItemRow, Outcome, RunRow, RunState};
use crate::store::{Store, StoreError};

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
pub async fn run_worker(worker: Worker, wake: Arc<Notify>, stop: watch::Receiver<bool>) {
    let runs_stop = stop.clone();
    let poll = worker.poll;
    crate::tasks::work_queue(poll, wake, stop, || async {
        match cleanup_runs::claim_next(worker.store.pool(), &worker.holder, worker.lease).await {
            Ok(Some(run)) => {
                tracing::info!(run = %run.id, attempt = run.attempts, "cleanup run taken up");
                worker.execute(run, &runs_stop).await;
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!("looking for cleanup runs failed: {error}");
                false
            }
        }
    })
    .await;
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
