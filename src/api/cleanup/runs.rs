//! RunCleanup, GetCleanupRun, ListCleanupRuns and CancelCleanupRun (the
//! CleanupService's long-running half). The handlers record runs; the
//! worker in [`crate::cleanup::worker`] carries them out.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::call::Call;
use crate::api::cleanup::{action_message, no_lifecycle_policy, repository_not_found};
use crate::api::convert::timestamp;
use crate::api::error::{ApiError, OrRecord as _, Precondition, invalid};
use crate::api::mutation::{self, CacheChange, Done, check_request_id};
use crate::api::page_token::{self, next_token};
use crate::api::{AppState, Shared, check_prefix, repository_filter};
use crate::auth::authz::Resource;
use crate::domain::{RegistryRef, RepositoryName, Violation};
use crate::pb;
use crate::policy::lifecycle_model::LifecyclePolicy;
use crate::store::cleanup_runs::{self, Cancel, ItemRow, NewRun, RunFilter, RunRow, RunState};
use crate::store::repositories;

/// RunCleanup: checks the request, records a pending run, wakes the worker.
pub(super) async fn run_cleanup(
    state: &Shared,
    call: &mut Call,
    request: &pb::RunCleanupRequest,
) -> Result<(pb::CleanupRun, Value), ApiError> {
    let identity = call.caller()?.identity.clone();
    let mut violations = Vec::new();
    let registry = state.registry(&request.registry).or_record(&mut violations);
    let repository = match (
        request.repository.is_empty(),
        request.repository_prefix.is_empty(),
    ) {
        (true, true) => {
            violations.push(Violation::new(
                "repository",
                "cleanup.target",
                "give repository (one repository) or repository_prefix (every repository under it)",
            ));
            None
        }
        (false, false) => {
            violations.push(Violation::new(
                "repository_prefix",
                "cleanup.target",
                "give repository or repository_prefix, not both",
            ));
            None
        }
        (false, true) => RepositoryName::parse(&request.repository).or_record(&mut violations),
        (true, false) => {
            violations.extend(check_prefix("repository_prefix", &request.repository_prefix));
            None
        }
    };
    violations.extend(check_request_id(&request.request_id));
    let given = request.policy_text.trim();
    if !given.is_empty() {
        violations.extend(
            LifecyclePolicy::parse(given, "policy_text")
                .err()
                .unwrap_or_default(),
        );
    }
    let Some(registry) = registry.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let pool = state.store.pool();
    call.set_registry(&registry.reference);
    authorize_run(
        state,
        call,
        &registry.reference,
        &request.repository,
        &request.repository_prefix,
    )
    .await?;
    match &repository {
        Some(repository) => {
            call.set_repository(&registry.reference, registry.reference.repository_arn(repository));
            let cached = repositories::get(pool, &registry.reference, repository)
                .await?
                .ok_or_else(|| repository_not_found(&registry.reference, repository))?;
            if given.is_empty() && cached.state.lifecycle_policy.is_none() {
                return Err(no_lifecycle_policy(&registry.reference, repository));
            }
        }
        None => {
            let prefix = &request.repository_prefix;
            let any = repositories::names(pool, &registry.reference)
                .await?
                .iter()
                .any(|n| n.as_str().starts_with(prefix.as_str()));
            if !any {
                return Err(ApiError::NotFound {
                    resource_type: "ecr.repository",
                    resource_name: format!("{}/{prefix}*", registry.reference.alias),
                    description: format!(
                        "registry `{}` has no repository whose name starts with `{prefix}` (as of the last sync)",
                        registry.reference.alias
                    ),
                });
            }
        }
    }
    let run = NewRun {
        id: Uuid::now_v7(),
        registry: registry.reference.clone(),
        repository: request.repository.clone(),
        repository_prefix: request.repository_prefix.clone(),
        policy_text: (!given.is_empty()).then(|| given.to_owned()),
        dry_run: request.dry_run,
        identity,
        created_at: Utc::now(),
    };
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |_attempt| async move {
            let response = new_run_message(&registry.reference.alias, &run);
            Ok(Done {
                elements: json!({"cleanupRunId": run.id.to_string(), "dryRun": run.dry_run}),
                response,
                change: CacheChange::StartCleanupRun(Box::new(run)),
            })
        },
    )
    .await?;
    state.cleanup_wake.notify_one();
    response.replayed = replayed;
    let elements = json!({"cleanupRunId": response.id, "replayed": replayed});
    Ok((response, elements))
}

/// A run id from a request.
fn run_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::invalid(
            "id",
            "cleanup-run.id",
            format!("`{text}` is not a cleanup run id: use the id RunCleanup returned (a UUID)"),
        )
    })
}

