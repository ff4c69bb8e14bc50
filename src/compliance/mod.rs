//! The compliance evaluation: every cached repository of a registry judged
//! against the org policy (`OrgPolicy::judge`), the result written to
//! `policy_violations` as a diff, so the violations a portal lists are read
//! from Postgres with no ECR call and no judging on the read path.
//!
//! It runs for the whole registry at start, after each image pass of the
//! sync (`inventory::run_sync_loop`) and on SIGHUP, and for one repository
//! whenever Postgres notifies that its rows changed ([`run_watcher`]). Evaluations of one registry are serialised by an
//! advisory lock, so replicas that evaluate at once write one result.

pub mod remediation;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::Instrument as _;

use crate::domain::{AccountId, PolicyFinding, RegistryRef, RepositoryName};
use crate::policy::compliance::PoliciesRead;
use crate::policy::{OrgPolicy, PolicyInForce};
use crate::store::compliance::{self, Judged, Replaced};
use crate::store::{Store, StoreError};

/// Why an evaluation stored nothing (the violations stored before stay).
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The judging could not finish (a bug: a rule panicked, or the registry's account id is unusable).
    #[error("compliance judging failed: {0}")]
    Judging(String),
}

/// What one evaluation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// Repositories judged.
    pub repositories: usize,
    /// What changed in the stored violations.
    pub replaced: Replaced,
    /// How long it took.
    pub took: Duration,
}

/// Judges every cached repository of `registry` and stores the result.
pub async fn evaluate_registry(
    store: &Store,
    policy: &Arc<OrgPolicy>,
    registry: &RegistryRef,
) -> Result<Evaluation, EvaluationError> {
    evaluate(store, policy, registry, None)
        .instrument(crate::store::transaction_span("evaluate_compliance"))
        .await
}

/// Judges one repository (after the gateway changed it) and stores the result.
pub async fn evaluate_repository(
    store: &Store,
    policy: &Arc<OrgPolicy>,
    registry: &RegistryRef,
    name: &RepositoryName,
) -> Result<Evaluation, EvaluationError> {
    evaluate(store, policy, registry, Some(name.as_str())).await
}

