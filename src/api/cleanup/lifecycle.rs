//! Lifecycle policies (Get, Set, Delete) and PreviewCleanup: the policy's verdict on the cached images, with pins, protection and retention floors.

use super::*;

/// FAILED_PRECONDITION: the repository has no lifecycle policy to apply.
pub(in crate::api) fn no_lifecycle_policy(registry: &RegistryRef, repository: &RepositoryName) -> ApiError {
    ApiError::FailedPrecondition {
        reason: "NO_LIFECYCLE_POLICY",
        violations: vec![Precondition {
            kind: "NO_LIFECYCLE_POLICY".into(),
            subject: format!("{}/{repository}", registry.alias),
            description: format!("`{repository}` has no lifecycle policy; give policy_text to use one"),
        }],
    }
}

pub(in crate::api) fn repository_not_found(registry: &RegistryRef, repository: &RepositoryName) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.repository",
        resource_name: format!("{}/{repository}", registry.alias),
        description: format!("registry `{}` has no repository `{repository}`", registry.alias),
    }
}

pub(super) async fn get_lifecycle_policy(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetLifecyclePolicyRequest,
) -> Result<(pb::LifecyclePolicy, Value), ApiError> {
    call.caller()?;
    let (registry, repository) = state.locate(&request.registry, &request.repository)?;
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let log = CallLog::default();
    let text = registry.get_lifecycle_policy(&log, &repository).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let text = text?.unwrap_or_default();
    let elements = json!({"present": !text.is_empty()});
    Ok((
        pb::LifecyclePolicy {
            registry: registry.reference.alias.clone(),
            repository: repository.to_string(),
            policy_text: text,
        },
        elements,
    ))
}

/// One previewed image as the API shows it.
pub(super) fn previewed(preview: &Preview, verdict: &Verdict) -> pb::PreviewedImage {
    let image = &preview.images[verdict.image];
    let digest = image.digest.to_string();
    let (saved_by, holders, protected_by) = match (
        verdict.saved,
        preview.holders.get(&digest),
        preview.protected.get(&digest),
    ) {
        (false, _, _) => (pb::SavedBy::Unspecified, Vec::new(), String::new()),
        (true, Some(h), _) => (pb::SavedBy::Pin, h.clone(), String::new()),
        (true, None, p) => (
            pb::SavedBy::Protection,
            Vec::new(),
            p.cloned().unwrap_or_default(),
        ),
    };
    pb::PreviewedImage {
        digest,
        tags: image.tags.clone(),
        push_time: Some(timestamp(image.pushed_at)),
        action: action_message(verdict.action) as i32,
        rule_priority: i32::try_from(verdict.rule_priority).unwrap_or(i32::MAX),
        saved_by: saved_by as i32,
        holders,
        protected_by,
    }
}

/// A rule action as the API names it.
pub(in crate::api) fn action_message(action: RuleAction) -> pb::CleanupAction {
    match action {
        RuleAction::Expire => pb::CleanupAction::Expire,
        RuleAction::TransitionToArchive => pb::CleanupAction::Transition,
    }
}

/// Evaluates `policy` over the repository's cached images now (floors are checked separately).
pub(super) async fn preview(
    state: &AppState,
    registry: &RegistryRef,
    repository: &RepositoryName,
    policy: &LifecyclePolicy,
) -> Result<Preview, ApiError> {
    let org = state.policy.current();
    let cleanup = &org.config().cleanup;
    Ok(plan::preview(
        state.store.pool(),
        cleanup,
        registry,
        repository.as_str(),
        policy,
        Floors::Ignore,
    )
    .await?)
}

