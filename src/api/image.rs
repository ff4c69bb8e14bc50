//! `ecrgateway.v1.ImageService`: reads from the inventory in Postgres; only
//! `CONSISTENCY_STRONG` and RefreshInventory call ECR.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::call::Call;
use super::convert::{time_of, timestamp};
use super::error::{ApiError, invalid, violations_of};
use super::page_token::{self, next_token};
use super::{AppState, Shared};
use crate::auth::authz::Resource;
use crate::domain::{
    Digest, ImageRef, ImageSelector, ImageTag, RegistryRef, RepositoryName, Violation, pinned_uri,
};
use crate::ecr::{CallLog, Registry};
use crate::inventory::{SyncOutcome, Trigger};
use crate::pb;
use crate::pb::image_service_server::ImageService;
use crate::store::cache::RepoKey;
use crate::store::image_reads::{
    self, ImageFilter, ImageRow, ListOrder, ListPosition, Resolution, ResolvedTag, SearchQuery,
};
use crate::store::sync::{self, SyncRun};

/// The ImageService implementation.
#[derive(Debug, Clone)]
pub struct ImageApi {
    state: Shared,
}

impl ImageApi {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let mut call = Call::start(&request, "ListImages", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "tagStatus": request.tag_status,
            "tagGlob": request.tag_glob, "status": request.status, "mediaType": request.media_type,
            "orderBy": request.order_by, "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = list_images(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn get_image(&self, request: Request<pb::GetImageRequest>) -> Result<Response<pb::Image>, Status> {
        let mut call = Call::start(&request, "GetImage", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "tag": request.tag,
            "digest": request.digest, "consistency": request.consistency,
        }));
        let result = get_image(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn resolve_image(
        &self,
        request: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolveImageResponse>, Status> {
        let mut call = Call::start(&request, "ResolveImage", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "reference": request.reference, "consistency": request.consistency,
        }));
        let result = resolve_image(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn search_images(
        &self,
        request: Request<pb::SearchImagesRequest>,
    ) -> Result<Response<pb::SearchImagesResponse>, Status> {
        let mut call = Call::start(&request, "SearchImages", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "digest": request.digest, "tagGlob": request.tag_glob,
            "repositoryPrefix": request.repository_prefix, "pageSize": request.page_size,
        }));
        let result = search_images(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn refresh_inventory(
        &self,
        request: Request<pb::RefreshInventoryRequest>,
    ) -> Result<Response<pb::RefreshInventoryResponse>, Status> {
        let mut call = Call::start(&request, "RefreshInventory", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "digest": request.digest,
        }));
        let result = refresh_inventory(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn get_sync_status(
        &self,
        request: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::GetSyncStatusResponse>, Status> {
        let mut call = Call::start(&request, "GetSyncStatus", true);
        let request = request.into_inner();
        call.set_parameters(json!({"registry": request.registry, "repositoryName": request.repository}));
        let result = get_sync_status(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn promote_image(
        &self,
        request: Request<pb::PromoteImageRequest>,
    ) -> Result<Response<pb::PromoteImageResponse>, Status> {
        let mut call = Call::start(&request, "PromoteImage", false);
        let request = request.into_inner();
        call.record.read_only = request.validate_only;
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "imageTag": request.tag,
            "imageDigest": request.digest, "targetRepositoryName": request.target_repository,
            "targetImageTag": request.target_tag, "environment": request.environment,
            "requestId": request.request_id, "validateOnly": request.validate_only,
        }));
        let result = super::promote::promote_image(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }
}

fn image_not_found(registry: &RegistryRef, repository: &RepositoryName, what: &str) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.image",
        resource_name: format!("{}/{}{}", registry.alias, repository, what),
        description: format!(
            "no image {what} in `{repository}` of registry `{}` as of the last sync; \
             if it was pushed just now, ask again with consistency CONSISTENCY_STRONG or call RefreshInventory",
            registry.alias
        ),
    }
}

fn strong(consistency: i32) -> Result<bool, ApiError> {
    match pb::Consistency::try_from(consistency) {
        Ok(c) => Ok(c == pb::Consistency::Strong),
        Err(_) => Err(ApiError::invalid(
            "consistency",
            "enum.unknown-value",
            "use CONSISTENCY_CACHED or CONSISTENCY_STRONG",
        )),
    }
}

