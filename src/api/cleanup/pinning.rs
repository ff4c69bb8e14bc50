//! PinImage, UnpinImage and ListPins: deploy systems pin what runs, and nothing pinned is deleted through the gateway.

use super::*;

/// A holder names who runs the image: 1-256 of `[A-Za-z0-9._:/@-]`.
pub(super) fn check_holder(holder: &str) -> Option<Violation> {
    let valid = (1..=256).contains(&holder.len())
        && holder
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
    (!valid).then(|| {
        Violation::new(
            "holder",
            "pin.holder",
            "give who runs the image: 1-256 characters of [A-Za-z0-9._:/@-], e.g. deploy/prod/payments-api",
        )
    })
}

pub(super) fn pin_message(alias: &str, pin: &PinRow) -> pb::Pin {
    pb::Pin {
        registry: alias.to_owned(),
        repository: pin.repository.clone(),
        digest: pin.digest.clone(),
        holder: pin.holder.clone(),
        reason: pin.reason.clone(),
        created_by: pin.created_by.clone(),
        create_time: Some(timestamp(pin.created_at)),
        expire_time: pin.expires_at.map(timestamp),
        tags: pin.tags.clone(),
    }
}

pub(super) fn pin_json(pin: &pb::Pin) -> Value {
    json!({"repositoryName": pin.repository, "imageDigest": pin.digest, "holder": pin.holder,
           "expireTime": pin.expire_time.as_ref().map(|t| t.seconds)})
}

/// The cached image a selector names; a miss reads ECR once (the image may be
/// newer than the last sync).
pub(super) async fn find_image(
    state: &AppState,
    call: &mut Call,
    registry: &Registry,
    repository: &RepositoryName,
    selector: &ImageSelector,
) -> Result<image_reads::ImageRow, ApiError> {
    let pool = state.store.pool();
    let lookup = async || -> Result<Option<image_reads::ImageRow>, ApiError> {
        let digest = match selector {
            ImageSelector::Digest(digest) => Some(digest.to_string()),
            ImageSelector::Tag(tag) => {
                image_reads::resolve_tag(pool, &registry.reference, repository.as_str(), tag.as_str())
                    .await?
                    .map(|r| r.digest)
            }
        };
        Ok(match digest {
            Some(digest) => image_reads::get(pool, &registry.reference, repository.as_str(), &digest).await?,
            None => None,
        })
    };
    if let Some(row) = lookup().await? {
        return Ok(row);
    }
    let log = CallLog::default();
    let refreshed = state
        .syncer
        .refresh_image(registry, repository, selector, &log)
        .await;
    call.record.outcome.ecr_request_ids = log.ids();
    refreshed.map_err(|e| match e {
        crate::inventory::SyncError::Ecr(e) => ApiError::from(e),
        crate::inventory::SyncError::Store(e) => ApiError::from(e),
    })?;
    lookup().await?.ok_or_else(|| ApiError::NotFound {
        resource_type: "ecr.image",
        resource_name: format!("{}/{repository}", registry.reference.alias),
        description: format!(
            "ECR has no image {} in `{repository}` of registry `{}`",
            match selector {
                ImageSelector::Tag(tag) => format!(":{tag}"),
                ImageSelector::Digest(digest) => format!("@{digest}"),
            },
            registry.reference.alias
        ),
    })
}

pub(super) async fn pin_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::PinImageRequest,
) -> Result<(pb::Pin, Value), ApiError> {
    let creator = call.caller()?.identity.principal.clone();
    let now = Utc::now();
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
    let selector = image_selector(&request.tag, &request.digest).or_record(&mut violations);
    violations.extend(check_holder(&request.holder));
    if request.reason.chars().count() > MAX_REASON
        || request.reason.chars().any(|c| c.is_control() && c != '\n')
    {
        violations.push(Violation::new(
            "reason",
            "pin.reason",
            format!("at most {MAX_REASON} characters, no control characters"),
        ));
    }
    let expires_at = match time_of("expire_time", request.expire_time.as_ref()) {
        Ok(Some(t)) if t <= now => {
            violations.push(Violation::new(
                "expire_time",
                "pin.expiry-past",
                "the expiry is in the past; leave it unset to pin until UnpinImage, or give a future time",
            ));
            None
        }
        Ok(t) => t,
        Err(v) => {
            violations.push(v);
            None
        }
    };
    let (Some((registry, repository)), Some(selector), true) = (located, selector, violations.is_empty())
    else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let image = find_image(state, call, registry, &repository, &selector).await?;
    let pin = PinRow {
        account_id: registry.reference.account_id.clone(),
        region: registry.reference.region.clone(),
        repository: repository.to_string(),
        digest: image.digest.clone(),
        holder: request.holder.clone(),
        reason: request.reason.clone(),
        created_by: creator,
        created_at: now,
        expires_at,
        tags: image.tags.clone(),
    };
    let message = pin_message(&registry.reference.alias, &pin);
    let (response, _) = mutation::run(
        &state.store,
        call,
        "",
        request,
        state.mutation_lease,
        |_| async move {
            Ok(Done {
                elements: pin_json(&message),
                response: message,
                change: CacheChange::Pin(Box::new(pin)),
            })
        },
    )
    .await?;
    let elements = pin_json(&response);
    Ok((response, elements))
}