fn run_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecrgateway.cleanupRun",
        resource_name: id.to_string(),
        description: format!("there is no cleanup run `{id}`; ListCleanupRuns shows the runs there are"),
    }
}

/// Page position of a run's items.
type ItemPosition = (String, DateTime<Utc>, String);

/// GetCleanupRun: the run, its counts and a page of its items.
pub(super) async fn get_cleanup_run(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetCleanupRunRequest,
) -> Result<(pb::GetCleanupRunResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let id = run_id(&request.id).or_record(&mut violations);
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let outcome = match pb::CleanupItemOutcome::try_from(request.outcome) {
        Ok(pb::CleanupItemOutcome::Unspecified) => None,
        Ok(outcome) => Some(outcome_name(outcome)),
        Err(_) => {
            violations.push(Violation::new(
                "outcome",
                "enum.unknown",
                format!("{} is not a CleanupItemOutcome", request.outcome),
            ));
            None
        }
    };
    let (Some(id), Some(limit), true) = (id, limit, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let pool = state.store.pool();
    let run = cleanup_runs::get(pool, id)
        .await?
        .ok_or_else(|| run_not_found(id))?;
    authorize_row(state, call, &run).await?;
    let fingerprint = page_token::fingerprint(&(id, outcome));
    let key = state.page_key().await?;
    let after: Option<ItemPosition> = key.decode(&request.page_token, &fingerprint)?;
    let mut rows = cleanup_runs::items(pool, id, outcome, after.as_ref(), limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |i| {
        key.encode(
            &fingerprint,
            &(i.repository.clone(), i.pushed_at, i.digest.clone()),
        )
    });
    let counts = cleanup_runs::counts(pool, &[id]).await?;
    let response = pb::GetCleanupRunResponse {
        run: Some(run_message(state, &run, counts.get(&id))),
        items: rows.iter().map(item_message).collect(),
        next_page_token,
    };
    let elements = json!({"items": response.items.len()});
    Ok((response, elements))
}

/// Page position of ListCleanupRuns.
type RunPosition = (DateTime<Utc>, Uuid);

/// ListCleanupRuns: newest first.
pub(super) async fn list_cleanup_runs(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListCleanupRunsRequest,
) -> Result<(pb::ListCleanupRunsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations)
        .unwrap_or_default();
    let repository = repository_filter(&request.repository)
        .or_record(&mut violations)
        .flatten();
    let run_state = match pb::CleanupRunState::try_from(request.state) {
        Ok(pb::CleanupRunState::Unspecified) => None,
        Ok(s) => Some(state_of(s)),
        Err(_) => {
            violations.push(Violation::new(
                "state",
                "enum.unknown",
                format!("{} is not a CleanupRunState", request.state),
            ));
            None
        }
    };
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let Some(limit) = limit.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let scope = call.authorize_list(&state.authz, registries.iter().map(|r| &r.reference))?;
    let keys: Vec<(String, String)> = registries
        .iter()
        .map(|r| (r.reference.account_id.clone(), r.reference.region.clone()))
        .collect();
    let filter = RunFilter {
        visibility: crate::api::visibility(&scope, registries.iter().map(|r| &r.reference)),
        repository: repository.map(|r| r.to_string()),
        state: run_state,
    };
    let fingerprint = page_token::fingerprint(&(&keys, &filter.repository, request.state));
    let key = state.page_key().await?;
    let after: Option<RunPosition> = key.decode(&request.page_token, &fingerprint)?;
    let pool = state.store.pool();
    let mut rows = cleanup_runs::list(pool, &filter, after, limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |r| {
        key.encode(&fingerprint, &(r.created_at, r.id))
    });
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let counts = cleanup_runs::counts(pool, &ids).await?;
    let response = pb::ListCleanupRunsResponse {
        runs: rows
            .iter()
            .map(|r| run_message(state, r, counts.get(&r.id)))
            .collect(),
        next_page_token,
    };
    let elements = json!({"count": response.runs.len()});
    Ok((response, elements))
}