async fn resolve_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::ResolveImageRequest,
) -> Result<(pb::ResolveImageResponse, Value), ApiError> {
    call.caller()?;
    let (registry, reference) = decode_reference(state, &request.registry, &request.reference)?;
    let strong = strong(request.consistency)?;
    let repository = &reference.repository;
    call.set_repository(&registry.reference, registry.reference.repository_arn(repository));
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    if strong {
        refresh(state, call, registry, repository, &reference.selector).await?;
    }
    let tag = match &reference.selector {
        ImageSelector::Tag(tag) => tag.to_string(),
        ImageSelector::Digest(_) => String::new(),
    };
    let mut resolution = cached_resolution(
        state,
        &registry.reference,
        repository,
        &reference.selector,
        strong,
    )
    .await?;
    if resolution.is_none() && read_through_unknown(state, call, registry, repository).await? {
        resolution =
            cached_resolution(state, &registry.reference, repository, &reference.selector, true).await?;
    }
    let Resolution {
        digest,
        synced_at,
        tag_immutable: immutable,
    } = resolution.ok_or_else(|| {
        image_not_found(
            &registry.reference,
            repository,
            &selector_suffix(&reference.selector),
        )
    })?;
    let pinned = Digest::parse(&digest)
        .map(|d| {
            pinned_uri(
                &registry.reference.account_id,
                &registry.reference.region,
                repository,
                &d,
            )
        })
        .map_err(|e| ApiError::internal(&e))?;
    let elements = json!({"digest": digest, "pinnedUri": pinned});
    Ok((
        pb::ResolveImageResponse {
            registry: registry.reference.alias.clone(),
            repository: repository.to_string(),
            tag,
            digest,
            pinned_uri: pinned,
            tag_immutable: immutable,
            freshness: Some(pb::Freshness {
                synced_at: synced_at.map(timestamp),
                read_through: strong,
            }),
        },
        elements,
    ))
}

/// The image a request names by `tag` or `digest` (exactly one).
pub(super) fn image_selector(tag: &str, digest: &str) -> Result<ImageSelector, ApiError> {
    match (tag.is_empty(), digest.is_empty()) {
        (false, true) => Ok(ImageSelector::Tag(
            ImageTag::parse(tag).map_err(|v| invalid(vec![v]))?,
        )),
        (true, false) => Ok(ImageSelector::Digest(
            Digest::parse(digest).map_err(|v| invalid(vec![v]))?,
        )),
        _ => Err(ApiError::invalid(
            "tag",
            "image.tag-or-digest",
            "give exactly one of `tag` and `digest`",
        )),
    }
}

pub(super) fn selector_suffix(selector: &ImageSelector) -> String {
    match selector {
        ImageSelector::Tag(tag) => format!(":{tag}"),
        ImageSelector::Digest(digest) => format!("@{digest}"),
    }
}

/// ResolveImage's answer from the in-process cache, else from Postgres (then
/// cached). A strong read has just refreshed the image and reads Postgres.
async fn cached_resolution(
    state: &AppState,
    registry: &RegistryRef,
    repository: &RepositoryName,
    selector: &ImageSelector,
    strong: bool,
) -> Result<Option<Resolution>, ApiError> {
    let cache = state.store.resolutions();
    let key = RepoKey::new(registry, repository.as_str());
    let suffix = selector_suffix(selector);
    if !strong && let Some(hit) = cache.get(&key, suffix.as_str()) {
        return Ok(hit);
    }
    let ticket = state.store.invalidations().ticket();
    let pool = state.store.pool();
    let resolution = match selector {
        ImageSelector::Tag(tag) => {
            image_reads::resolve_tag(pool, registry, repository.as_str(), tag.as_str())
                .await?
                .map(|resolved| Resolution {
                    tag_immutable: resolved_tag_is_immutable(&resolved, tag.as_str()),
                    synced_at: newest(resolved.last_synced_at, Some(resolved.row_synced_at)),
                    digest: resolved.digest,
                })
        }
        ImageSelector::Digest(digest) => {
            match image_reads::get(pool, registry, repository.as_str(), digest.as_str()).await? {
                Some(row) => {
                    let last = sync::last_synced_at(pool, registry, repository.as_str()).await?;
                    Some(Resolution {
                        digest: row.digest,
                        synced_at: newest(last, Some(row.synced_at)),
                        tag_immutable: false,
                    })
                }
                None => None,
            }
        }
    };
    cache.insert(ticket, key, suffix, resolution.clone());
    Ok(resolution)
}