pub(super) async fn unpin_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::UnpinImageRequest,
) -> Result<(pb::UnpinImageResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
    let digest = Digest::parse(&request.digest).or_record(&mut violations);
    violations.extend(check_holder(&request.holder));
    let (Some((registry, repository)), Some(digest), true) = (located, digest, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let existing = pins::active(
        state.store.pool(),
        &registry.reference,
        repository.as_str(),
        Some(&[digest.to_string()]),
    )
    .await?;
    let removed = existing.iter().any(|p| p.holder == request.holder);
    let change = CacheChange::Unpin {
        registry: registry.reference.clone(),
        repository: repository.to_string(),
        digest: digest.to_string(),
        holder: request.holder.clone(),
    };
    let (response, _) = mutation::run(
        &state.store,
        call,
        "",
        request,
        state.mutation_lease,
        |_| async move {
            Ok(Done {
                elements: json!({"removed": removed}),
                response: pb::UnpinImageResponse { removed },
                change,
            })
        },
    )
    .await?;
    Ok((response, json!({"removed": removed})))
}

/// Page position of ListPins: the last pin's key.
pub(super) type PinPosition = (String, String, String, String, String);

pub(super) async fn list_pins(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListPinsRequest,
) -> Result<(pb::ListPinsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations)
        .unwrap_or_default();
    let repository = repository_filter(&request.repository)
        .or_record(&mut violations)
        .flatten();
    if !request.holder.is_empty() {
        violations.extend(check_holder(&request.holder));
    }
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let Some(limit) = limit.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let scope = call.authorize_list(&state.authz, registries.iter().map(|r| &r.reference))?;
    let keys: Vec<(String, String)> = registries
        .iter()
        .map(|r| (r.reference.account_id.clone(), r.reference.region.clone()))
        .collect();
    let filter = PinFilter {
        visibility: crate::api::visibility(&scope, registries.iter().map(|r| &r.reference)),
        repository: repository.map(|r| r.to_string()),
        holder: (!request.holder.is_empty()).then(|| request.holder.clone()),
        include_expired: request.include_expired,
    };
    let fingerprint =
        page_token::fingerprint(&(&keys, &filter.repository, &filter.holder, filter.include_expired));
    let key = state.page_key().await?;
    let after: Option<PinPosition> = key.decode(&request.page_token, &fingerprint)?;
    let mut rows = pins::list(state.store.pool(), &filter, after.as_ref(), limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |p| {
        key.encode(
            &fingerprint,
            &(
                p.account_id.clone(),
                p.region.clone(),
                p.repository.clone(),
                p.digest.clone(),
                p.holder.clone(),
            ),
        )
    });
    let alias_of = |p: &PinRow| {
        state
            .registries
            .alias_of(&p.account_id, &p.region)
            .unwrap_or_default()
            .to_owned()
    };
    let response = pb::ListPinsResponse {
        pins: rows.iter().map(|p| pin_message(&alias_of(p), p)).collect(),
        next_page_token,
    };
    let elements = json!({"count": response.pins.len()});
    Ok((response, elements))
}

/// Refuses when any of `digests` is pinned: FAILED_PRECONDITION naming every pin.
pub(crate) async fn refuse_pinned(
    store: &Store,
    registry: &RegistryRef,
    repository: &str,
    digests: Option<&[String]>,
) -> Result<(), ApiError> {
    let pins = pins::active(store.pool(), registry, repository, digests).await?;
    if pins.is_empty() {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition {
        reason: "IMAGE_PINNED",
        violations: pins
            .iter()
            .map(|pin| Precondition {
                kind: "IMAGE_PINNED".into(),
                subject: format!("{}/{}@{}", registry.alias, pin.repository, pin.digest),
                description: format!(
                    "image {}@{} is pinned by `{}`{}; it is in use: ask its holder to UnpinImage first",
                    pin.repository,
                    pin.digest,
                    pin.holder,
                    if pin.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", pin.reason)
                    }
                ),
            })
            .collect(),
    })
}
