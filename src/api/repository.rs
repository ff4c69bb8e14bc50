//! `ecrgateway.v1.RepositoryService`.

use chrono::Utc;
use serde_json::{Value, json};

use super::AppState;
use super::call::Call;
use super::convert;
use super::error::{ApiError, OrRecord as _, Precondition};
use super::mutation::{self, Attempt, CacheChange, Done, check_request_id};
use super::page_token;
use crate::auth::authz::Resource;
use crate::domain::{RegistryRef, RepositoryName, RepositoryState, Violation};
use crate::ecr::{CallLog, Registry};
use crate::pb;
use crate::pb::repository_service_server::RepositoryService;
use crate::policy::RepositorySpec;
use crate::store::{RepositoryFilter, RepositoryKey, repositories};

/// Resource type used in `ResourceInfo`.
const REPOSITORY: &str = "ecr.repository";

/// Settings an `update_mask` may name.
const UPDATABLE: &[&str] = &[
    "image_tag_mutability",
    "image_tag_mutability_exclusion_filters",
    "scan_on_push",
    "tags",
    "lifecycle_policy",
    "repository_policy",
];

/// The RepositoryService implementation.
pub type RepositoryApi = super::Api;

super::rpc::unary_rpcs! {
    RepositoryService, RepositoryApi, state {
        create_repository(CreateRepositoryRequest) -> CreateRepositoryResponse = "CreateRepository", Write, create;
        get_repository(GetRepositoryRequest) -> Repository = "GetRepository", Read, get;
        list_repositories(ListRepositoriesRequest) -> ListRepositoriesResponse = "ListRepositories", Read, list;
        update_repository(UpdateRepositoryRequest) -> UpdateRepositoryResponse = "UpdateRepository", Write, update;
        delete_repository(DeleteRepositoryRequest) -> DeleteRepositoryResponse = "DeleteRepository", Write, delete;
    }
}

async fn create(
    state: &AppState,
    call: &mut Call,
    request: &pb::CreateRepositoryRequest,
) -> Result<(pb::CreateRepositoryResponse, Value), ApiError> {
    call.caller()?;
    let (registry, spec) = plan_create(state, request)?;
    call.set_repository(&registry.reference, registry.reference.repository_arn(&spec.name));
    call.authorize(
        &state.authz,
        &Resource::Repository {
            registry: registry.reference.clone(),
            name: spec.name.to_string(),
            tags: spec.tags.clone(),
        },
    )?;
    if request.validate_only {
        let repository = convert::planned_repository(&registry.reference, &spec);
        let elements = json!({"validateOnly": true, "repository": convert::repository_json(&repository)});
        return Ok((
            pb::CreateRepositoryResponse {
                repository: Some(repository),
                replayed: false,
            },
            elements,
        ));
    }
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| provision(registry, spec, attempt),
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"replayed": replayed, "repository": response.repository.as_ref().map(convert::repository_json)});
    Ok((response, elements))
}

/// Decodes and checks a create request: every violation at once.
fn plan_create<'a>(
    state: &'a AppState,
    request: &pb::CreateRepositoryRequest,
) -> Result<(&'a Registry, RepositorySpec), ApiError> {
    let mut violations = Vec::new();
    let registry = state.registry(&request.registry).or_record(&mut violations);
    violations.extend(check_request_id(&request.request_id));
    let (repository_request, decode_violations) =
        convert::repository_request(&request.repository, request.settings.as_ref());
    violations.extend(decode_violations);
    let account = registry.and_then(|r| crate::domain::AccountId::parse(&r.reference.account_id).ok());
    let plan = match &account {
        Some(account) => state
            .policy
            .current()
            .plan_repository(&repository_request, account),
        None => Err(Vec::new()),
    };
    match (registry, plan) {
        (Some(registry), Ok(spec)) if violations.is_empty() => Ok((registry, spec)),
        (_, plan) => {
            if let Err(policy_violations) = plan {
                violations.extend(policy_violations);
            }
            Err(ApiError::InvalidArgument {
                reason: "ORG_POLICY_VIOLATION",
                violations,
            })
        }
    }
}