/// The org policy's retention floors this policy would break: it may not
/// expire any of the `count` newest images with a tag matching the floor's
/// pattern (judged on the cached inventory now).
pub(in crate::api) fn retention_violations(
    state: &AppState,
    repository: &RepositoryName,
    previewed: &Preview,
) -> Vec<Violation> {
    plan::floor_breaches(
        &state.policy.current().config().cleanup,
        repository.as_str(),
        previewed,
    )
    .into_iter()
    .map(|(floor, hit)| {
        Violation::new(
            "policy_text",
            "cleanup.retention-floor",
            format!(
                "the org policy keeps the {} newest images tagged `{}` in `{repository}`; this policy would \
                     expire {hit} of them: raise its counts or narrow its selections",
                floor.count, floor.tags
            ),
        )
    })
    .collect()
}

pub(super) fn at_risk_error(at_risk: &[pb::PreviewedImage]) -> ApiError {
    ApiError::FailedPrecondition {
        reason: "IMAGES_AT_RISK",
        violations: at_risk
            .iter()
            .take(50)
            .map(|image| Precondition {
                kind: if image.saved_by == pb::SavedBy::Pin as i32 {
                    "IMAGE_PINNED"
                } else {
                    "TAG_PROTECTED"
                }
                .into(),
                subject: image.digest.clone(),
                description: format!(
                    "rule {} would {} image {} ({}), which is {}; ECR's lifecycle does not know about pins or \
                     protection: change the policy, or set acknowledge_at_risk to put it anyway",
                    image.rule_priority,
                    if image.action == pb::CleanupAction::Expire as i32 { "expire" } else { "archive" },
                    image.digest,
                    if image.tags.is_empty() { "untagged".to_owned() } else { image.tags.join(", ") },
                    if image.holders.is_empty() {
                        format!("protected by `{}`", image.protected_by)
                    } else {
                        format!("pinned by {}", image.holders.join(", "))
                    }
                ),
            })
            .collect(),
    }
}

pub(super) async fn set_lifecycle_policy(
    state: &AppState,
    call: &mut Call,
    request: &pb::SetLifecyclePolicyRequest,
) -> Result<(pb::SetLifecyclePolicyResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
    violations.extend(check_request_id(&request.request_id));
    let policy = LifecyclePolicy::parse(&request.policy_text, "policy_text")
        .map_err(|v| violations.extend(v))
        .ok();
    let (Some((registry, repository)), Some(policy), true) = (located, policy, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    if repositories::get(state.store.pool(), &registry.reference, &repository)
        .await?
        .is_none()
    {
        return Err(repository_not_found(&registry.reference, &repository));
    }
    let evaluated = preview(state, &registry.reference, &repository, &policy).await?;
    let floors = retention_violations(state, &repository, &evaluated);
    if !floors.is_empty() {
        return Err(invalid(floors));
    }
    let at_risk: Vec<pb::PreviewedImage> = evaluated
        .verdicts
        .iter()
        .filter(|v| v.saved)
        .map(|v| previewed(&evaluated, v))
        .collect();
    drop(evaluated);
    if !at_risk.is_empty() && !request.acknowledge_at_risk {
        return Err(at_risk_error(&at_risk));
    }
    let answer = |replayed| pb::SetLifecyclePolicyResponse {
        policy: Some(pb::LifecyclePolicy {
            registry: registry.reference.alias.clone(),
            repository: repository.to_string(),
            policy_text: request.policy_text.clone(),
        }),
        at_risk: at_risk.clone(),
        replayed,
    };
    if request.validate_only {
        return Ok((
            answer(false),
            json!({"validateOnly": true, "atRisk": at_risk.len()}),
        ));
    }
    let response = answer(false);
    let text = request.policy_text.clone();
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| async move {
            registry
                .put_or_delete_lifecycle_policy(&attempt.log, &repository, Some(&text))
                .await?;
            let current = registry
                .fetch_repository(&attempt.log, &repository)
                .await?
                .ok_or_else(|| repository_not_found(&registry.reference, &repository))?;
            Ok(Done {
                elements: json!({"atRisk": response.at_risk.len()}),
                response,
                change: CacheChange::Upsert(registry.reference.clone(), current),
            })
        },
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"replayed": replayed, "atRisk": response.at_risk.len()});
    Ok((response, elements))
}