/// Parses a reference and finds its registry: the one a full ECR URI names
/// (it must be configured), else `registry` (empty: the default).
pub(super) fn decode_reference<'a>(
    state: &'a AppState,
    alias: &str,
    reference: &str,
) -> Result<(&'a Registry, ImageRef), ApiError> {
    let parsed = ImageRef::parse(reference).map_err(invalid)?;
    let registry = match &parsed.registry {
        Some(host) => state
            .registries
            .all()
            .find(|r| r.reference.account_id == host.account_id.as_str() && r.reference.region == host.region)
            .filter(|r| alias.is_empty() || r.reference.alias == alias)
            .ok_or_else(|| {
                ApiError::invalid(
                    "reference",
                    "reference.unmanaged-registry",
                    format!(
                        "account {} in {} is not a registry this gateway manages{}; configured: {}",
                        host.account_id.as_str(),
                        host.region,
                        if alias.is_empty() {
                            String::new()
                        } else {
                            format!(" under alias `{alias}`")
                        },
                        state.registries.aliases().join(", ")
                    ),
                )
            })?,
        None => state.registry(alias).map_err(|v| invalid(vec![v]))?,
    };
    Ok((registry, parsed))
}

/// ECR semantics: IMMUTABLE tags never move; *_WITH_EXCLUSION flips the rule for tags matching a filter.
pub fn tag_is_immutable(mutability: Option<&str>, filters: &Value, tag: &str) -> bool {
    let matches_filter = || {
        filters.as_array().is_some_and(|fs| {
            fs.iter()
                .filter_map(Value::as_str)
                .any(|f| wildcard_match(f, tag))
        })
    };
    match mutability {
        Some("IMMUTABLE") => true,
        Some("IMMUTABLE_WITH_EXCLUSION") => !matches_filter(),
        Some("MUTABLE_WITH_EXCLUSION") => matches_filter(),
        _ => false,
    }
}

/// Whether ResolveImage and the deploy gate call `tag` immutable: the
/// repository's settings say so, and they were read from ECR no earlier than
/// the image row the answer comes from. Settings older than the image facts
/// (or of unknown age) may predate a switch to MUTABLE and the move of the
/// tag, so the tag then counts as mutable: the gate fails closed.
pub fn resolved_tag_is_immutable(resolved: &ResolvedTag, tag: &str) -> bool {
    resolved
        .settings_synced_at
        .is_some_and(|read| read >= resolved.row_synced_at)
        && tag_is_immutable(
            resolved.tag_mutability.as_deref(),
            &resolved.exclusion_filters,
            tag,
        )
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

fn newest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    a.max(b)
}

/// Reads one image through to ECR and refreshes the cache.
async fn refresh(
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
pub(super) async fn read_through_unknown(
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
pub(super) fn repository_not_found(registry: &RegistryRef, repository: &RepositoryName) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.repository",
        resource_name: format!("{}/{}", registry.alias, repository),
        description: format!(
            "repository `{repository}` does not exist in registry `{}` ({} {}); check the name with ListRepositories",
            registry.alias, registry.account_id, registry.region
        ),
    }
}

pub(super) fn sync_error(error: crate::inventory::SyncError) -> ApiError {
    match error {
        crate::inventory::SyncError::Ecr(e) => e.into(),
        crate::inventory::SyncError::Store(e) => e.into(),
    }
}

