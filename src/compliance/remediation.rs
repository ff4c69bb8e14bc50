//! The remediation worker: any replica may run one. It takes the oldest
//! unfinished remediation run under a lease and mends its repositories one
//! at a time:
//!
//! 1. it reads the repository from ECR (settings, tags, both policies) and
//!    works out its remedy (`OrgPolicy::remedy`) from what ECR has now;
//! 2. nothing to change: the item is `unchanged`. Otherwise, in one
//!    transaction, it writes the change's pending audit event (on behalf of
//!    the run's starter, naming every rule it mends) and notes it on the item;
//! 3. it converges the repository to the remedy (`Registry::converge_repository`:
//!    only the settings that differ, no tag removed);
//! 4. in one transaction it finalises the audit event, writes the new state
//!    into the cache and records the item's outcome.
//!
//! A worker that dies between 2 and 4 leaves the item pending with its
//! audit event: whoever takes the run up next reads the repository again,
//! converges what is still to do (nothing, if the first attempt finished),
//! and finalises that same event. Recovery leaves those events to the worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::domain::{
    AccountId, AuditOutcome, AuditRecord, AuditResource, AuditStatus, PolicyFinding, RegistryRef,
    RepositoryName,
};
use crate::ecr::{CallLog, EcrError, Registries, Registry};
use crate::policy::PolicyInForce;
use crate::policy::compliance::PoliciesRead;
use crate::policy::remediation::{Mend, Remedy};
use crate::store::remediation_runs::{self, ItemRow, RunRow};
use crate::store::{Store, StoreError, audit_events, repositories};

/// Consecutive failed steps after which a run fails.
const MAX_FAILURES: u32 = 5;

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct RemediationWorker {
    /// Postgres.
    pub store: Store,
    /// ECR.
    pub registries: Registries,
    /// The org policy the repositories are mended to (the one in force at each repository).
    pub policy: Arc<PolicyInForce>,
    /// This replica's name in leases.
    pub holder: String,
    /// How long a hold on a run lasts without renewal.
    pub lease: Duration,
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
    /// Another worker holds the run now.
    #[error("the run's lease passed to another worker")]
    Lost,
}

/// What the run loop does next.
enum Step {
    Continue,
    Done,
}

/// Runs the worker until `stop`; `wake` makes it look for runs at once.
pub async fn run_worker(worker: RemediationWorker, wake: Arc<Notify>, stop: watch::Receiver<bool>) {
    let runs_stop = stop.clone();
    let poll = worker.poll;
    crate::tasks::work_queue(poll, wake, stop, || async {
        match remediation_runs::claim_next(worker.store.pool(), &worker.holder, worker.lease).await {
            Ok(Some(run)) => {
                tracing::info!(run = %run.id, attempt = run.attempts, "remediation run taken up");
                worker.execute(run, &runs_stop).await;
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!("looking for remediation runs failed: {error}");
                false
            }
        }
    })
    .await;
}

