//! `ecrgateway.v1.CleanupService` (so far: pins and DeleteImages): deploy
//! systems pin what runs, and nothing pinned or protected by the org policy
//! is deleted through the gateway.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use super::call::Call;
use super::convert::timestamp;
use super::error::{ApiError, Precondition};
use super::image::image_selector;
use super::mutation::{self, CacheChange, Done, check_request_id};
use super::page_token;
use super::{AppState, Shared};
use crate::domain::{Digest, ImageSelector, ImageTag, RegistryRef, RepositoryName, Violation};
use crate::ecr::{CallLog, DeleteOutcome, Registry};
use crate::pb;
use crate::pb::cleanup_service_server::CleanupService;
use crate::policy::protection;
use crate::store::pins::{self, PinFilter, PinRow};
use crate::store::{Store, image_reads};

/// Longest pin reason.
const MAX_REASON: usize = 2048;
/// Most tags and digests in one DeleteImages.
const MAX_DELETE: usize = 100;

/// The CleanupService implementation.
#[derive(Debug, Clone)]
pub struct CleanupApi {
    state: Shared,
}

impl CleanupApi {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl CleanupService for CleanupApi {
    async fn delete_images(
        &self,
        request: Request<pb::DeleteImagesRequest>,
    ) -> Result<Response<pb::DeleteImagesResponse>, Status> {
        let mut call = Call::start(&request, "DeleteImages", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository,
            "imageTags": request.tags, "imageDigests": request.digests, "requestId": request.request_id,
        }));
        let result = delete_images(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn pin_image(&self, request: Request<pb::PinImageRequest>) -> Result<Response<pb::Pin>, Status> {
        let mut call = Call::start(&request, "PinImage", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "imageDigest": request.digest,
            "imageTag": request.tag, "holder": request.holder, "reason": request.reason,
            "expireTime": request.expire_time.as_ref().map(|t| t.seconds),
        }));
        let result = pin_image(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn unpin_image(
        &self,
        request: Request<pb::UnpinImageRequest>,
    ) -> Result<Response<pb::UnpinImageResponse>, Status> {
        let mut call = Call::start(&request, "UnpinImage", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository,
            "imageDigest": request.digest, "holder": request.holder,
        }));
        let result = unpin_image(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn list_pins(
        &self,
        request: Request<pb::ListPinsRequest>,
    ) -> Result<Response<pb::ListPinsResponse>, Status> {
        let mut call = Call::start(&request, "ListPins", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "holder": request.holder,
            "includeExpired": request.include_expired, "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = list_pins(&self.state, &call, &request).await;
        call.finish(&self.state.audit, result).await
    }
}

fn invalid(violations: Vec<Violation>) -> ApiError {
    ApiError::InvalidArgument {
        reason: "INVALID_REQUEST",
        violations,
    }
}

/// A holder names who runs the image: 1-256 of `[A-Za-z0-9._:/@-]`.
fn check_holder(holder: &str) -> Option<Violation> {
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

fn pin_message(alias: &str, pin: &PinRow) -> pb::Pin {
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

fn pin_json(pin: &pb::Pin) -> Value {
    json!({"repositoryName": pin.repository, "imageDigest": pin.digest, "holder": pin.holder,
           "expireTime": pin.expire_time.as_ref().map(|t| t.seconds)})
}

/// The cached image a selector names; a miss reads ECR once (the image may be
/// newer than the last sync).
async fn find_image(
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

fn time_of(field: &str, value: Option<&prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Violation> {
    match value {
        None => Ok(None),
        Some(t) => u32::try_from(t.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .and_then(|n| DateTime::from_timestamp(t.seconds, n))
            .map(Some)
            .ok_or_else(|| Violation::new(field, "timestamp.range", "not a valid timestamp")),
    }
}

async fn pin_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::PinImageRequest,
) -> Result<(pb::Pin, Value), ApiError> {
    let creator = call.caller()?.identity.principal.clone();
    let now = Utc::now();
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let selector = image_selector(&request.tag, &request.digest)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
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

async fn unpin_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::UnpinImageRequest,
) -> Result<(pb::UnpinImageResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let digest = Digest::parse(&request.digest)
        .map_err(|v| violations.push(v))
        .ok();
    violations.extend(check_holder(&request.holder));
    let (Some((registry, repository)), Some(digest), true) = (located, digest, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
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
type PinPosition = (String, String, String, String, String);

async fn list_pins(
    state: &AppState,
    call: &Call,
    request: &pb::ListPinsRequest,
) -> Result<(pb::ListPinsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries: Vec<&Registry> = if request.registry.is_empty() {
        state.registries.all().collect()
    } else {
        state
            .registry(&request.registry)
            .map(|r| vec![r])
            .map_err(|v| violations.push(v))
            .unwrap_or_default()
    };
    let repository = (!request.repository.is_empty())
        .then(|| RepositoryName::parse(&request.repository))
        .transpose()
        .map_err(|v| violations.push(v))
        .ok()
        .flatten();
    if !request.holder.is_empty() {
        violations.extend(check_holder(&request.holder));
    }
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let Some(limit) = limit.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let filter = PinFilter {
        registries: registries
            .iter()
            .map(|r| (r.reference.account_id.clone(), r.reference.region.clone()))
            .collect(),
        repository: repository.map(|r| r.to_string()),
        holder: (!request.holder.is_empty()).then(|| request.holder.clone()),
        include_expired: request.include_expired,
    };
    let fingerprint = page_token::fingerprint(&(
        &filter.registries,
        &filter.repository,
        &filter.holder,
        filter.include_expired,
    ));
    let after: Option<PinPosition> = page_token::decode(&request.page_token, &fingerprint)?;
    let mut rows = pins::list(state.store.pool(), &filter, after.as_ref(), limit + 1).await?;
    let next_page_token = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|p| {
                page_token::encode(
                    &fingerprint,
                    &(
                        p.account_id.clone(),
                        p.region.clone(),
                        p.repository.clone(),
                        p.digest.clone(),
                        p.holder.clone(),
                    ),
                )
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let alias_of = |p: &PinRow| {
        registries
            .iter()
            .find(|r| r.reference.account_id == p.account_id && r.reference.region == p.region)
            .map(|r| r.reference.alias.clone())
            .unwrap_or_default()
    };
    let response = pb::ListPinsResponse {
        pins: rows.iter().map(|p| pin_message(&alias_of(p), p)).collect(),
        next_page_token,
    };
    let elements = json!({"count": response.pins.len()});
    Ok((response, elements))
}

fn violations_of(error: ApiError) -> Vec<Violation> {
    match error {
        ApiError::InvalidArgument { violations, .. } => violations,
        _ => Vec::new(),
    }
}

/// Refuses when any of `digests` is pinned: FAILED_PRECONDITION naming every pin.
pub async fn refuse_pinned(
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

/// What ECR holds for one requested tag or digest, read just before deciding.
struct Target {
    selector: ImageSelector,
    /// The image it names now, with all its tags; None when ECR has none.
    image: Option<(String, Vec<String>)>,
}

async fn delete_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::DeleteImagesRequest,
) -> Result<(pb::DeleteImagesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    violations.extend(check_request_id(&request.request_id));
    let mut selectors = Vec::new();
    for (i, tag) in request.tags.iter().enumerate() {
        match ImageTag::parse(tag) {
            Ok(tag) => selectors.push(ImageSelector::Tag(tag)),
            Err(v) => violations.push(Violation {
                field: format!("tags[{i}]"),
                ..v
            }),
        }
    }
    for (i, digest) in request.digests.iter().enumerate() {
        match Digest::parse(digest) {
            Ok(digest) => selectors.push(ImageSelector::Digest(digest)),
            Err(v) => violations.push(Violation {
                field: format!("digests[{i}]"),
                ..v
            }),
        }
    }
    let total = request.tags.len() + request.digests.len();
    if total == 0 {
        violations.push(Violation::new(
            "tags",
            "delete.empty",
            "give at least one tag or digest to delete",
        ));
    } else if total > MAX_DELETE {
        violations.push(Violation::new(
            "digests",
            "delete.too-many",
            format!("{total} tags and digests; at most {MAX_DELETE} per call"),
        ));
    }
    let Some((registry, repository)) = located.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    let store = state.store.clone();
    let cleanup = state.policy.config().cleanup.clone();
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| async move {
            // ECR's state now, not the cache's: the decision must hold for what ECR will delete.
            let mut targets = Vec::with_capacity(selectors.len());
            for selector in selectors {
                let image = registry
                    .describe_image(&attempt.log, &repository, &selector)
                    .await?
                    .map(|i| (i.digest.to_string(), i.tags.clone()));
                targets.push(Target { selector, image });
            }
            let doomed = doomed_images(&targets);
            refuse_protected(&cleanup, &registry.reference, &repository, &targets, &doomed)?;
            // Re-checked right before the delete: a pin taken meanwhile wins.
            let doomed_digests: Vec<String> = doomed.keys().cloned().collect();
            refuse_pinned(&store, &registry.reference, repository.as_str(), Some(&doomed_digests)).await?;
            let ids: Vec<ImageSelector> = targets.iter().map(|t| t.selector.clone()).collect();
            let outcomes = registry.batch_delete_images(&attempt.log, &repository, &ids).await?;
            let mut results = Vec::with_capacity(targets.len());
            let (mut deleted, mut untagged) = (BTreeSet::new(), Vec::new());
            for (target, outcome) in targets.iter().zip(outcomes) {
                let reference = match &target.selector {
                    ImageSelector::Tag(tag) => tag.to_string(),
                    ImageSelector::Digest(digest) => digest.to_string(),
                };
                let result = match outcome {
                    DeleteOutcome::Deleted(digest) => {
                        let digest = if digest.is_empty() {
                            target.image.as_ref().map(|i| i.0.clone()).unwrap_or_default()
                        } else {
                            digest
                        };
                        let whole = doomed.contains_key(&digest);
                        if whole {
                            deleted.insert(digest.clone());
                        } else if let ImageSelector::Tag(tag) = &target.selector {
                            untagged.push(tag.to_string());
                        }
                        pb::DeleteImageResult {
                            reference,
                            digest,
                            outcome: if whole { "DELETED" } else { "UNTAGGED" }.into(),
                            message: String::new(),
                        }
                    }
                    DeleteOutcome::Failed(code, message) => pb::DeleteImageResult {
                        reference,
                        digest: target.image.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
                        outcome: if code == "ImageNotFound" { "NOT_FOUND".into() } else { code },
                        message,
                    },
                };
                results.push(result);
            }
            let elements = json!({"results": results.iter().map(|r| json!({
                "reference": r.reference, "imageDigest": r.digest, "outcome": r.outcome})).collect::<Vec<_>>()});
            Ok(Done {
                response: pb::DeleteImagesResponse {
                    results,
                    replayed: false,
                },
                change: CacheChange::ImagesDeleted {
                    registry: registry.reference.clone(),
                    repository: repository.clone(),
                    digests: deleted.into_iter().collect(),
                    untagged,
                },
                elements,
            })
        },
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"replayed": replayed, "results": response.results.len()});
    Ok((response, elements))
}

/// The images the request deletes whole, with their tags: every digest
/// named, and every image whose tags are all named (ECR deletes an image
/// with its last tag).
fn doomed_images(targets: &[Target]) -> BTreeMap<String, Vec<String>> {
    let named_tags: BTreeSet<&str> = targets
        .iter()
        .filter_map(|t| match &t.selector {
            ImageSelector::Tag(tag) => Some(tag.as_str()),
            ImageSelector::Digest(_) => None,
        })
        .collect();
    targets
        .iter()
        .filter_map(|t| {
            let (digest, tags) = t.image.as_ref()?;
            let whole = matches!(t.selector, ImageSelector::Digest(_))
                || tags.iter().all(|tag| named_tags.contains(tag.as_str()));
            whole.then(|| (digest.clone(), tags.clone()))
        })
        .collect()
}

/// Refuses when the request removes a protected tag or deletes an image that carries one.
fn refuse_protected(
    cleanup: &protection::CleanupConfig,
    registry: &RegistryRef,
    repository: &RepositoryName,
    targets: &[Target],
    doomed: &BTreeMap<String, Vec<String>>,
) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    let named = targets.iter().filter_map(|t| match &t.selector {
        ImageSelector::Tag(tag) => Some(tag.to_string()),
        ImageSelector::Digest(_) => None,
    });
    let carried = doomed.values().flatten().cloned();
    for tag in named.chain(carried) {
        if let Some(pattern) = protection::protecting_pattern(cleanup, repository.as_str(), &tag)
            && seen.insert(tag.clone())
        {
            violations.push(Precondition {
                kind: "TAG_PROTECTED".into(),
                subject: format!("{}/{repository}:{tag}", registry.alias),
                description: format!(
                    "tag `{tag}` matches the org policy's protected pattern `{pattern}` (policy.cleanup): \
                     the gateway never deletes it"
                ),
            });
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::FailedPrecondition {
            reason: "TAG_PROTECTED",
            violations,
        })
    }
}