async fn get_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetImageRequest,
) -> Result<(pb::Image, Value), ApiError> {
    call.caller()?;
    let (registry, repository) = state.locate(&request.registry, &request.repository)?;
    let selector = image_selector(&request.tag, &request.digest)?;
    let strong = strong(request.consistency)?;
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    if strong {
        refresh(state, call, registry, &repository, &selector).await?;
    }
    let pool = state.store.pool();
    let mut found = find_image(pool, &registry.reference, &repository, &selector).await?;
    if found.is_err() && read_through_unknown(state, call, registry, &repository).await? {
        found = find_image(pool, &registry.reference, &repository, &selector).await?;
    }
    let row = found?;
    let digest = row.digest.clone();
    let referrers = image_reads::referrers(pool, &registry.reference, repository.as_str(), &digest).await?;
    let last = sync::last_synced_at(pool, &registry.reference, repository.as_str()).await?;
    let mut image = image_message(
        &registry.reference,
        &row,
        newest(last, Some(row.synced_at)),
        strong,
    );
    image.referrers = referrers
        .iter()
        .map(|r| pb::Referrer {
            digest: r.digest.clone(),
            artifact_type: r
                .artifact_type
                .clone()
                .or_else(|| r.artifact_media_type.clone())
                .unwrap_or_default(),
            tags: r.tags.clone(),
        })
        .collect();
    image.scan = crate::store::scans::get(pool, &registry.reference, repository.as_str(), &digest)
        .await?
        .map(|scan| super::scan::summary_message(&registry.reference, &scan));
    let elements = json!({"digest": image.digest, "tags": image.tags});
    Ok((image, elements))
}

/// The cached image a selector names, or (inner error) the NOT_FOUND that says which.
async fn find_image(
    pool: &sqlx::PgPool,
    registry: &RegistryRef,
    repository: &RepositoryName,
    selector: &ImageSelector,
) -> Result<Result<ImageRow, ApiError>, ApiError> {
    let digest = match selector {
        ImageSelector::Digest(digest) => digest.to_string(),
        ImageSelector::Tag(tag) => {
            match image_reads::resolve_tag(pool, registry, repository.as_str(), tag.as_str()).await? {
                Some(resolved) => resolved.digest,
                None => return Ok(Err(image_not_found(registry, repository, &format!(":{tag}")))),
            }
        }
    };
    Ok(image_reads::get(pool, registry, repository.as_str(), &digest)
        .await?
        .ok_or_else(|| image_not_found(registry, repository, &format!("@{digest}"))))
}

/// An image as callers see it.
pub(super) fn image_message(
    registry: &RegistryRef,
    row: &ImageRow,
    synced_at: Option<DateTime<Utc>>,
    read_through: bool,
) -> pb::Image {
    let pinned = RepositoryName::parse(&row.repository)
        .ok()
        .zip(Digest::parse(&row.digest).ok())
        .map(|(name, digest)| pinned_uri(&registry.account_id, &registry.region, &name, &digest))
        .unwrap_or_default();
    pb::Image {
        registry: registry.alias.clone(),
        registry_id: registry.account_id.clone(),
        region: registry.region.clone(),
        repository: row.repository.clone(),
        digest: row.digest.clone(),
        tags: row.tags.clone(),
        size_bytes: row.size_bytes.unwrap_or_default(),
        pushed_at: Some(timestamp(row.pushed_at)),
        last_pulled_at: row.last_pulled_at.map(timestamp),
        manifest_media_type: row.manifest_media_type.clone().unwrap_or_default(),
        artifact_media_type: row.artifact_media_type.clone().unwrap_or_default(),
        status: status_to_proto(&row.status) as i32,
        kind: kind_to_proto(row.kind.as_deref()) as i32,
        artifact_type: row.artifact_type.clone().unwrap_or_default(),
        subject_digest: row.subject_digest.clone().unwrap_or_default(),
        children: children(&row.children),
        referrers: Vec::new(),
        pinned_uri: pinned,
        freshness: Some(pb::Freshness {
            synced_at: synced_at.map(timestamp),
            read_through,
        }),
        scan: None,
    }
}