/// CancelCleanupRun: a pending run ends at once, a running one before its next batch.
pub(super) async fn cancel_cleanup_run(
    state: &AppState,
    call: &mut Call,
    request: &pb::CancelCleanupRunRequest,
) -> Result<(pb::CleanupRun, Value), ApiError> {
    call.caller()?;
    let id = run_id(&request.id)?;
    let pool = state.store.pool();
    let existing = cleanup_runs::get(pool, id)
        .await?
        .ok_or_else(|| run_not_found(id))?;
    authorize_row(state, call, &existing).await?;
    let run = match cleanup_runs::request_cancel(pool, id).await? {
        Cancel::NotFound => return Err(run_not_found(id)),
        Cancel::Finished(run) => {
            return Err(ApiError::FailedPrecondition {
                reason: "CLEANUP_RUN_FINISHED",
                violations: vec![Precondition {
                    kind: "CLEANUP_RUN_FINISHED".into(),
                    subject: id.to_string(),
                    description: format!(
                        "cleanup run `{id}` already ended ({}) at {}; there is nothing to cancel",
                        state_name(&run.state),
                        run.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                    ),
                }],
            });
        }
        Cancel::Accepted(run) => run,
    };
    if let Some(registry) = state.registries.at(&run.account_id, &run.region) {
        call.set_registry(&registry.reference);
    }
    state.cleanup_wake.notify_one();
    let counts = cleanup_runs::counts(pool, &[id]).await?;
    let response = run_message(state, &run, counts.get(&id));
    let elements = json!({"cleanupRunId": id.to_string(), "state": state_name(&run.state)});
    Ok((response, elements))
}

/// What a run covers: one repository, a namespace (a prefix that stays
/// inside one), or the whole registry (a prefix that could span namespaces).
fn run_resource(registry: &RegistryRef, repository: &str, prefix: &str) -> Resource {
    if !repository.is_empty() {
        Resource::repository(registry, repository)
    } else if let Some((namespace, _)) = prefix.split_once('/') {
        Resource::Namespace {
            registry: registry.clone(),
            namespace: namespace.to_owned(),
        }
    } else {
        Resource::Registry(registry.clone())
    }
}

/// Authorizes a call on what a run covers.
async fn authorize_run(
    state: &AppState,
    call: &mut Call,
    registry: &RegistryRef,
    repository: &str,
    prefix: &str,
) -> Result<(), ApiError> {
    match run_resource(registry, repository, prefix) {
        Resource::Repository { name, .. } => state.authorize_repository(call, registry, &name).await,
        resource => call.authorize(&state.authz, &resource),
    }
}

/// Authorizes a call on a recorded run (a run of a registry no longer configured is refused).
/// To a caller who may not even read the run, the denial names the run by
/// its id only (the usual one names the repository the run covers).
async fn authorize_row(state: &AppState, call: &mut Call, run: &RunRow) -> Result<(), ApiError> {
    let Some(registry) = state.registries.at(&run.account_id, &run.region) else {
        return Err(run_not_found(run.id));
    };
    call.set_registry(&registry.reference);
    match authorize_run(
        state,
        call,
        &registry.reference,
        &run.repository,
        &run.repository_prefix,
    )
    .await
    {
        Err(ApiError::PermissionDenied { .. }) if !readable(state, call, &registry.reference, run)? => {
            Err(call.denied_by_id(&format!("cleanup run `{}`", run.id)))
        }
        other => other,
    }
}

/// Whether the caller may see `run` where ListCleanupRuns lists runs.
fn readable(state: &AppState, call: &Call, registry: &RegistryRef, run: &RunRow) -> Result<bool, ApiError> {
    let identity = &call.caller()?.identity;
    let scope = state.authz.scope(identity, "ListCleanupRuns", [registry]);
    let alias = registry.alias.as_str();
    Ok(if !run.repository.is_empty() {
        scope.allows(alias, &run.repository)
    } else if run.repository_prefix.contains('/') {
        scope.allows(alias, &run.repository_prefix)
    } else {
        scope.allows_all(alias)
    })
}

/// The run RunCleanup just recorded.
fn new_run_message(alias: &str, run: &NewRun) -> pb::CleanupRun {
    pb::CleanupRun {
        id: run.id.to_string(),
        registry: alias.to_owned(),
        repository: run.repository.clone(),
        repository_prefix: run.repository_prefix.clone(),
        policy_text: run.policy_text.clone().unwrap_or_default(),
        dry_run: run.dry_run,
        state: pb::CleanupRunState::Pending as i32,
        created_by: run.identity.principal.clone(),
        create_time: Some(timestamp(run.created_at)),
        update_time: Some(timestamp(run.created_at)),
        counts: Some(pb::CleanupRunCounts::default()),
        ..Default::default()
    }
}