async fn evaluate(
    store: &Store,
    policy: &Arc<OrgPolicy>,
    registry: &RegistryRef,
    only: Option<&str>,
) -> Result<Evaluation, EvaluationError> {
    let started = Instant::now();
    let now = Utc::now();
    let mut tx = store.begin().await?;
    compliance::lock_registry(&mut tx, registry).await?;
    let input = compliance::evaluation_input(&mut tx, registry, only).await?;
    let repositories = input.len();
    let input_synced_at = input.iter().map(|j| j.synced_at).min();
    let floored = floored(policy, &input);
    let mut findings = judge_all(policy.clone(), registry, input).await?;
    floor_findings(store, policy, registry, floored, &mut findings).await?;
    let replaced = compliance::replace(&mut tx, registry, only, &findings, now).await?;
    if only.is_none() {
        compliance::record_evaluation(
            &mut tx,
            registry,
            now,
            input_synced_at,
            repositories as u64,
            replaced.total,
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Evaluation {
        repositories,
        replaced,
        took: started.elapsed(),
    })
}

/// The repositories whose lifecycle policy (as read from ECR) a retention
/// floor of `[policy.cleanup]` applies to, with the policy's text.
fn floored(policy: &OrgPolicy, input: &[Judged]) -> Vec<(String, String)> {
    let cleanup = &policy.config().cleanup;
    input
        .iter()
        .filter(|j| j.policies_read)
        .filter_map(|j| {
            let name = j.state.name.as_str();
            let text = j.state.lifecycle_policy.as_deref()?;
            (!crate::policy::protection::floors_for(cleanup, name).is_empty())
                .then(|| (name.to_owned(), text.to_owned()))
        })
        .collect()
}

/// `cleanup.retention-floor`: a lifecycle policy that, evaluated over the
/// repository's cached images now, would expire images a retention floor
/// keeps (the check SetLifecyclePolicy makes). Costs one read of the
/// repository's images, only for repositories with a floor and a policy.
async fn floor_findings(
    store: &Store,
    policy: &OrgPolicy,
    registry: &RegistryRef,
    floored: Vec<(String, String)>,
    findings: &mut BTreeMap<String, Vec<PolicyFinding>>,
) -> Result<(), EvaluationError> {
    use crate::cleanup::plan::{Floors, floor_breaches, preview};
    let cleanup = &policy.config().cleanup;
    for (name, text) in floored {
        // A policy the gateway's checks reject is reported by the lifecycle rules.
        let Ok(lifecycle) =
            crate::policy::lifecycle_model::LifecyclePolicy::parse(&text, "settings.lifecycle_policy")
        else {
            continue;
        };
        let previewed = preview(store.pool(), cleanup, registry, &name, &lifecycle, Floors::Ignore).await?;
        for (floor, hit) in floor_breaches(cleanup, &name, &previewed) {
            findings.entry(name.clone()).or_default().push(PolicyFinding {
                rule: "cleanup.retention-floor".into(),
                field: "settings.lifecycle_policy".into(),
                actual: text.clone(),
                wanted: format!("a policy that keeps the {} newest images tagged `{}`", floor.count, floor.tags),
                mendable: false,
                description: format!(
                    "the org policy keeps the {} newest images tagged `{}` in `{name}`; its lifecycle policy would \
                     expire {hit} of them (on the cached images now): raise its counts or narrow its selections",
                    floor.count, floor.tags
                ),
            });
        }
    }
    Ok(())
}

/// The findings per repository name, judged off the async workers (a
/// registry of 100,000 repositories is a second of CPU).
async fn judge_all(
    policy: Arc<OrgPolicy>,
    registry: &RegistryRef,
    input: Vec<Judged>,
) -> Result<BTreeMap<String, Vec<PolicyFinding>>, EvaluationError> {
    let account = AccountId::parse(&registry.account_id)
        .map_err(|v| EvaluationError::Judging(format!("registry `{}`: {v}", registry.alias)))?;
    let judge = move || {
        input
            .into_iter()
            .map(|judged| {
                let read = match judged.policies_read {
                    true => PoliciesRead::Yes,
                    false => PoliciesRead::No,
                };
                let findings = policy.judge(&judged.state, &account, read);
                (judged.state.name.to_string(), findings)
            })
            .filter(|(_, findings)| !findings.is_empty())
            .collect()
    };
    tokio::task::spawn_blocking(judge)
        .await
        .map_err(|error| EvaluationError::Judging(error.to_string()))
}

/// How long the watcher gathers notified changes before it evaluates them
/// (a push storm re-judges each repository once per window, not per image).
const GATHER: Duration = Duration::from_millis(500);

/// Re-judges each repository whose cached rows change (any replica's writes:
/// the gateway's own mutations, the sync, read-throughs), as Postgres
/// notifies them, until `shutdown` flips. A lost notification stream
/// re-judges every registry.
pub async fn run_watcher(
    store: Store,
    policy: Arc<PolicyInForce>,
    registries: Vec<RegistryRef>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = store.repository_changes();
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => return,
            change = changes.recv() => change,
        };
        let mut batch = Changed::default();
        batch.add(first);
        let window = tokio::time::sleep(GATHER);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                change = changes.recv() => {
                    batch.add(change);
                    if batch.closed {
                        break;
                    }
                }
            }
        }
        if batch.closed {
            return;
        }
        evaluate_changed(&store, &policy.current(), &registries, batch).await;
    }
}

/// The changes gathered in one window.
#[derive(Default)]
struct Changed {
    /// Repositories by registry (account, region).
    repositories: std::collections::BTreeSet<(String, String, String)>,
    /// True when any repository may have changed.
    everything: bool,
    /// True when the store was dropped.
    closed: bool,
}

impl Changed {
    fn add(
        &mut self,
        change: Result<Option<crate::store::cache::RepoKey>, tokio::sync::broadcast::error::RecvError>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        match change {
            Ok(Some(key)) => {
                self.repositories
                    .insert((key.account_id, key.region, key.repository));
            }
            Ok(None) | Err(RecvError::Lagged(_)) => self.everything = true,
            Err(RecvError::Closed) => self.closed = true,
        }
    }
}

async fn evaluate_changed(
    store: &Store,
    policy: &Arc<OrgPolicy>,
    registries: &[RegistryRef],
    batch: Changed,
) {
    if batch.everything {
        for registry in registries {
            if let Err(error) = evaluate_registry(store, policy, registry).await {
                tracing::warn!(registry = %registry.alias, "compliance evaluation failed: {error}");
            }
        }
        return;
    }
    for (account, region, repository) in batch.repositories {
        let Some(registry) = registries
            .iter()
            .find(|r| r.account_id == account && r.region == region)
        else {
            continue;
        };
        let Ok(name) = RepositoryName::parse(&repository) else {
            continue;
        };
        if let Err(error) = evaluate_repository(store, policy, registry, &name).await {
            tracing::warn!(registry = %registry.alias, repository = %name, "compliance evaluation failed: {error}");
        }
    }
}