fn children(value: &Value) -> Vec<pb::IndexChild> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|c| pb::IndexChild {
                    digest: c["digest"].as_str().unwrap_or_default().to_owned(),
                    media_type: c["mediaType"].as_str().unwrap_or_default().to_owned(),
                    size_bytes: c["size"].as_i64().unwrap_or_default(),
                    platform: c["platform"].as_object().map(|p| pb::Platform {
                        os: p.get("os").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        architecture: p
                            .get("architecture")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        variant: p
                            .get("variant")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    }),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn status_to_proto(status: &str) -> pb::ImageStatus {
    match status {
        "ACTIVE" => pb::ImageStatus::Active,
        "ARCHIVED" => pb::ImageStatus::Archived,
        "ACTIVATING" => pb::ImageStatus::Activating,
        _ => pb::ImageStatus::Unspecified,
    }
}

fn kind_to_proto(kind: Option<&str>) -> pb::ManifestKind {
    match kind {
        Some("image") => pb::ManifestKind::Image,
        Some("index") => pb::ManifestKind::Index,
        Some("artifact") => pb::ManifestKind::Artifact,
        Some(_) => pb::ManifestKind::Unknown,
        None => pb::ManifestKind::Unspecified,
    }
}

async fn list_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListImagesRequest,
) -> Result<(pb::ListImagesResponse, Value), ApiError> {
    call.caller()?;
    let (registry, repository) = state.locate(&request.registry, &request.repository)?;
    let (filter, limit) = image_filter(request)?;
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let key = state.page_key().await?;
    let fingerprint = page_token::fingerprint(&(&registry.reference.alias, repository.as_str(), &filter));
    let after: Option<ListPosition> = key.decode(&request.page_token, &fingerprint)?;
    let pool = state.store.pool();
    let list = || {
        image_reads::list(
            pool,
            &registry.reference,
            repository.as_str(),
            &filter,
            after.as_ref(),
            limit + 1,
        )
    };
    let mut rows = list().await?;
    if rows.is_empty() && read_through_unknown(state, call, registry, &repository).await? {
        rows = list().await?;
    }
    let next_page_token = next_token(&mut rows, limit, |last| {
        key.encode(
            &fingerprint,
            &ListPosition {
                pushed_at: Some(last.pushed_at),
                tag: last.tags.first().cloned().unwrap_or_default(),
                digest: last.digest.clone(),
            },
        )
    });
    let last = sync::last_synced_at(pool, &registry.reference, repository.as_str()).await?;
    let images: Vec<pb::Image> = rows
        .iter()
        .map(|row| image_message(&registry.reference, row, last, false))
        .collect();
    let elements = json!({"count": images.len(), "nextPageToken": !next_page_token.is_empty()});
    Ok((
        pb::ListImagesResponse {
            images,
            next_page_token,
            freshness: Some(pb::Freshness {
                synced_at: last.map(timestamp),
                read_through: false,
            }),
        },
        elements,
    ))
}

/// Checks ListImages' filters, reporting every problem at once.
fn image_filter(request: &pb::ListImagesRequest) -> Result<(ImageFilter, i64), ApiError> {
    let mut violations = Vec::new();
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let tagged = match pb::TagStatus::try_from(request.tag_status) {
        Ok(pb::TagStatus::Unspecified) => None,
        Ok(pb::TagStatus::Tagged) => Some(true),
        Ok(pb::TagStatus::Untagged) => Some(false),
        Err(_) => {
            violations.push(Violation::new(
                "tag_status",
                "enum.unknown-value",
                "use TAG_STATUS_TAGGED or TAG_STATUS_UNTAGGED",
            ));
            None
        }
    };
    let status = match pb::ImageStatus::try_from(request.status) {
        Ok(pb::ImageStatus::Unspecified) => None,
        Ok(pb::ImageStatus::Active) => Some("ACTIVE".to_owned()),
        Ok(pb::ImageStatus::Archived) => Some("ARCHIVED".to_owned()),
        Ok(pb::ImageStatus::Activating) => Some("ACTIVATING".to_owned()),
        Err(_) => {
            violations.push(Violation::new(
                "status",
                "enum.unknown-value",
                "use IMAGE_STATUS_ACTIVE, _ARCHIVED or _ACTIVATING",
            ));
            None
        }
    };
    let order = match pb::ImageOrder::try_from(request.order_by) {
        Ok(pb::ImageOrder::Unspecified | pb::ImageOrder::PushedDesc) => ListOrder::PushedDesc,
        Ok(pb::ImageOrder::Digest) => ListOrder::Digest,
        Ok(pb::ImageOrder::Tag) => ListOrder::Tag,
        Err(_) => {
            violations.push(Violation::new(
                "order_by",
                "enum.unknown-value",
                "use IMAGE_ORDER_PUSHED_DESC, IMAGE_ORDER_DIGEST or IMAGE_ORDER_TAG",
            ));
            ListOrder::PushedDesc
        }
    };
    if let Some(v) = check_glob("tag_glob", &request.tag_glob) {
        violations.push(v);
    }
    if tagged == Some(false) && !request.tag_glob.is_empty() {
        violations.push(Violation::new(
            "tag_glob",
            "filter.contradiction",
            "untagged images have no tags to match; drop tag_glob or tag_status",
        ));
    }
    let pushed_after = time(request.pushed_after.as_ref(), "pushed_after", &mut violations);
    let pushed_before = time(request.pushed_before.as_ref(), "pushed_before", &mut violations);
    if request.media_type.len() > 255 {
        violations.push(Violation::new(
            "media_type",
            "media-type.length",
            "a media type is at most 255 characters",
        ));
    } else if request.media_type.chars().any(char::is_control) {
        violations.push(Violation::new(
            "media_type",
            "media-type.characters",
            "a media type has no control characters, e.g. application/vnd.oci.image.manifest.v1+json",
        ));
    }
    match limit {
        Some(limit) if violations.is_empty() => Ok((
            ImageFilter {
                tagged,
                tag_like: (!request.tag_glob.is_empty())
                    .then(|| image_reads::glob_to_like(&request.tag_glob)),
                pushed_after,
                pushed_before,
                status,
                media_type: (!request.media_type.is_empty()).then(|| request.media_type.clone()),
                order,
            },
            limit,
        )),
        _ => Err(invalid(violations)),
    }
}

