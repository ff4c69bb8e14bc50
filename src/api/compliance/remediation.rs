//! RemediateRepositories (a plan, or a run a worker carries out:
//! `compliance::remediation`), GetRemediationRun, ListRemediationRuns and
//! CancelRemediationRun.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::run_messages::{counts_of, item_message, items_of, row_of, run_message};
use crate::api::call::Call;
use crate::api::error::{ApiError, OrRecord as _, Precondition, invalid};
use crate::api::mutation::{self, CacheChange, Done, check_request_id};
use crate::api::page_token::{self, next_token};
use crate::api::{AppState, check_prefix};
use crate::auth::authz::Resource;
use crate::compliance::remediation::{changes_json, findings_json};
use crate::domain::{AccountId, RegistryRef, RepositoryName, Violation};
use crate::ecr::Registry;
use crate::pb;
use crate::policy::compliance::{PoliciesRead, is_rule_id};
use crate::store::remediation_runs::{self, Cancel, ItemRow, NewRun, RunRow};
use crate::store::repositories;

/// Repositories one request may select.
const MAX_REPOSITORIES: usize = 1000;

/// A decoded RemediateRepositories.
struct Command<'a> {
    registry: &'a Registry,
    rules: Vec<String>,
    tags: BTreeMap<String, String>,
}

fn parse<'a>(
    state: &'a AppState,
    request: &pb::RemediateRepositoriesRequest,
) -> Result<Command<'a>, ApiError> {
    let mut violations = Vec::new();
    let registry = state.registry(&request.registry).or_record(&mut violations);
    match (request.prefix.is_empty(), request.repositories.is_empty()) {
        (true, true) => violations.push(Violation::new(
            "prefix",
            "remediation.target",
            "give prefix (every cached repository under it) or repositories",
        )),
        (false, false) => violations.push(Violation::new(
            "repositories",
            "remediation.target",
            "give prefix or repositories, not both",
        )),
        _ => {}
    }
    violations.extend(check_prefix("prefix", &request.prefix));
    if request.repositories.len() > MAX_REPOSITORIES {
        violations.push(too_many(request.repositories.len()));
    }
    for (index, name) in request.repositories.iter().enumerate().take(MAX_REPOSITORIES) {
        if let Err(mut violation) = RepositoryName::parse(name) {
            violation.field = format!("repositories[{index}]");
            violations.push(violation);
        }
    }
    for (index, rule) in request.rules.iter().enumerate() {
        if !is_rule_id(rule) {
            violations.push(Violation::new(
                format!("rules[{index}]"),
                "compliance.rule-id",
                format!(
                    "`{}` is not a rule id: use one a violation reports, e.g. `tags.required`",
                    rule.escape_debug()
                ),
            ));
        }
    }
    let tags: BTreeMap<String, String> = request.tags.clone().into_iter().collect();
    violations.extend(crate::policy::settable_tag_violations("tags", &tags));
    violations.extend(check_request_id(&request.request_id));
    match registry {
        Some(registry) if violations.is_empty() => Ok(Command {
            registry,
            rules: request.rules.clone(),
            tags,
        }),
        _ => Err(invalid(violations)),
    }
}

fn too_many(count: usize) -> Violation {
    Violation::new(
        "repositories",
        "remediation.size",
        format!("{count} repositories; one request remediates at most {MAX_REPOSITORIES}: narrow the prefix"),
    )
}

