//! ResolveImage: a reference to a digest and a pinned URI, from the in-process cache or Postgres; tag immutability as the gate sees it.

use super::*;
use crate::domain::TagMutability;

pub(super) fn strong(consistency: i32) -> Result<bool, ApiError> {
    match pb::Consistency::try_from(consistency) {
        Ok(c) => Ok(c == pb::Consistency::Strong),
        Err(_) => Err(ApiError::invalid(
            "consistency",
            "enum.unknown-value",
            "use CONSISTENCY_CACHED or CONSISTENCY_STRONG",
        )),
    }
}

pub(super) async fn resolve_image(
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
pub(in crate::api) fn image_selector(tag: &str, digest: &str) -> Result<ImageSelector, ApiError> {
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

pub(in crate::api) fn selector_suffix(selector: &ImageSelector) -> String {
    match selector {
        ImageSelector::Tag(tag) => format!(":{tag}"),
        ImageSelector::Digest(digest) => format!("@{digest}"),
    }
}

/// ResolveImage's answer from the in-process cache, else from Postgres (then
/// cached). A strong read has just refreshed the image and reads Postgres.
pub(super) async fn cached_resolution(
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

/// Where a reference points.
pub(in crate::api) enum Located<'a> {
    /// A registry this gateway manages, and the parsed reference.
    Managed(&'a Registry, ImageRef),
    /// A full ECR URI of a registry the gateway does not manage: why not.
    Unmanaged(Violation),
}

/// Parses a reference and finds its registry: the one a full ECR URI names
/// (it must be configured), else `registry` (empty: the default).
pub(in crate::api) fn decode_reference<'a>(
    state: &'a AppState,
    alias: &str,
    reference: &str,
) -> Result<(&'a Registry, ImageRef), ApiError> {
    match locate_reference(state, alias, reference)? {
        Located::Managed(registry, parsed) => Ok((registry, parsed)),
        Located::Unmanaged(violation) => Err(invalid(vec![violation])),
    }
}

/// [`decode_reference`], telling a registry the gateway does not manage
/// apart from a malformed request (CheckDeployment answers it with DENY).
pub(in crate::api) fn locate_reference<'a>(
    state: &'a AppState,
    alias: &str,
    reference: &str,
) -> Result<Located<'a>, ApiError> {
    let parsed = ImageRef::parse(reference).map_err(invalid)?;
    let Some(host) = &parsed.registry else {
        let registry = state.registry(alias).map_err(|v| invalid(vec![v]))?;
        return Ok(Located::Managed(registry, parsed));
    };
    let managed = state
        .registries
        .all()
        .find(|r| r.reference.account_id == host.account_id.as_str() && r.reference.region == host.region)
        .filter(|r| alias.is_empty() || r.reference.alias == alias);
    Ok(match managed {
        Some(registry) => Located::Managed(registry, parsed),
        None => Located::Unmanaged(Violation::new(
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
        )),
    })
}

/// ECR semantics ([`TagMutability::is_immutable`]) over the cached settings'
/// text: the mutability ECR reported and its exclusion filters as JSON.
pub(crate) fn tag_is_immutable(mutability: Option<&str>, filters: &Value, tag: &str) -> bool {
    let filters: Vec<&str> = filters
        .as_array()
        .map(|fs| fs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    mutability
        .and_then(TagMutability::from_ecr_str)
        .is_some_and(|m| m.is_immutable(tag, &filters))
}

/// Whether ResolveImage and the deploy gate call `tag` immutable: the
/// repository's settings say so, and they were read from ECR no earlier than
/// the image row the answer comes from. Settings older than the image facts
/// (or of unknown age) may predate a switch to MUTABLE and the move of the
/// tag, so the tag then counts as mutable: the gate fails closed.
pub(crate) fn resolved_tag_is_immutable(resolved: &ResolvedTag, tag: &str) -> bool {
    resolved
        .settings_synced_at
        .is_some_and(|read| read >= resolved.row_synced_at)
        && tag_is_immutable(
            resolved.tag_mutability.as_deref(),
            &resolved.exclusion_filters,
            tag,
        )
}

pub(super) fn newest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    a.max(b)
}
