//! Vulnerability exceptions: create, list, revoke, and who may see them.

use super::*;

pub(super) fn exception_message(
    state: &AppState,
    row: &ExceptionRow,
    now: DateTime<Utc>,
) -> pb::VulnerabilityException {
    let alias = match (&row.account_id, &row.region) {
        (Some(account), Some(region)) => state
            .registries
            .alias_of(account, region)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{account}/{region}")),
        _ => String::new(),
    };
    pb::VulnerabilityException {
        id: row.id.to_string(),
        cve_id: row.cve_id.clone(),
        scope: match row.scope.as_str() {
            "org" => pb::ExceptionScope::Org,
            "namespace" => pb::ExceptionScope::Namespace,
            "repository" => pb::ExceptionScope::Repository,
            _ => pb::ExceptionScope::Image,
        } as i32,
        registry: alias,
        namespace: row.namespace.clone().unwrap_or_default(),
        repository: row.repository.clone().unwrap_or_default(),
        digest: row.digest.clone().unwrap_or_default(),
        justification: row.justification.clone(),
        created_by: row.created_by.clone(),
        create_time: Some(timestamp(row.created_at)),
        expire_time: Some(timestamp(row.expires_at)),
        revoke_time: row.revoked_at.map(timestamp),
        revoked_by: row.revoked_by.clone().unwrap_or_default(),
        revoke_reason: row.revoke_reason.clone().unwrap_or_default(),
        active: row.revoked_at.is_none() && row.expires_at > now,
    }
}

pub(super) fn exception_json(message: &pb::VulnerabilityException) -> Value {
    json!({
        "id": message.id, "cveId": message.cve_id, "scope": message.scope, "registry": message.registry,
        "namespace": message.namespace, "repositoryName": message.repository, "imageDigest": message.digest,
        "expireTime": message.expire_time.as_ref().map(|t| t.seconds), "active": message.active,
    })
}

/// Free text a person writes: required, at most [`MAX_TEXT`] characters, no control characters.
pub(super) fn check_text(field: &str, text: &str, rule: &'static str) -> Option<Violation> {
    if text.trim().is_empty() {
        Some(Violation::new(
            field,
            rule,
            "required: say why, for the people who review it",
        ))
    } else if text.chars().count() > MAX_TEXT {
        Some(Violation::new(
            field,
            rule,
            format!("at most {MAX_TEXT} characters"),
        ))
    } else if text.chars().any(|c| c.is_control() && c != '\n') {
        Some(Violation::new(
            field,
            rule,
            "control characters are not allowed (newlines are)",
        ))
    } else {
        None
    }
}

