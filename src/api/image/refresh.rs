//! RefreshInventory and GetSyncStatus, and the read-through of a repository the cache does not know.

use super::*;

/// Reads one image through to ECR and refreshes the cache.
pub(super) async fn refresh(
    state: &AppState,
    call: &mut Call,
    registry: &Registry,
    repository: &RepositoryName,
    selector: &ImageSelector,
) -> Result<(), ApiError> {
    let log = CallLog::default();
    let result = state
        .syncer
        .refresh_image(registry, repository, selector, &log)
        .await;
    call.record.outcome.ecr_request_ids = log.ids();
    result.map(|_| ()).map_err(sync_error)
}

/// A per-repository read found nothing. When the inventory does not know the
/// repository, reads it through to ECR once (`DescribeRepositories`): if ECR
/// has it, it comes in with its tags and images, the caller is authorized
/// again on those tags, and `Ok(true)` says to read again; if not, NOT_FOUND
/// naming the repository, so that a typo does not look like an empty
/// repository. `Ok(false)`: the repository is known and the empty answer stands.
/// ECR's errors pass through (UNAVAILABLE while its circuit breaker is open).
pub(in crate::api) async fn read_through_unknown(
    state: &AppState,
    call: &mut Call,
    registry: &Registry,
    repository: &RepositoryName,
) -> Result<bool, ApiError> {
    let pool = state.store.pool();
    if crate::store::repositories::exists(pool, &registry.reference, repository.as_str()).await? {
        return Ok(false);
    }
    let log = CallLog::default();
    let described = registry.describe_repository_state(&log, repository, true).await;
    call.record.outcome.ecr_request_ids.extend(log.ids());
    let Some(described) = described? else {
        return Err(repository_not_found(&registry.reference, repository));
    };
    async {
        let mut tx = state.store.begin().await?;
        crate::store::repositories::refresh_described(
            &mut tx,
            &registry.reference,
            &described,
            Some(&described.tags),
            Utc::now(),
        )
        .await?;
        tx.commit().await.map_err(crate::store::StoreError::from)
    }
    .instrument(crate::store::transaction_span("read_through_repository"))
    .await?;
    state.store.invalidate(&registry.reference, repository.as_str());
    state
        .syncer
        .sync_repository(registry, repository, Trigger::OnDemand)
        .await
        .map_err(sync_error)?;
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    Ok(true)
}

/// NOT_FOUND for a repository that neither the inventory nor ECR has.
pub(in crate::api) fn repository_not_found(registry: &RegistryRef, repository: &RepositoryName) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.repository",
        resource_name: format!("{}/{}", registry.alias, repository),
        description: format!(
            "repository `{repository}` does not exist in registry `{}` ({} {}); check the name with ListRepositories",
            registry.alias, registry.account_id, registry.region
        ),
    }
}

pub(in crate::api) fn sync_error(error: crate::inventory::SyncError) -> ApiError {
    match error {
        crate::inventory::SyncError::Ecr(e) => e.into(),
        crate::inventory::SyncError::Store(e) => e.into(),
    }
}

pub(super) async fn refresh_inventory(
    state: &AppState,
    call: &mut Call,
    request: &pb::RefreshInventoryRequest,
) -> Result<(pb::RefreshInventoryResponse, Value), ApiError> {
    call.caller()?;
    let registry = state.registry(&request.registry).map_err(|v| invalid(vec![v]))?;
    if !request.digest.is_empty() && request.repository.is_empty() {
        return Err(invalid(vec![Violation::new(
            "repository",
            "refresh.digest-needs-repository",
            "name the repository of the image",
        )]));
    }
    if request.repository.is_empty() {
        call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    } else {
        let name = RepositoryName::parse(&request.repository).map_err(|v| invalid(vec![v]))?;
        state
            .authorize_repository(call, &registry.reference, name.as_str())
            .await?;
    }
    let log = CallLog::default();
    let result = refresh_scope(state, registry, request, &log).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let (repositories, busy) = result?;
    let mut runs = Vec::new();
    for repository in &repositories {
        let recent = sync::recent_runs(
            state.store.pool(),
            &registry.reference,
            Some(repository.as_str()),
            1,
        )
        .await?;
        runs.extend(recent.iter().map(|run| run_message(&registry.reference, run)));
    }
    let elements = json!({"runs": runs.len(), "busy": busy});
    Ok((
        pb::RefreshInventoryResponse {
            runs,
            busy_repositories: busy,
        },
        elements,
    ))
}