/// The ECR side of a create: converges, so a retry finishes a half-done create.
async fn provision(
    registry: &Registry,
    spec: RepositorySpec,
    attempt: Attempt,
) -> Result<Done<pb::CreateRepositoryResponse>, ApiError> {
    let current = registry.fetch_repository(&attempt.log, &spec.name).await?;
    if let Some(existing) = &current
        && !(attempt.number > 1 && carries_tags(existing, &spec))
    {
        return Err(already_exists(&registry.reference, &spec.name));
    }
    // A retry that finds the repository says so: an earlier attempt made it
    // (recovery reads this to tell which attempt made the change).
    let already_existed = current.is_some();
    let state = registry.converge_repository(&attempt.log, &spec, current).await?;
    let repository = convert::repository(&registry.reference, &state, Some(Utc::now()), true);
    let mut elements = convert::repository_json(&repository);
    if let (true, Value::Object(map)) = (already_existed, &mut elements) {
        map.insert("alreadyExisted".into(), Value::Bool(true));
    }
    Ok(Done {
        elements,
        response: pb::CreateRepositoryResponse {
            repository: Some(repository),
            replayed: false,
        },
        change: CacheChange::Upsert(registry.reference.clone(), state),
    })
}

/// A repository left by an earlier attempt of the same request carries the
/// tags that attempt set when it created it (CreateRepository sets them atomically).
fn carries_tags(existing: &RepositoryState, spec: &RepositorySpec) -> bool {
    spec.tags.iter().all(|(k, v)| existing.tags.get(k) == Some(v))
}

fn already_exists(registry: &RegistryRef, name: &RepositoryName) -> ApiError {
    ApiError::AlreadyExists {
        resource_type: REPOSITORY,
        resource_name: format!("{}/{}", registry.alias, name),
        description: format!(
            "repository `{name}` already exists in registry `{}` and was not created by this request; \
             use GetRepository to inspect it or UpdateRepository to change it",
            registry.alias
        ),
    }
}

fn not_found(registry: &RegistryRef, name: &RepositoryName) -> ApiError {
    ApiError::NotFound {
        resource_type: REPOSITORY,
        resource_name: format!("{}/{}", registry.alias, name),
        description: format!(
            "repository `{name}` does not exist in registry `{}` ({} {}); check the name with ListRepositories",
            registry.alias, registry.account_id, registry.region
        ),
    }
}

async fn get(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetRepositoryRequest,
) -> Result<(pb::Repository, Value), ApiError> {
    call.caller()?;
    let (registry, name) = state.locate(&request.registry, &request.repository)?;
    call.set_repository(&registry.reference, registry.reference.repository_arn(&name));
    state
        .authorize_repository(call, &registry.reference, name.as_str())
        .await?;
    let strong = match pb::Consistency::try_from(request.consistency) {
        Ok(consistency) => consistency == pb::Consistency::Strong,
        Err(_) => {
            return Err(ApiError::invalid(
                "consistency",
                "enum.unknown-value",
                "use CONSISTENCY_CACHED or CONSISTENCY_STRONG",
            ));
        }
    };
    if !strong && let Some(cached) = repositories::get(state.store.pool(), &registry.reference, &name).await?
    {
        let repository =
            convert::repository(&registry.reference, &cached.state, Some(cached.synced_at), false);
        return Ok((repository.clone(), convert::repository_json(&repository)));
    }
    let log = CallLog::default();
    let fetched = registry.fetch_repository(&log, &name).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let repository_state = refresh_cache(state, &registry.reference, &name, fetched?).await?;
    let repository = convert::repository(&registry.reference, &repository_state, Some(Utc::now()), true);
    Ok((repository.clone(), convert::repository_json(&repository)))
}

/// Writes what ECR just said into the cache; a repository ECR no longer has leaves it.
#[tracing::instrument(name = "db.transaction", skip_all, fields(
    otel.name = "postgresql refresh_repository", otel.kind = "client",
    db.system = "postgresql", db.operation.name = "refresh_repository"))]