pub(super) async fn create_exception(
    state: &AppState,
    call: &mut Call,
    request: &pb::CreateVulnerabilityExceptionRequest,
) -> Result<(pb::VulnerabilityException, Value), ApiError> {
    let creator = call.caller()?.identity.principal.clone();
    let now = Utc::now();
    let mut violations = Vec::new();
    violations.extend(check_request_id(&request.request_id));
    let cve_id = gate::parse_vulnerability_id("cve_id", &request.cve_id).or_record(&mut violations);
    violations.extend(check_text(
        "justification",
        &request.justification,
        "exception.justification",
    ));
    let max_days = state.policy.current().config().deploy.max_exception_days;
    let expires_at = time_of("expire_time", request.expire_time.as_ref())
        .and_then(|t| gate::check_expiry("expire_time", t, max_days, now))
        .or_record(&mut violations);
    let scope = pb::ExceptionScope::try_from(request.scope).unwrap_or(pb::ExceptionScope::Unspecified);
    let unexpected = |field: &str, value: &str, violations: &mut Vec<Violation>| {
        if !value.is_empty() {
            violations.push(Violation::new(
                field,
                "exception.scope-fields",
                format!("`{field}` does not belong to this scope; leave it empty"),
            ));
        }
    };
    let mut target = (None, None, None, None); // (registry, namespace, repository, digest)
    match scope {
        pb::ExceptionScope::Unspecified => violations.push(Violation::new(
            "scope",
            "exception.scope",
            "required: EXCEPTION_SCOPE_ORG, _NAMESPACE, _REPOSITORY or _IMAGE",
        )),
        pb::ExceptionScope::Org => {
            unexpected("registry", &request.registry, &mut violations);
            unexpected("namespace", &request.namespace, &mut violations);
            unexpected("repository", &request.repository, &mut violations);
            unexpected("digest", &request.digest, &mut violations);
        }
        pb::ExceptionScope::Namespace => {
            target.0 = state.registry(&request.registry).or_record(&mut violations);
            match RepositoryName::parse(&format!("{}/x", request.namespace)) {
                Ok(_) if !request.namespace.is_empty() && !request.namespace.contains('/') => {
                    target.1 = Some(request.namespace.clone())
                }
                _ => violations.push(Violation::new(
                    "namespace",
                    "exception.namespace",
                    "give a namespace: the first path segment of repository names, e.g. `payments`",
                )),
            }
            unexpected("repository", &request.repository, &mut violations);
            unexpected("digest", &request.digest, &mut violations);
        }
        pb::ExceptionScope::Repository | pb::ExceptionScope::Image => {
            target.0 = state.registry(&request.registry).or_record(&mut violations);
            unexpected("namespace", &request.namespace, &mut violations);
            target.2 = RepositoryName::parse(&request.repository).or_record(&mut violations);
            if scope == pb::ExceptionScope::Image {
                target.3 = Digest::parse(&request.digest).or_record(&mut violations);
            } else {
                unexpected("digest", &request.digest, &mut violations);
            }
        }
    }
    let (Some(cve_id), Some(expires_at), true) = (cve_id, expires_at, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let (registry, namespace, repository, digest) = target;
    if let (Some(registry), Some(repository)) = (registry, &repository) {
        call.set_repository(&registry.reference, registry.reference.repository_arn(repository));
    } else if let Some(registry) = registry {
        call.set_registry(&registry.reference);
    }
    authorize_exception(
        state,
        call,
        registry.map(|r| &r.reference),
        namespace.as_deref(),
        repository.as_ref().map(|r| r.as_str()),
    )
    .await?;
    let row = ExceptionRow {
        id: Uuid::now_v7(),
        cve_id,
        scope: match scope {
            pb::ExceptionScope::Org => "org",
            pb::ExceptionScope::Namespace => "namespace",
            pb::ExceptionScope::Repository => "repository",
            _ => "image",
        }
        .to_owned(),
        account_id: registry.map(|r| r.reference.account_id.clone()),
        region: registry.map(|r| r.reference.region.clone()),
        namespace,
        repository: repository.map(|r| r.to_string()),
        digest: digest.map(|d| d.to_string()),
        justification: request.justification.trim().to_owned(),
        created_by: creator,
        created_at: now,
        expires_at,
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    };
    let message = exception_message(state, &row, now);
    let (response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |_| async move {
            Ok(Done {
                elements: exception_json(&message),
                response: message,
                change: CacheChange::InsertException(Box::new(row)),
            })
        },
    )
    .await?;
    let elements = json!({"replayed": replayed, "exception": exception_json(&response)});
    Ok((response, elements))
}

/// Page position of ListVulnerabilityExceptions.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ExceptionPosition(DateTime<Utc>, Uuid);

pub(super) async fn list_exceptions(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListVulnerabilityExceptionsRequest,
) -> Result<(pb::ListVulnerabilityExceptionsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let cve_id = (!request.cve_id.is_empty())
        .then(|| gate::parse_vulnerability_id("cve_id", &request.cve_id))
        .transpose()
        .or_record(&mut violations)
        .flatten();
    let registry = (!request.registry.is_empty())
        .then(|| state.registry(&request.registry))
        .transpose()
        .or_record(&mut violations)
        .flatten();
    let repository = repository_filter(&request.repository)
        .or_record(&mut violations)
        .flatten();
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let Some(limit) = limit.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let scope = call.authorize_list(&state.authz, state.registries.all().map(|r| &r.reference))?;
    let filter = ExceptionFilter {
        cve_id,
        registry: registry.map(|r| (r.reference.account_id.clone(), r.reference.region.clone())),
        repository: repository.map(|r| r.to_string()),
        include_inactive: request.include_inactive,
        visibility: crate::api::visibility(&scope, state.registries.all().map(|r| &r.reference)),
    };
    let fingerprint = page_token::fingerprint(&(
        &filter.cve_id,
        &filter.registry,
        &filter.repository,
        filter.include_inactive,
    ));
    let key = state.page_key().await?;
    let after: Option<ExceptionPosition> = key.decode(&request.page_token, &fingerprint)?;
    let now = Utc::now();
    let mut rows = scans::list_exceptions(
        state.store.pool(),
        &filter,
        now,
        after.map(|p| (p.0, p.1)),
        limit + 1,
    )
    .await?;
    let next_page_token = next_token(&mut rows, limit, |r| {
        key.encode(&fingerprint, &ExceptionPosition(r.created_at, r.id))
    });
    let response = pb::ListVulnerabilityExceptionsResponse {
        exceptions: rows.iter().map(|r| exception_message(state, r, now)).collect(),
        next_page_token,
    };
    let elements = json!({"count": response.exceptions.len()});
    Ok((response, elements))
}

pub(super) async fn revoke_exception(
    state: &AppState,
    call: &mut Call,
    request: &pb::RevokeVulnerabilityExceptionRequest,
) -> Result<(pb::VulnerabilityException, Value), ApiError> {
    let revoker = call.caller()?.identity.principal.clone();
    let mut violations = Vec::new();
    let id = Uuid::parse_str(&request.id)
        .map_err(|_| {
            violations.push(Violation::new(
                "id",
                "exception.id",
                "give the exception's id (a UUID, as CreateVulnerabilityException returned it)",
            ))
        })
        .ok();
    violations.extend(check_text("reason", &request.reason, "exception.revoke-reason"));
    let Some(id) = id.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let existing = scans::get_exception(state.store.pool(), id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            resource_type: "ecr-gateway.vulnerability-exception",
            resource_name: id.to_string(),
            description: format!(
                "no vulnerability exception {id}; ListVulnerabilityExceptions with include_inactive shows them all"
            ),
        })?;
    let registry = match (&existing.account_id, &existing.region) {
        (Some(account), Some(region)) => state
            .registries
            .all()
            .find(|r| &r.reference.account_id == account && &r.reference.region == region)
            .map(|r| r.reference.clone()),
        _ => None,
    };
    match authorize_exception(
        state,
        call,
        registry.as_ref(),
        existing.namespace.as_deref(),
        existing.repository.as_deref(),
    )
    .await
    {
        // To a caller who may not even list it, the denial names it by its id
        // only (the usual one names its repository or namespace).
        Err(ApiError::PermissionDenied { .. }) if !exception_readable(state, call, &existing)? => {
            return Err(call.denied_by_id(&format!("vulnerability exception `{id}`")));
        }
        other => other?,
    }
    let now = Utc::now();
    let mut revoked = existing.clone();
    let change = if existing.revoked_at.is_some() {
        // Already revoked: answer with it as it is.
        CacheChange::Nothing
    } else {
        revoked.revoked_at = Some(now);
        revoked.revoked_by = Some(revoker.clone());
        revoked.revoke_reason = Some(request.reason.trim().to_owned());
        CacheChange::RevokeException {
            id,
            by: revoker,
            reason: request.reason.trim().to_owned(),
            at: now,
        }
    };
    let message = exception_message(state, &revoked, now);
    let (response, _) = mutation::run(
        &state.store,
        call,
        "",
        request,
        state.mutation_lease,
        |_| async move {
            Ok(Done {
                elements: exception_json(&message),
                response: message,
                change,
            })
        },
    )
    .await?;
    let elements = json!({"exception": exception_json(&response)});
    Ok((response, elements))
}

