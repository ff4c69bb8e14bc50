//! `ecrgateway.v1.CleanupService`: deploy systems pin what runs, and nothing
//! pinned or protected by the org policy is deleted through the gateway.
//! Pins, DeleteImages, lifecycle policies and previews are here; cleanup
//! runs are in [`super::cleanup_runs`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use super::call::Call;
use super::cleanup_runs;
use super::convert::{time_of, timestamp};
use super::error::{ApiError, Precondition, invalid, violations_of};
use super::image::image_selector;
use super::mutation::{self, CacheChange, Done, check_request_id};
use super::page_token::{self, next_token};
use super::{AppState, Shared, repository_filter};
use crate::cleanup::plan::{self, Floors, Preview, Verdict};
use crate::domain::{Digest, ImageSelector, ImageTag, RegistryRef, RepositoryName, Violation};
use crate::ecr::{CallLog, DeleteOutcome, Registry};
use crate::pb;
use crate::pb::cleanup_service_server::CleanupService;
use crate::policy::lifecycle_model::{LifecyclePolicy, RuleAction};
use crate::policy::protection;
use crate::store::pins::{self, PinFilter, PinRow};
use crate::store::{Store, image_reads, repositories, sync};

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
        let result = list_pins(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn get_lifecycle_policy(
        &self,
        request: Request<pb::GetLifecyclePolicyRequest>,
    ) -> Result<Response<pb::LifecyclePolicy>, Status> {
        let mut call = Call::start(&request, "GetLifecyclePolicy", true);
        let request = request.into_inner();
        call.set_parameters(json!({"registry": request.registry, "repositoryName": request.repository}));
        let result = get_lifecycle_policy(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn set_lifecycle_policy(
        &self,
        request: Request<pb::SetLifecyclePolicyRequest>,
    ) -> Result<Response<pb::SetLifecyclePolicyResponse>, Status> {
        let mut call = Call::start(&request, "SetLifecyclePolicy", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository,
            "lifecyclePolicyText": request.policy_text, "acknowledgeAtRisk": request.acknowledge_at_risk,
            "requestId": request.request_id, "validateOnly": request.validate_only,
        }));
        let result = set_lifecycle_policy(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn delete_lifecycle_policy(
        &self,
        request: Request<pb::DeleteLifecyclePolicyRequest>,
    ) -> Result<Response<pb::DeleteLifecyclePolicyResponse>, Status> {
        let mut call = Call::start(&request, "DeleteLifecyclePolicy", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "requestId": request.request_id,
        }));
        let result = delete_lifecycle_policy(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn preview_cleanup(
        &self,
        request: Request<pb::PreviewCleanupRequest>,
    ) -> Result<Response<pb::PreviewCleanupResponse>, Status> {
        let mut call = Call::start(&request, "PreviewCleanup", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository,
            "lifecyclePolicyText": request.policy_text, "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = preview_cleanup(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn run_cleanup(
        &self,
        request: Request<pb::RunCleanupRequest>,
    ) -> Result<Response<pb::CleanupRun>, Status> {
        let mut call = Call::start(&request, "RunCleanup", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository,
            "repositoryPrefix": request.repository_prefix, "lifecyclePolicyText": request.policy_text,
            "dryRun": request.dry_run, "requestId": request.request_id,
        }));
        let result = cleanup_runs::run_cleanup(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn get_cleanup_run(
        &self,
        request: Request<pb::GetCleanupRunRequest>,
    ) -> Result<Response<pb::GetCleanupRunResponse>, Status> {
        let mut call = Call::start(&request, "GetCleanupRun", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "cleanupRunId": request.id, "outcome": request.outcome,
            "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = cleanup_runs::get_cleanup_run(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn list_cleanup_runs(
        &self,
        request: Request<pb::ListCleanupRunsRequest>,
    ) -> Result<Response<pb::ListCleanupRunsResponse>, Status> {
        let mut call = Call::start(&request, "ListCleanupRuns", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "state": request.state,
            "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = cleanup_runs::list_cleanup_runs(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn cancel_cleanup_run(
        &self,
        request: Request<pb::CancelCleanupRunRequest>,
    ) -> Result<Response<pb::CleanupRun>, Status> {
        let mut call = Call::start(&request, "CancelCleanupRun", false);
        let request = request.into_inner();
        call.set_parameters(json!({"cleanupRunId": request.id}));
        let result = cleanup_runs::cancel_cleanup_run(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
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
type PinPosition = (String, String, String, String, String);

async fn list_pins(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListPinsRequest,
) -> Result<(pb::ListPinsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .map_err(|v| violations.push(v))
        .unwrap_or_default();
    let repository = repository_filter(&request.repository)
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
    let scope = call.authorize_list(&state.authz, registries.iter().map(|r| &r.reference))?;
    let keys: Vec<(String, String)> = registries
        .iter()
        .map(|r| (r.reference.account_id.clone(), r.reference.region.clone()))
        .collect();
    let filter = PinFilter {
        visibility: super::visibility(&scope, registries.iter().map(|r| &r.reference)),
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
    violations.extend(duplicates("tags", &request.tags));
    violations.extend(duplicates("digests", &request.digests));
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
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
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

/// A violation for each entry of `list` that repeats an earlier one (ECR's
/// BatchDeleteImage takes each image id once).
fn duplicates(list: &str, entries: &[String]) -> Vec<Violation> {
    let mut seen = BTreeSet::new();
    entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| !seen.insert(entry.as_str()))
        .map(|(i, entry)| {
            Violation::new(
                format!("{list}[{i}]"),
                "delete.duplicate",
                format!("{entry:?} is named twice; name each tag and digest once"),
            )
        })
        .collect()
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

/// FAILED_PRECONDITION: the repository has no lifecycle policy to apply.
pub(super) fn no_lifecycle_policy(registry: &RegistryRef, repository: &RepositoryName) -> ApiError {
    ApiError::FailedPrecondition {
        reason: "NO_LIFECYCLE_POLICY",
        violations: vec![Precondition {
            kind: "NO_LIFECYCLE_POLICY".into(),
            subject: format!("{}/{repository}", registry.alias),
            description: format!("`{repository}` has no lifecycle policy; give policy_text to use one"),
        }],
    }
}

pub(super) fn repository_not_found(registry: &RegistryRef, repository: &RepositoryName) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.repository",
        resource_name: format!("{}/{repository}", registry.alias),
        description: format!("registry `{}` has no repository `{repository}`", registry.alias),
    }
}

async fn get_lifecycle_policy(
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
fn previewed(preview: &Preview, verdict: &Verdict) -> pb::PreviewedImage {
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
pub(super) fn action_message(action: RuleAction) -> pb::CleanupAction {
    match action {
        RuleAction::Expire => pb::CleanupAction::Expire,
        RuleAction::TransitionToArchive => pb::CleanupAction::Transition,
    }
}

/// Evaluates `policy` over the repository's cached images now (floors are checked separately).
async fn preview(
    state: &AppState,
    registry: &RegistryRef,
    repository: &RepositoryName,
    policy: &LifecyclePolicy,
) -> Result<Preview, ApiError> {
    let cleanup = &state.policy.config().cleanup;
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
pub(super) fn retention_violations(
    state: &AppState,
    repository: &RepositoryName,
    previewed: &Preview,
) -> Vec<Violation> {
    plan::floor_breaches(&state.policy.config().cleanup, repository.as_str(), previewed)
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

fn at_risk_error(at_risk: &[pb::PreviewedImage]) -> ApiError {
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

async fn set_lifecycle_policy(
    state: &AppState,
    call: &mut Call,
    request: &pb::SetLifecyclePolicyRequest,
) -> Result<(pb::SetLifecyclePolicyResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
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

async fn delete_lifecycle_policy(
    state: &AppState,
    call: &mut Call,
    request: &pb::DeleteLifecyclePolicyRequest,
) -> Result<(pb::DeleteLifecyclePolicyResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
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
struct PreviewPosition(usize);

async fn preview_cleanup(
    state: &AppState,
    call: &mut Call,
    request: &pb::PreviewCleanupRequest,
) -> Result<(pb::PreviewCleanupResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
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