/// Runs the sync the request asks for; returns the repositories synced and those busy elsewhere.
pub(super) async fn refresh_scope(
    state: &AppState,
    registry: &Registry,
    request: &pb::RefreshInventoryRequest,
    log: &CallLog,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    if !request.digest.is_empty() {
        let mut violations = Vec::new();
        if request.repository.is_empty() {
            violations.push(Violation::new(
                "repository",
                "refresh.digest-needs-repository",
                "name the repository of the image",
            ));
        }
        let digest = Digest::parse(&request.digest).or_record(&mut violations);
        let name = (!request.repository.is_empty())
            .then(|| RepositoryName::parse(&request.repository).or_record(&mut violations))
            .flatten();
        let (Some(digest), Some(name)) = (digest, name) else {
            return Err(invalid(violations));
        };
        state
            .syncer
            .refresh_image(registry, &name, &ImageSelector::Digest(digest), log)
            .await
            .map_err(sync_error)?;
        return Ok((Vec::new(), Vec::new()));
    }
    let names = if request.repository.is_empty() {
        crate::inventory::sync_repositories(&state.store, registry)
            .await
            .map_err(sync_error)?;
        crate::store::repositories::names(state.store.pool(), &registry.reference).await?
    } else {
        vec![RepositoryName::parse(&request.repository).map_err(|v| invalid(vec![v]))?]
    };
    let (mut synced, mut busy) = (Vec::new(), Vec::new());
    for name in names {
        match state
            .syncer
            .sync_repository(registry, &name, Trigger::OnDemand)
            .await
            .map_err(sync_error)?
        {
            SyncOutcome::Ran(_) => synced.push(name.to_string()),
            SyncOutcome::Busy => busy.push(name.to_string()),
        }
    }
    Ok((synced, busy))
}

pub(super) fn run_message(registry: &RegistryRef, run: &SyncRun) -> pb::SyncRun {
    pb::SyncRun {
        run_id: run.run_id.to_string(),
        registry: registry.alias.clone(),
        repository: run.repository.clone().unwrap_or_default(),
        trigger: run.trigger.clone(),
        holder: run.holder.clone(),
        started_at: Some(timestamp(run.started_at)),
        finished_at: run.finished_at.map(timestamp),
        status: run.status.clone(),
        pages: run.counts.pages,
        images_seen: run.counts.seen,
        images_added: run.counts.added,
        images_changed: run.counts.changed,
        images_removed: run.counts.removed,
        ecr_calls: run.counts.ecr_calls,
        error: run.error.clone().unwrap_or_default(),
    }
}

pub(super) async fn get_sync_status(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetSyncStatusRequest,
) -> Result<(pb::GetSyncStatusResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registry = state.registry(&request.registry).or_record(&mut violations);
    let repository = (!request.repository.is_empty())
        .then(|| RepositoryName::parse(&request.repository).or_record(&mut violations))
        .flatten();
    let limit = match request.limit {
        0 => 20,
        1..=100 => request.limit as i64,
        _ => {
            violations.push(Violation::new("limit", "limit.range", "use 1-100, or 0 for 20"));
            0
        }
    };
    let Some(registry) = registry.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    match &repository {
        Some(name) => {
            state
                .authorize_repository(call, &registry.reference, name.as_str())
                .await?
        }
        None => call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?,
    }
    // Per-repository detail only of the repositories the caller may read (as
    // ListRepositories would show them): everyone may see a registry's status.
    let identity = call.caller()?.identity.clone();
    let readable = match &repository {
        Some(_) => None,
        None => match state
            .authz
            .scope(&identity, "ListRepositories", [&registry.reference])
            .access(&registry.reference.alias)
        {
            Some(crate::auth::authz::Access::All) => None,
            Some(crate::auth::authz::Access::Namespaces(set)) => {
                Some(set.iter().cloned().collect::<Vec<_>>())
            }
            None => Some(Vec::new()),
        },
    };
    let pool = state.store.pool();
    let name = repository.as_ref().map(|r| r.as_str());
    let runs = sync::recent_visible_runs(pool, &registry.reference, name, readable.as_deref(), limit).await?;
    let last = match name {
        Some(name) => sync::last_synced_at(pool, &registry.reference, name).await?,
        None => None,
    };
    let elements = json!({"runs": runs.len()});
    Ok((
        pb::GetSyncStatusResponse {
            runs: runs.iter().map(|r| run_message(&registry.reference, r)).collect(),
            last_synced_at: last.map(timestamp),
        },
        elements,
    ))
}