impl RemediationWorker {
    async fn execute(&self, run: RunRow, stop: &watch::Receiver<bool>) {
        let Some(registry) = self.registries.at(&run.account_id, &run.region) else {
            let error = format!(
                "registry {}/{} is no longer configured; nothing was changed after this",
                run.account_id, run.region
            );
            self.end(&run, "failed", &error).await;
            return;
        };
        let mut failures = 0;
        loop {
            if *stop.borrow() {
                let _ = remediation_runs::release(self.store.pool(), run.id, &self.holder).await;
                return;
            }
            match self.step(&run, registry).await {
                Ok(Step::Continue) => failures = 0,
                Ok(Step::Done) | Err(Stop::Lost) => return,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(run = %run.id, failures, "remediation step failed: {error}");
                    if failures >= MAX_FAILURES {
                        let error = format!(
                            "stopped after {MAX_FAILURES} failed attempts in a row; last: {error}. Repositories \
                             not yet mended stay as they are; start a new run once the cause is fixed"
                        );
                        self.end(&run, "failed", &error).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(failures)).await;
                }
            }
        }
    }

    /// One step: cancel, finish, or mend the next repository.
    #[tracing::instrument(name = "remediation.step", skip_all, fields(
        run_id = %run.id, registry = %registry.reference.alias))]
    async fn step(&self, run: &RunRow, registry: &Registry) -> Result<Step, Stop> {
        let cancel = remediation_runs::renew(self.store.pool(), run.id, &self.holder, self.lease)
            .await?
            .ok_or(Stop::Lost)?;
        let next = match cancel {
            true => None,
            false => remediation_runs::next_pending(self.store.pool(), run.id).await?,
        };
        let Some(item) = next else {
            let state = if cancel { "cancelled" } else { "succeeded" };
            let mut tx = self.store.begin().await?;
            if !remediation_runs::hold(&mut tx, run.id, &self.holder).await? {
                return Err(Stop::Lost);
            }
            remediation_runs::finish(&mut tx, run.id, state, "").await?;
            tx.commit().await.map_err(StoreError::from)?;
            tracing::info!(run = %run.id, state, "remediation run ended");
            return Ok(Step::Done);
        };
        self.mend(run, registry, &item).await?;
        Ok(Step::Continue)
    }

    /// Steps 1 to 4 for one repository.
    async fn mend(&self, run: &RunRow, registry: &Registry, item: &ItemRow) -> Result<(), Stop> {
        let reference = &registry.reference;
        let log = CallLog::default();
        let Ok(name) = RepositoryName::parse(&item.repository) else {
            return self
                .record(run, item, "failed", &[], &[], "not a repository name")
                .await;
        };
        let Some(current) = registry.fetch_repository(&log, &name).await? else {
            return self
                .record(run, item, "gone", &[], &[], "ECR no longer has it")
                .await;
        };
        let Ok(account) = AccountId::parse(&reference.account_id) else {
            return self
                .record(
                    run,
                    item,
                    "failed",
                    &[],
                    &[],
                    "the registry's account id is not 12 digits",
                )
                .await;
        };
        let given: BTreeMap<String, String> = serde_json::from_value(run.tags.clone()).unwrap_or_default();
        // `fetch_repository` read both policies.
        let remedy = self
            .policy
            .current()
            .remedy(&current, &account, &given, &run.rules, PoliciesRead::Yes);
        let interrupted = item.audit_event_id;
        if remedy.is_empty() && interrupted.is_none() {
            return self.record(run, item, "unchanged", &[], &remedy.left, "").await;
        }
        let event_id = match interrupted {
            Some(event_id) => event_id,
            None => self.announce(run, reference, &name, item, &remedy).await?,
        };
        let converged = match remedy.is_empty() {
            // The interrupted attempt made every change.
            true => Ok(current.clone()),
            false => {
                registry
                    .converge_repository(&log, &remedy.spec, Some(current))
                    .await
            }
        };
        let made = match remedy.is_empty() {
            true => planned(item),
            false => changes_json(&remedy.mends),
        };
        match converged {
            Ok(state) => {
                let outcome = succeeded(&made, interrupted.is_some(), log.ids());
                let mut tx = self.store.begin().await?;
                audit_events::finalize(&mut tx, event_id, &outcome).await?;
                repositories::upsert(&mut tx, reference, &state, Utc::now()).await?;
                let left = findings_json(&remedy.left);
                remediation_runs::set_outcome(&mut tx, run.id, &item.repository, "mended", &made, &left, "")
                    .await?;
                tx.commit().await.map_err(StoreError::from)?;
                self.store.invalidate(reference, name.as_str());
                Ok(())
            }
            Err(error) if refused(&error) => {
                let outcome = failed(&error, log.ids());
                let mut tx = self.store.begin().await?;
                audit_events::finalize(&mut tx, event_id, &outcome).await?;
                let left = findings_json(&remedy.left);
                let message = error.to_string();
                remediation_runs::set_outcome(
                    &mut tx,
                    run.id,
                    &item.repository,
                    "failed",
                    &made,
                    &left,
                    &message,
                )
                .await?;
                tx.commit().await.map_err(StoreError::from)?;
                Ok(())
            }
            // Transient (throttled, unavailable): the item stays pending with its
            // event, and the next step converges again.
            Err(error) => Err(error.into()),
        }
    }

    /// Step 2: the pending audit event, noted on the item, before ECR is touched.
    async fn announce(
        &self,
        run: &RunRow,
        registry: &RegistryRef,
        name: &RepositoryName,
        item: &ItemRow,
        remedy: &Remedy,
    ) -> Result<Uuid, Stop> {
        let record = pending_record(run, registry, name, remedy);
        let mut tx = self.store.begin().await?;
        if !remediation_runs::hold(&mut tx, run.id, &self.holder).await? {
            return Err(Stop::Lost);
        }
        audit_events::insert(&mut tx, &record).await?;
        remediation_runs::start_item(&mut tx, run.id, &item.repository, record.event_id).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(record.event_id)
    }

    /// Records an item's outcome without an ECR change.
    async fn record(
        &self,
        run: &RunRow,
        item: &ItemRow,
        outcome: &str,
        changes: &[Mend],
        left: &[PolicyFinding],
        message: &str,
    ) -> Result<(), Stop> {
        let mut tx = self.store.begin().await?;
        if !remediation_runs::hold(&mut tx, run.id, &self.holder).await? {
            return Err(Stop::Lost);
        }
        let (changes, left) = (changes_json(changes), findings_json(left));
        remediation_runs::set_outcome(
            &mut tx,
            run.id,
            &item.repository,
            outcome,
            &changes,
            &left,
            message,
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Ends a run outside the step path (its registry is gone, too many failures).
    async fn end(&self, run: &RunRow, state: &str, error: &str) {
        let result = async {
            let mut tx = self.store.begin().await?;
            if remediation_runs::hold(&mut tx, run.id, &self.holder).await? {
                remediation_runs::finish(&mut tx, run.id, state, error).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        if let Err(store_error) = result.await {
            tracing::error!(run = %run.id, "could not end remediation run ({error}): {store_error}");
        }
    }
}

/// ECR refused the change itself (a retry would be refused again).
fn refused(error: &EcrError) -> bool {
    matches!(
        error,
        EcrError::Invalid { .. }
            | EcrError::AccessDenied { .. }
            | EcrError::NotFound { .. }
            | EcrError::Conflict { .. }
    )
}

/// The audit event of one repository's remediation, pending until ECR answered.
fn pending_record(
    run: &RunRow,
    registry: &RegistryRef,
    name: &RepositoryName,
    remedy: &Remedy,
) -> AuditRecord {
    let mut rules: Vec<&str> = remedy
        .mends
        .iter()
        .flat_map(|m| m.rules.iter().map(String::as_str))
        .collect();
    rules.sort_unstable();
    rules.dedup();
    AuditRecord {
        event_id: Uuid::now_v7(),
        event_time: Utc::now(),
        event_name: "RemediateRepository".into(),
        read_only: false,
        identity: run.identity(),
        source_ip: None,
        user_agent: Some("ecr-gateway remediation worker".into()),
        registry: Some(registry.clone()),
        gateway_request_id: Uuid::new_v4(),
        client_request_id: Some(format!("remediation-run:{}:{}", run.id, name)),
        request_parameters: crate::audit::cap_element(json!({
            "remediationRunId": run.id.to_string(),
            "registryId": registry.account_id,
            "repositoryName": name.as_str(),
            "rules": rules,
        })),
        resources: vec![AuditResource {
            resource_type: "AWS::ECR::Repository".into(),
            arn: registry.repository_arn(name),
        }],
        authorization: None,
        outcome: AuditOutcome::pending(),
    }
}

fn succeeded(changes: &Value, resumed: bool, ecr_request_ids: Vec<String>) -> AuditOutcome {
    let mut elements = json!({"changes": changes});
    if resumed && let Value::Object(map) = &mut elements {
        map.insert("resumed".into(), Value::Bool(true));
    }
    AuditOutcome {
        status: AuditStatus::Succeeded,
        response_elements: Some(crate::audit::cap_element(elements)),
        error_code: None,
        error_message: None,
        ecr_request_ids,
    }
}

fn failed(error: &EcrError, ecr_request_ids: Vec<String>) -> AuditOutcome {
    AuditOutcome {
        status: AuditStatus::Failed,
        response_elements: None,
        error_code: Some(error.code().to_owned()),
        error_message: Some(error.to_string()),
        ecr_request_ids,
    }
}

/// The changes an item was planned with (what an interrupted attempt made).
fn planned(item: &ItemRow) -> Value {
    item.changes.clone()
}

/// Mends as stored and answered: `[{field, before, after, rules}]`.
pub fn changes_json(mends: &[Mend]) -> Value {
    Value::Array(
        mends
            .iter()
            .map(|m| json!({"field": m.field, "before": m.before, "after": m.after, "rules": m.rules}))
            .collect(),
    )
}

/// Findings as stored: `[{rule, field, actual, wanted, mendable, description}]`.
pub fn findings_json(findings: &[PolicyFinding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                json!({"rule": f.rule, "field": f.field, "actual": f.actual, "wanted": f.wanted,
                       "mendable": f.mendable, "description": f.description})
            })
            .collect(),
    )
}