/// RemediateRepositories: authorize as an UpdateRepository of every selected
/// repository, plan each from the cache, then answer the plans (dry run) or
/// record a run and wake the worker.
pub(super) async fn remediate(
    state: &AppState,
    call: &mut Call,
    request: &pb::RemediateRepositoriesRequest,
) -> Result<(pb::RemediateRepositoriesResponse, Value), ApiError> {
    let identity = call.caller()?.identity.clone();
    let command = parse(state, request)?;
    let reference = &command.registry.reference;
    call.set_registry(reference);
    let names = select(state, reference, request).await?;
    authorize(state, call, reference, &names).await?;
    refuse_busy(state, reference, &names).await?;
    let plans = plan(state, reference, &names, &command).await?;
    if request.dry_run {
        let plans: Vec<pb::RepositoryRemediation> =
            plans.iter().map(|p| item_message(&reference.alias, p)).collect();
        let elements = json!({"dryRun": true, "repositories": plans.len(),
                              "changes": plans.iter().map(|p| p.changes.len()).sum::<usize>()});
        let response = pb::RemediateRepositoriesResponse {
            plans,
            ..Default::default()
        };
        return Ok((response, elements));
    }
    let run = NewRun {
        id: Uuid::now_v7(),
        registry: reference.clone(),
        rules: command.rules.clone(),
        tags: json!(command.tags),
        identity,
        created_at: Utc::now(),
        items: plans
            .into_iter()
            .map(|p| (p.repository, p.changes, p.left_findings))
            .collect(),
    };
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |_attempt| async move {
            let message = run_message(&reference.alias, &row_of(&run), &items_of(&run));
            Ok(Done {
                elements: json!({"remediationRunId": run.id.to_string(), "repositories": run.items.len()}),
                response: pb::RemediateRepositoriesResponse {
                    run: Some(message),
                    ..Default::default()
                },
                change: CacheChange::StartRemediationRun(Box::new(run)),
            })
        },
    )
    .await?;
    state.remediation_wake.notify_one();
    response.replayed = replayed;
    let id = response.run.as_ref().map(|r| r.id.clone()).unwrap_or_default();
    Ok((response, json!({"remediationRunId": id, "replayed": replayed})))
}