async fn refresh_cache(
    state: &AppState,
    registry: &RegistryRef,
    name: &RepositoryName,
    fetched: Option<RepositoryState>,
) -> Result<RepositoryState, ApiError> {
    let mut tx = state.store.begin().await?;
    let result = match fetched {
        Some(repository_state) => {
            repositories::upsert(&mut tx, registry, &repository_state, Utc::now()).await?;
            Ok(repository_state)
        }
        None => {
            repositories::delete(&mut tx, registry, name).await?;
            Err(not_found(registry, name))
        }
    };
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    state.store.invalidate(registry, name.as_str());
    result
}

async fn list(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListRepositoriesRequest,
) -> Result<(pb::ListRepositoriesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations)
        .unwrap_or_default();
    violations.extend(super::check_prefix("prefix", &request.prefix));
    let tags: std::collections::BTreeMap<String, String> = request.tag_filter.clone().into_iter().collect();
    violations.extend(crate::policy::tag_filter_violations("tag_filter", &tags));
    let limit = page_token::page_size(request.page_size);
    if let Err(ApiError::InvalidArgument { violations: v, .. }) = &limit {
        violations.extend(v.iter().cloned());
    }
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument {
            reason: "INVALID_REQUEST",
            violations,
        });
    }
    let limit = limit?;
    let scope = call.authorize_list(&state.authz, registries.iter().map(|r| &r.reference))?;
    let key = state.page_key().await?;
    let fingerprint = page_token::fingerprint(&(&request.registry, &request.prefix, &tags));
    let after: Option<(String, String, String)> = key.decode(&request.page_token, &fingerprint)?;
    let filter = RepositoryFilter {
        visibility: super::visibility(&scope, registries.iter().map(|r| &r.reference)),
        prefix: request.prefix.clone(),
        tags,
        after: after.map(|(account_id, region, name)| RepositoryKey {
            account_id,
            region,
            name,
        }),
        limit: limit + 1,
    };
    let mut rows = repositories::list(state.store.pool(), &filter).await?;
    let next_page_token = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|last| {
                key.encode(
                    &fingerprint,
                    &(&last.account_id, &last.region, last.state.name.as_str()),
                )
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let repositories: Vec<pb::Repository> = rows
        .iter()
        .filter_map(|row| {
            let registry = registries
                .iter()
                .find(|r| r.reference.account_id == row.account_id && r.reference.region == row.region)?;
            Some(convert::repository(
                &registry.reference,
                &row.state,
                Some(row.synced_at),
                false,
            ))
        })
        .collect();
    let elements = json!({"count": repositories.len(), "nextPageToken": !next_page_token.is_empty()});
    Ok((
        pb::ListRepositoriesResponse {
            repositories,
            next_page_token,
        },
        elements,
    ))
}

async fn update(
    state: &AppState,
    call: &mut Call,
    request: &pb::UpdateRepositoryRequest,
) -> Result<(pb::UpdateRepositoryResponse, Value), ApiError> {
    call.caller()?;
    let (registry, name) = state.locate(&request.registry, &request.repository)?;
    let paths = check_update_request(request)?;
    call.set_repository(&registry.reference, registry.reference.repository_arn(&name));
    state
        .authorize_repository(call, &registry.reference, name.as_str())
        .await?;
    let log = CallLog::default();
    let current = registry
        .fetch_repository(&log, &name)
        .await?
        .ok_or_else(|| not_found(&registry.reference, &name))?;
    let spec = plan_update(state, registry, &current, request, &paths)?;
    if request.validate_only {
        let repository = convert::planned_repository(&registry.reference, &spec);
        let elements = json!({"validateOnly": true, "repository": convert::repository_json(&repository)});
        return Ok((
            pb::UpdateRepositoryResponse {
                repository: Some(repository),
                replayed: false,
            },
            elements,
        ));
    }
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| apply_update(registry, spec, attempt),
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"replayed": replayed, "repository": response.repository.as_ref().map(convert::repository_json)});
    Ok((response, elements))
}