pub(super) async fn delete_lifecycle_policy(
    state: &AppState,
    call: &mut Call,
    request: &pb::DeleteLifecyclePolicyRequest,
) -> Result<(pb::DeleteLifecyclePolicyResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
    violations.extend(check_request_id(&request.request_id));
    let Some((registry, repository)) = located.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| async move {
            let existed = registry
                .get_lifecycle_policy(&attempt.log, &repository)
                .await?
                .is_some();
            if existed {
                registry
                    .put_or_delete_lifecycle_policy(&attempt.log, &repository, None)
                    .await?;
            }
            let current = registry
                .fetch_repository(&attempt.log, &repository)
                .await?
                .ok_or_else(|| repository_not_found(&registry.reference, &repository))?;
            Ok(Done {
                elements: json!({"deleted": existed}),
                response: pb::DeleteLifecyclePolicyResponse {
                    deleted: existed,
                    replayed: false,
                },
                change: CacheChange::Upsert(registry.reference.clone(), current),
            })
        },
    )
    .await?;
    response.replayed = replayed;
    Ok((response, json!({"replayed": replayed})))
}

/// Page position of PreviewCleanup: the offset into the evaluated list.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct PreviewPosition(usize);

pub(super) async fn preview_cleanup(
    state: &AppState,
    call: &mut Call,
    request: &pb::PreviewCleanupRequest,
) -> Result<(pb::PreviewCleanupResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let given = (!request.policy_text.trim().is_empty())
        .then(|| LifecyclePolicy::parse(&request.policy_text, "policy_text"))
        .transpose()
        .map_err(|v| violations.extend(v))
        .ok()
        .flatten();
    let (Some((registry, repository)), Some(limit), true) = (located, limit, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let cached = repositories::get(state.store.pool(), &registry.reference, &repository)
        .await?
        .ok_or_else(|| repository_not_found(&registry.reference, &repository))?;
    let (policy, text) = match given {
        Some(policy) => (policy, request.policy_text.clone()),
        None => {
            let text = cached
                .state
                .lifecycle_policy
                .clone()
                .ok_or_else(|| no_lifecycle_policy(&registry.reference, &repository))?;
            // The repository's policy was accepted by ECR; a parse failure is
            // reported against it, not the request.
            let policy = LifecyclePolicy::parse(&text, "repository.lifecycle_policy").map_err(invalid)?;
            (policy, text)
        }
    };
    let fingerprint = page_token::fingerprint(&(&registry.reference.alias, repository.as_str(), &text));
    let key = state.page_key().await?;
    let after: Option<PreviewPosition> = key.decode(&request.page_token, &fingerprint)?;
    let result = preview(state, &registry.reference, &repository, &policy).await?;
    let count = |action: RuleAction| {
        result
            .verdicts
            .iter()
            .filter(|v| !v.saved && v.action == action)
            .count() as i32
    };
    let (expire_count, transition_count) =
        (count(RuleAction::Expire), count(RuleAction::TransitionToArchive));
    let saved_count = result.verdicts.iter().filter(|v| v.saved).count() as i32;
    let total = result.verdicts.len();
    let start = after.map_or(0, |p| p.0).min(total);
    let end = (start + limit as usize).min(total);
    let next_page_token = if end < total {
        key.encode(&fingerprint, &PreviewPosition(end))
    } else {
        String::new()
    };
    let page: Vec<pb::PreviewedImage> = result.verdicts[start..end]
        .iter()
        .map(|v| previewed(&result, v))
        .collect();
    let evaluated = result.images.len() as i32;
    drop(result);
    let last = sync::last_synced_at(state.store.pool(), &registry.reference, repository.as_str()).await?;
    let response = pb::PreviewCleanupResponse {
        images: page,
        evaluated,
        expire_count,
        transition_count,
        saved_count,
        policy_text: text,
        synced_at: last.map(timestamp),
        next_page_token,
    };
    let elements = json!({"evaluated": response.evaluated, "expire": expire_count,
                          "transition": transition_count, "saved": saved_count});
    Ok((response, elements))
}