/// The cached repositories the request selects (each named one must be cached).
async fn select(
    state: &AppState,
    registry: &RegistryRef,
    request: &pb::RemediateRepositoriesRequest,
) -> Result<Vec<RepositoryName>, ApiError> {
    let cached = repositories::names(state.store.pool(), registry).await?;
    if request.repositories.is_empty() {
        let names: Vec<RepositoryName> = cached
            .into_iter()
            .filter(|n| n.as_str().starts_with(request.prefix.as_str()))
            .collect();
        return match names.len() {
            0 => Err(ApiError::NotFound {
                resource_type: "ecr.repository",
                resource_name: format!("{}/{}*", registry.alias, request.prefix),
                description: format!(
                    "registry `{}` has no repository whose name starts with `{}` (as of the last sync)",
                    registry.alias, request.prefix
                ),
            }),
            n if n > MAX_REPOSITORIES => Err(invalid(vec![too_many(n)])),
            _ => Ok(names),
        };
    }
    let mut names = Vec::new();
    for name in &request.repositories {
        let name = RepositoryName::parse(name).map_err(|v| invalid(vec![v]))?;
        if !cached.contains(&name) {
            return Err(ApiError::NotFound {
                resource_type: "ecr.repository",
                resource_name: format!("{}/{name}", registry.alias),
                description: format!(
                    "repository `{name}` is not in registry `{}` (as of the last sync); check the name with \
                     ListRepositories",
                    registry.alias
                ),
            });
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The rights of an UpdateRepository of every selected repository.
async fn authorize(
    state: &AppState,
    call: &mut Call,
    registry: &RegistryRef,
    names: &[RepositoryName],
) -> Result<(), ApiError> {
    let mut resources = Vec::with_capacity(names.len());
    for name in names {
        let tags = state.store.repository_tags(registry, name.as_str()).await?;
        resources.push(Resource::Repository {
            registry: registry.clone(),
            name: name.to_string(),
            tags,
        });
    }
    let pairs: Vec<(&str, &Resource)> = resources.iter().map(|r| ("UpdateRepository", r)).collect();
    call.authorize_all(&state.authz, "RemediateRepositories", &pairs)
}

/// One remediation run per repository at a time.
async fn refuse_busy(
    state: &AppState,
    registry: &RegistryRef,
    names: &[RepositoryName],
) -> Result<(), ApiError> {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let busy = remediation_runs::busy(state.store.pool(), registry, &names).await?;
    if busy.is_empty() {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition {
        reason: "REMEDIATION_RUNNING",
        violations: busy
            .into_iter()
            .map(|(repository, run)| Precondition {
                kind: "REMEDIATION_RUNNING".into(),
                subject: format!("{}/{repository}", registry.alias),
                description: format!(
                    "remediation run `{run}` has not finished with `{repository}`; wait for it (GetRemediationRun) \
                     or cancel it"
                ),
            })
            .collect(),
    })
}

/// Each repository's plan, from its cached state, as a run's item before the
/// worker takes it (outcome `planned`).
async fn plan(
    state: &AppState,
    registry: &RegistryRef,
    names: &[RepositoryName],
    command: &Command<'_>,
) -> Result<Vec<ItemRow>, ApiError> {
    let account = AccountId::parse(&registry.account_id).map_err(|v| invalid(vec![v]))?;
    let policy = state.policy.current();
    let mut plans = Vec::with_capacity(names.len());
    for name in names {
        let Some(cached) = repositories::get(state.store.pool(), registry, name).await? else {
            continue;
        };
        let read = match cached.policies_read_at {
            Some(_) => PoliciesRead::Yes,
            None => PoliciesRead::No,
        };
        let remedy = policy.remedy(&cached.state, &account, &command.tags, &command.rules, read);
        let message = match read {
            PoliciesRead::Yes => String::new(),
            PoliciesRead::No => {
                "its lifecycle and repository policies have not been read from ECR yet (the sync \
                                 reads them within a day): a run reads them first and mends them too"
                    .to_owned()
            }
        };
        plans.push(ItemRow {
            repository: name.to_string(),
            outcome: "planned".into(),
            changes: changes_json(&remedy.mends),
            left_findings: findings_json(&remedy.left),
            message,
            audit_event_id: None,
        });
    }
    Ok(plans)
}

fn run_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::invalid(
            "id",
            "remediation-run.id",
            format!(
                "`{}` is not a remediation run id: use the id RemediateRepositories returned (a UUID)",
                text.escape_debug()
            ),
        )
    })
}

fn run_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecrgateway.remediationRun",
        resource_name: id.to_string(),
        description: format!(
            "there is no remediation run `{id}`; ListRemediationRuns shows the runs there are"
        ),
    }
}

/// A recorded run and its registry, if the caller started it or may `action` on its registry.
async fn authorized_run<'a>(
    state: &'a AppState,
    call: &mut Call,
    id: &str,
    action: &str,
) -> Result<(RunRow, &'a Registry), ApiError> {
    let id = run_id(id)?;
    let run = remediation_runs::get(state.store.pool(), id)
        .await?
        .ok_or_else(|| run_not_found(id))?;
    let registry = state
        .registries
        .at(&run.account_id, &run.region)
        .ok_or_else(|| run_not_found(id))?;
    call.set_registry(&registry.reference);
    if call.caller()?.identity.principal == run.principal {
        call.allow_own(&format!("remediation run {id}"));
        return Ok((run, registry));
    }
    let resource = Resource::Registry(registry.reference.clone());
    match call.authorize_all(&state.authz, action, &[(action, &resource)]) {
        Ok(()) => Ok((run, registry)),
        Err(ApiError::PermissionDenied { .. }) => Err(call.denied_by_id(&format!("remediation run `{id}`"))),
        Err(other) => Err(other),
    }
}