/// The mask's paths, checked: known, updatable, at least one.
fn check_update_request(request: &pb::UpdateRepositoryRequest) -> Result<Vec<String>, ApiError> {
    let mut violations: Vec<Violation> = check_request_id(&request.request_id).into_iter().collect();
    let paths: Vec<String> = request
        .update_mask
        .as_ref()
        .map(|mask| {
            mask.paths
                .iter()
                .map(|p| p.strip_prefix("settings.").unwrap_or(p).to_owned())
                .collect()
        })
        .unwrap_or_default();
    if paths.is_empty() {
        violations.push(Violation::new(
            "update_mask",
            "update-mask.empty",
            format!(
                "name the settings to change, e.g. {{\"paths\": [\"tags\"]}}; updatable: {}",
                UPDATABLE.join(", ")
            ),
        ));
    }
    for path in &paths {
        if path == "encryption" {
            violations.push(Violation::new(
                "update_mask",
                "update-mask.immutable-field",
                "ECR fixes encryption when a repository is created; create a new repository to change it",
            ));
        } else if path != "*" && !UPDATABLE.contains(&path.as_str()) {
            violations.push(Violation::new(
                "update_mask",
                "update-mask.unknown-path",
                format!(
                    "`{path}` is not an updatable setting; use: {}",
                    UPDATABLE.join(", ")
                ),
            ));
        }
    }
    if violations.is_empty() {
        Ok(paths)
    } else {
        Err(ApiError::InvalidArgument {
            reason: "INVALID_REQUEST",
            violations,
        })
    }
}

/// The current settings with the masked ones replaced, checked against the org policy.
fn plan_update(
    state: &AppState,
    registry: &Registry,
    current: &RepositoryState,
    request: &pb::UpdateRepositoryRequest,
    paths: &[String],
) -> Result<RepositorySpec, ApiError> {
    let (requested, mut violations) =
        convert::repository_request(current.name.as_str(), request.settings.as_ref());
    let mut merged = convert::request_from_state(current);
    let all = paths.iter().any(|p| p == "*");
    let wants = |field: &str| all || paths.iter().any(|p| p == field);
    if wants("image_tag_mutability") {
        merged.tag_mutability = requested.tag_mutability;
    }
    if wants("image_tag_mutability_exclusion_filters") {
        merged.exclusion_filters = requested.exclusion_filters;
    }
    if wants("scan_on_push") {
        merged.scan_on_push = requested.scan_on_push;
    }
    if wants("tags") {
        merged.tags = requested.tags;
    }
    if wants("lifecycle_policy") {
        merged.lifecycle_policy = requested.lifecycle_policy;
    }
    if wants("repository_policy") {
        merged.repository_policy = requested.repository_policy;
    }
    let account = crate::domain::AccountId::parse(&registry.reference.account_id).map_err(|v| {
        ApiError::InvalidArgument {
            reason: "INVALID_REQUEST",
            violations: vec![v],
        }
    })?;
    match state.policy.current().plan_repository(&merged, &account) {
        Ok(spec) if violations.is_empty() => Ok(spec),
        Ok(_) => Err(ApiError::InvalidArgument {
            reason: "INVALID_REQUEST",
            violations,
        }),
        Err(policy_violations) => {
            violations.extend(policy_violations);
            Err(ApiError::InvalidArgument {
                reason: "ORG_POLICY_VIOLATION",
                violations,
            })
        }
    }
}

async fn apply_update(
    registry: &Registry,
    spec: RepositorySpec,
    attempt: Attempt,
) -> Result<Done<pb::UpdateRepositoryResponse>, ApiError> {
    let current = registry
        .fetch_repository(&attempt.log, &spec.name)
        .await?
        .ok_or_else(|| not_found(&registry.reference, &spec.name))?;
    let state = registry
        .converge_repository(&attempt.log, &spec, Some(current))
        .await?;
    let repository = convert::repository(&registry.reference, &state, Some(Utc::now()), true);
    Ok(Done {
        elements: convert::repository_json(&repository),
        response: pb::UpdateRepositoryResponse {
            repository: Some(repository),
            replayed: false,
        },
        change: CacheChange::Upsert(registry.reference.clone(), state),
    })
}