/// A tag glob: tag characters plus `*` and `?`, 1-128 characters.
fn check_glob(field: &str, glob: &str) -> Option<Violation> {
    if glob.is_empty() {
        return None;
    }
    let valid = glob.len() <= 128
        && glob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?'));
    (!valid).then(|| {
        Violation::new(
            field,
            "tag-glob.grammar",
            "use 1-128 of [A-Za-z0-9._-] with `*` (any run) and `?` (one character), e.g. `v1.*`",
        )
    })
}

fn time(
    value: Option<&prost_types::Timestamp>,
    field: &str,
    violations: &mut Vec<Violation>,
) -> Option<DateTime<Utc>> {
    time_of(field, value)
        .map_err(|v| violations.push(v))
        .ok()
        .flatten()
}

async fn search_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::SearchImagesRequest,
) -> Result<(pb::SearchImagesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .map_err(|v| violations.push(v))
        .unwrap_or_default();
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let given = [
        !request.digest.is_empty(),
        !request.tag_glob.is_empty(),
        !request.repository_prefix.is_empty(),
    ];
    let query = match given {
        [true, false, false] => Digest::parse(&request.digest)
            .map(|d| SearchQuery::Digest(d.to_string()))
            .map_err(|v| violations.push(v))
            .ok(),
        [false, true, false] => match check_glob("tag_glob", &request.tag_glob) {
            Some(v) => {
                violations.push(v);
                None
            }
            None => Some(SearchQuery::TagLike(image_reads::glob_to_like(&request.tag_glob))),
        },
        [false, false, true] => match super::check_prefix("repository_prefix", &request.repository_prefix) {
            Some(v) => {
                violations.push(v);
                None
            }
            None => Some(SearchQuery::RepositoryLike(image_reads::prefix_to_like(
                &request.repository_prefix,
            ))),
        },
        _ => {
            violations.push(Violation::new(
                "digest",
                "search.one-criterion",
                "give exactly one of `digest`, `tag_glob` and `repository_prefix`",
            ));
            None
        }
    };
    let (Some(query), Some(limit)) = (query, limit) else {
        return Err(invalid(violations));
    };
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    let scope = call.authorize_list(&state.authz, registries.iter().map(|r| &r.reference))?;
    let key = state.page_key().await?;
    let fingerprint = page_token::fingerprint(&(&request.registry, &query));
    let after: Option<image_reads::SearchPosition> = key.decode(&request.page_token, &fingerprint)?;
    let visibility = super::visibility(&scope, registries.iter().map(|r| &r.reference));
    let mut rows =
        image_reads::search(state.store.pool(), &visibility, &query, after.as_ref(), limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |last| {
        key.encode(
            &fingerprint,
            &(&last.account_id, &last.region, &last.repository, &last.digest),
        )
    });
    let images: Vec<pb::Image> = rows
        .iter()
        .filter_map(|row| {
            let registry = registries
                .iter()
                .find(|r| r.reference.account_id == row.account_id && r.reference.region == row.region)?;
            Some(image_message(
                &registry.reference,
                row,
                Some(row.synced_at),
                false,
            ))
        })
        .collect();
    let elements = json!({"count": images.len(), "nextPageToken": !next_page_token.is_empty()});
    Ok((
        pb::SearchImagesResponse {
            images,
            next_page_token,
        },
        elements,
    ))
}