/// Authorizes a call on a vulnerability exception's scope: its repository,
/// its namespace, or (org-wide) every registry.
pub(super) async fn authorize_exception(
    state: &AppState,
    call: &mut Call,
    registry: Option<&crate::domain::RegistryRef>,
    namespace: Option<&str>,
    repository: Option<&str>,
) -> Result<(), ApiError> {
    match (registry, namespace, repository) {
        (Some(registry), _, Some(repository)) => state.authorize_repository(call, registry, repository).await,
        (Some(registry), Some(namespace), None) => call.authorize(
            &state.authz,
            &Resource::Namespace {
                registry: registry.clone(),
                namespace: namespace.to_owned(),
            },
        ),
        // An org-wide exception applies in every registry: each must allow it.
        _ => {
            for registry in state.registries.all() {
                call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
            }
            Ok(())
        }
    }
}

/// Whether the caller may see `row` where ListVulnerabilityExceptions lists
/// it: org-wide exceptions everyone (they apply to everyone), the others
/// where the caller may read their repository, namespace or registry.
pub(super) fn exception_readable(
    state: &AppState,
    call: &Call,
    row: &ExceptionRow,
) -> Result<bool, ApiError> {
    let (Some(account), Some(region)) = (&row.account_id, &row.region) else {
        return Ok(true);
    };
    let Some(registry) = state.registries.at(account, region) else {
        return Ok(false);
    };
    let identity = &call.caller()?.identity;
    let scope = state
        .authz
        .scope(identity, "ListVulnerabilityExceptions", [&registry.reference]);
    let alias = registry.reference.alias.as_str();
    Ok(match (&row.repository, &row.namespace) {
        (Some(repository), _) => scope.allows(alias, repository),
        (None, Some(namespace)) => scope.allows(alias, &format!("{namespace}/")),
        (None, None) => scope.allows_all(alias),
    })
}