async fn delete(
    state: &AppState,
    call: &mut Call,
    request: &pb::DeleteRepositoryRequest,
) -> Result<(pb::DeleteRepositoryResponse, Value), ApiError> {
    call.caller()?;
    let (registry, name) = state.locate(&request.registry, &request.repository)?;
    if let Some(violation) = check_request_id(&request.request_id) {
        return Err(ApiError::InvalidArgument {
            reason: "INVALID_REQUEST",
            violations: vec![violation],
        });
    }
    call.set_repository(&registry.reference, registry.reference.repository_arn(&name));
    state
        .authorize_repository(call, &registry.reference, name.as_str())
        .await?;
    if request.validate_only {
        let log = CallLog::default();
        let current = registry
            .fetch_repository(&log, &name)
            .await?
            .ok_or_else(|| not_found(&registry.reference, &name))?;
        let image_count = ensure_deletable(registry, &log, &name, request.force).await?;
        super::cleanup::refuse_pinned(&state.store, &registry.reference, name.as_str(), None).await?;
        let repository = convert::repository(&registry.reference, &current, Some(Utc::now()), true);
        let elements = json!({"validateOnly": true, "imageCount": image_count});
        return Ok((
            pb::DeleteRepositoryResponse {
                repository: Some(repository),
                image_count,
                replayed: false,
            },
            elements,
        ));
    }
    let force = request.force;
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| remove(&state.store, registry, name, force, attempt),
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"replayed": replayed, "imageCount": response.image_count});
    Ok((response, elements))
}

/// Counts the images; refuses a non-empty repository without `force`.
async fn ensure_deletable(
    registry: &Registry,
    log: &CallLog,
    name: &RepositoryName,
    force: bool,
) -> Result<i64, ApiError> {
    let image_count = registry.count_images(log, name).await?;
    if image_count > 0 && !force {
        return Err(ApiError::FailedPrecondition {
            reason: "REPOSITORY_NOT_EMPTY",
            violations: vec![Precondition {
                kind: "REPOSITORY_NOT_EMPTY".into(),
                subject: format!("{}/{}", registry.reference.alias, name),
                description: format!(
                    "repository `{name}` still holds {image_count} image(s); delete them first, or pass force=true to delete them with it"
                ),
            }],
        });
    }
    Ok(image_count)
}

async fn remove(
    store: &crate::store::Store,
    registry: &Registry,
    name: RepositoryName,
    force: bool,
    attempt: Attempt,
) -> Result<Done<pb::DeleteRepositoryResponse>, ApiError> {
    let current = registry.fetch_repository(&attempt.log, &name).await?;
    let Some(current) = current else {
        if attempt.number > 1 {
            // An earlier attempt of this request deleted it but could not record that.
            return Ok(Done {
                elements: json!({"alreadyDeleted": true}),
                response: pb::DeleteRepositoryResponse::default(),
                change: CacheChange::Delete(registry.reference.clone(), name),
            });
        }
        return Err(not_found(&registry.reference, &name));
    };
    let image_count = ensure_deletable(registry, &attempt.log, &name, force).await?;
    // A pinned image is in use: not even force deletes it.
    super::cleanup::refuse_pinned(store, &registry.reference, name.as_str(), None).await?;
    registry.delete_repository(&attempt.log, &name, force).await?;
    let repository = convert::repository(&registry.reference, &current, Some(Utc::now()), true);
    Ok(Done {
        elements: json!({"imageCount": image_count, "repository": convert::repository_json(&repository)}),
        response: pb::DeleteRepositoryResponse {
            repository: Some(repository),
            image_count,
            replayed: false,
        },
        change: CacheChange::Delete(registry.reference.clone(), name),
    })
}