fn run_message(state: &AppState, run: &RunRow, counts: Option<&HashMap<String, i64>>) -> pb::CleanupRun {
    let count = |outcome: &str| {
        counts
            .and_then(|c| c.get(outcome))
            .map_or(0, |&n| i32::try_from(n).unwrap_or(i32::MAX))
    };
    let skipped = run
        .skipped
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| pb::SkippedRepository {
                    repository: e["repository"].as_str().unwrap_or_default().to_owned(),
                    reason: e["reason"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::CleanupRun {
        id: run.id.to_string(),
        registry: state
            .registries
            .alias_of(&run.account_id, &run.region)
            .unwrap_or_default()
            .to_owned(),
        repository: run.repository.clone(),
        repository_prefix: run.repository_prefix.clone(),
        policy_text: run.policy_text.clone().unwrap_or_default(),
        dry_run: run.dry_run,
        state: match run.state {
            RunState::Pending => pb::CleanupRunState::Pending,
            RunState::Running => pb::CleanupRunState::Running,
            RunState::Succeeded => pb::CleanupRunState::Succeeded,
            RunState::Failed => pb::CleanupRunState::Failed,
            RunState::Cancelled => pb::CleanupRunState::Cancelled,
        } as i32,
        cancel_requested: run.cancel_requested,
        created_by: run.principal.clone(),
        create_time: Some(timestamp(run.created_at)),
        update_time: Some(timestamp(run.updated_at)),
        end_time: run.finished_at.map(timestamp),
        counts: Some(pb::CleanupRunCounts {
            selected: counts.map_or(0, |c| i32::try_from(c.values().sum::<i64>()).unwrap_or(i32::MAX)),
            pending: count("pending"),
            submitted: count("submitted"),
            deleted: count("deleted"),
            already_gone: count("already_gone"),
            failed: count("failed"),
            saved_by_pin: count("saved_by_pin"),
            saved_by_protection: count("saved_by_protection"),
            would_expire: count("would_expire"),
            cancelled: count("cancelled"),
            skipped: count("skipped"),
        }),
        batches: run.batches,
        error: run.error.clone(),
        skipped_repositories: skipped,
        attempts: run.attempts,
        replayed: false,
    }
}

fn item_message(item: &ItemRow) -> pb::CleanupRunItem {
    pb::CleanupRunItem {
        repository: item.repository.clone(),
        digest: item.digest.clone(),
        tags: item.tags.clone(),
        push_time: Some(timestamp(item.pushed_at)),
        rule_priority: item.rule_priority,
        action: action_message(if item.action == "transition" {
            crate::policy::lifecycle_model::RuleAction::TransitionToArchive
        } else {
            crate::policy::lifecycle_model::RuleAction::Expire
        }) as i32,
        outcome: outcome_of(&item.outcome) as i32,
        message: item.message.clone(),
        batch: item.batch.unwrap_or(0),
    }
}

/// The stored name of each item outcome (the migration lists them).
const OUTCOMES: &[(pb::CleanupItemOutcome, &str)] = &[
    (pb::CleanupItemOutcome::Pending, "pending"),
    (pb::CleanupItemOutcome::Submitted, "submitted"),
    (pb::CleanupItemOutcome::Deleted, "deleted"),
    (pb::CleanupItemOutcome::AlreadyGone, "already_gone"),
    (pb::CleanupItemOutcome::Failed, "failed"),
    (pb::CleanupItemOutcome::SavedByPin, "saved_by_pin"),
    (pb::CleanupItemOutcome::SavedByProtection, "saved_by_protection"),
    (pb::CleanupItemOutcome::WouldExpire, "would_expire"),
    (pb::CleanupItemOutcome::Cancelled, "cancelled"),
    (pb::CleanupItemOutcome::Skipped, "skipped"),
];

fn outcome_name(outcome: pb::CleanupItemOutcome) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _)| *o == outcome)
        .map_or("", |(_, name)| name)
}

fn outcome_of(name: &str) -> pb::CleanupItemOutcome {
    OUTCOMES
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(pb::CleanupItemOutcome::Unspecified, |(o, _)| *o)
}

fn state_of(state: pb::CleanupRunState) -> RunState {
    match state {
        pb::CleanupRunState::Unspecified | pb::CleanupRunState::Pending => RunState::Pending,
        pb::CleanupRunState::Running => RunState::Running,
        pb::CleanupRunState::Succeeded => RunState::Succeeded,
        pb::CleanupRunState::Failed => RunState::Failed,
        pb::CleanupRunState::Cancelled => RunState::Cancelled,
    }
}

fn state_name(state: &RunState) -> &'static str {
    match state {
        RunState::Pending => "pending",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_outcome_has_one_stored_name() {
        for (outcome, name) in OUTCOMES {
            assert_eq!(outcome_of(name), *outcome);
            assert_eq!(outcome_name(*outcome), *name);
        }
        assert_eq!(OUTCOMES.len(), 10, "every CleanupItemOutcome but UNSPECIFIED");
    }
}