/// GetRemediationRun: the run with every repository's outcome.
pub(super) async fn get_run(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetRemediationRunRequest,
) -> Result<(pb::RemediationRun, Value), ApiError> {
    call.caller()?;
    let (run, registry) = authorized_run(state, call, &request.id, "GetRemediationRun").await?;
    let items = remediation_runs::items(state.store.pool(), run.id).await?;
    let message = run_message(&registry.reference.alias, &run, &items);
    let elements = json!({"remediationRunId": run.id.to_string(), "state": run.state});
    Ok((message, elements))
}

/// CancelRemediationRun: the worker stops before its next repository.
pub(super) async fn cancel_run(
    state: &AppState,
    call: &mut Call,
    request: &pb::CancelRemediationRunRequest,
) -> Result<(pb::RemediationRun, Value), ApiError> {
    call.caller()?;
    let (run, registry) = authorized_run(state, call, &request.id, "CancelRemediationRun").await?;
    let pool = state.store.pool();
    match remediation_runs::request_cancel(pool, run.id).await? {
        Cancel::Missing => return Err(run_not_found(run.id)),
        Cancel::Ended => {
            return Err(ApiError::FailedPrecondition {
                reason: "REMEDIATION_RUN_ENDED",
                violations: vec![Precondition {
                    kind: "REMEDIATION_RUN_ENDED".into(),
                    subject: run.id.to_string(),
                    description: format!(
                        "remediation run `{}` already ended ({}); there is nothing to cancel",
                        run.id, run.state
                    ),
                }],
            });
        }
        Cancel::Requested => {}
    }
    state.remediation_wake.notify_one();
    let run = remediation_runs::get(pool, run.id)
        .await?
        .ok_or_else(|| run_not_found(run.id))?;
    let items = remediation_runs::items(pool, run.id).await?;
    let elements = json!({"remediationRunId": run.id.to_string(), "cancelRequested": true});
    Ok((run_message(&registry.reference.alias, &run, &items), elements))
}

/// ListRemediationRuns: the caller's own runs, and every run of the
/// registries where the Cedar policy lets it list them.
pub(super) async fn list_runs(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListRemediationRunsRequest,
) -> Result<(pb::ListRemediationRunsResponse, Value), ApiError> {
    let identity = call.caller()?.identity.clone();
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations);
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let (Some(registries), Some(limit), true) = (registries, limit, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let fingerprint = page_token::fingerprint(&("ListRemediationRuns", &request.registry));
    let key = state.page_key().await?;
    let after: Option<(DateTime<Utc>, Uuid)> = key.decode(&request.page_token, &fingerprint)?;
    let scope: Vec<(RegistryRef, bool)> = registries
        .iter()
        .map(|r| {
            let resource = Resource::Registry(r.reference.clone());
            let all = state
                .authz
                .decide(&identity, "ListRemediationRuns", &resource)
                .allowed;
            (r.reference.clone(), all)
        })
        .collect();
    // Lists filter, they never deny: the caller's own runs, and every run of
    // the registries whose runs the policy lets it list.
    let everything: Vec<&str> = scope
        .iter()
        .filter(|(_, all)| *all)
        .map(|(r, _)| r.alias.as_str())
        .collect();
    call.allow_own(&format!(
        "own remediation runs, and every run of registries {everything:?}"
    ));
    let mut rows =
        remediation_runs::list(state.store.pool(), &scope, &identity.principal, after, limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |r| {
        key.encode(&fingerprint, &(r.created_at, r.id))
    });
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let counts = remediation_runs::counts(state.store.pool(), &ids).await?;
    let runs: Vec<pb::RemediationRun> = rows
        .iter()
        .map(|run| {
            let alias = state
                .registries
                .alias_of(&run.account_id, &run.region)
                .unwrap_or_default();
            pb::RemediationRun {
                counts: Some(counts_of(run.id, &counts)),
                ..run_message(alias, run, &[])
            }
        })
        .collect();
    let elements = json!({"count": runs.len(), "nextPageToken": !next_page_token.is_empty()});
    Ok((
        pb::ListRemediationRunsResponse {
            runs,
            next_page_token,
        },
        elements,
    ))
}