async fn refresh_inventory(
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
async fn refresh_scope(
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
        let digest = Digest::parse(&request.digest)
            .map_err(|v| violations.push(v))
            .ok();
        let name = (!request.repository.is_empty())
            .then(|| {
                RepositoryName::parse(&request.repository)
                    .map_err(|v| violations.push(v))
                    .ok()
            })
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

fn run_message(registry: &RegistryRef, run: &SyncRun) -> pb::SyncRun {
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

async fn get_sync_status(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetSyncStatusRequest,
) -> Result<(pb::GetSyncStatusResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registry = state
        .registry(&request.registry)
        .map_err(|v| violations.push(v))
        .ok();
    let repository = (!request.repository.is_empty())
        .then(|| {
            RepositoryName::parse(&request.repository)
                .map_err(|v| violations.push(v))
                .ok()
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutability_follows_ecr_exclusion_semantics() {
        let filters = json!(["latest", "dev-*"]);
        assert!(tag_is_immutable(Some("IMMUTABLE"), &filters, "latest"));
        assert!(tag_is_immutable(
            Some("IMMUTABLE_WITH_EXCLUSION"),
            &filters,
            "v1.2.3"
        ));
        assert!(!tag_is_immutable(
            Some("IMMUTABLE_WITH_EXCLUSION"),
            &filters,
            "latest"
        ));
        assert!(!tag_is_immutable(
            Some("IMMUTABLE_WITH_EXCLUSION"),
            &filters,
            "dev-42"
        ));
        assert!(tag_is_immutable(
            Some("MUTABLE_WITH_EXCLUSION"),
            &filters,
            "dev-42"
        ));
        assert!(!tag_is_immutable(Some("MUTABLE"), &filters, "v1"));
        assert!(!tag_is_immutable(None, &filters, "v1"));
    }

    fn resolved(
        mutability: &str,
        row_synced_at: DateTime<Utc>,
        settings_synced_at: Option<DateTime<Utc>>,
    ) -> ResolvedTag {
        ResolvedTag {
            digest: "sha256:0".into(),
            last_synced_at: Some(row_synced_at),
            row_synced_at,
            tag_mutability: Some(mutability.into()),
            exclusion_filters: json!([]),
            settings_synced_at,
        }
    }

    #[test]
    fn a_tag_is_immutable_only_on_settings_no_older_than_its_image_row() {
        let row = Utc::now();
        let second = chrono::Duration::seconds(1);
        assert!(resolved_tag_is_immutable(
            &resolved("IMMUTABLE", row, Some(row)),
            "v1"
        ));
        assert!(resolved_tag_is_immutable(
            &resolved("IMMUTABLE", row, Some(row + second)),
            "v1"
        ));
        assert!(
            !resolved_tag_is_immutable(&resolved("IMMUTABLE", row, Some(row - second)), "v1"),
            "settings read before the image facts may predate a switch to MUTABLE"
        );
        assert!(
            !resolved_tag_is_immutable(&resolved("IMMUTABLE", row, None), "v1"),
            "settings of unknown age fail closed"
        );
        assert!(!resolved_tag_is_immutable(
            &resolved("MUTABLE", row, Some(row + second)),
            "v1"
        ));
    }

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard_match("dev-*", "dev-"));
        assert!(wildcard_match("*-rc*", "v1-rc2"));
        assert!(!wildcard_match("dev-*", "prod-1"));
        assert!(!wildcard_match("a*a", "a"));
    }
}
