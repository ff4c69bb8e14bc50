//! ListImages, GetImage and SearchImages: cached reads of the inventory (GetImage reads through on CONSISTENCY_STRONG).

use super::*;

pub(super) async fn get_image(
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
        .map(|scan| crate::api::scan::summary_message(&registry.reference, &scan));
    let elements = json!({"digest": image.digest, "tags": image.tags});
    Ok((image, elements))
}

/// The cached image a selector names, or (inner error) the NOT_FOUND that says which.
pub(super) async fn find_image(
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
pub(in crate::api) fn image_message(
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

pub(super) fn children(value: &Value) -> Vec<pb::IndexChild> {
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

pub(super) fn status_to_proto(status: &str) -> pb::ImageStatus {
    match status {
        "ACTIVE" => pb::ImageStatus::Active,
        "ARCHIVED" => pb::ImageStatus::Archived,
        "ACTIVATING" => pb::ImageStatus::Activating,
        _ => pb::ImageStatus::Unspecified,
    }
}

pub(super) fn kind_to_proto(kind: Option<&str>) -> pb::ManifestKind {
    match kind {
        Some("image") => pb::ManifestKind::Image,
        Some("index") => pb::ManifestKind::Index,
        Some("artifact") => pb::ManifestKind::Artifact,
        Some(_) => pb::ManifestKind::Unknown,
        None => pb::ManifestKind::Unspecified,
    }
}

pub(super) async fn list_images(
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
pub(super) fn image_filter(request: &pb::ListImagesRequest) -> Result<(ImageFilter, i64), ApiError> {
    let mut violations = Vec::new();
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
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
pub(super) fn check_glob(field: &str, glob: &str) -> Option<Violation> {
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

pub(super) fn time(
    value: Option<&prost_types::Timestamp>,
    field: &str,
    violations: &mut Vec<Violation>,
) -> Option<DateTime<Utc>> {
    time_of(field, value).or_record(violations).flatten()
}

pub(super) async fn search_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::SearchImagesRequest,
) -> Result<(pb::SearchImagesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations)
        .unwrap_or_default();
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let given = [
        !request.digest.is_empty(),
        !request.tag_glob.is_empty(),
        !request.repository_prefix.is_empty(),
    ];
    let query = match given {
        [true, false, false] => Digest::parse(&request.digest)
            .map(|d| SearchQuery::Digest(d.to_string()))
            .or_record(&mut violations),
        [false, true, false] => match check_glob("tag_glob", &request.tag_glob) {
            Some(v) => {
                violations.push(v);
                None
            }
            None => Some(SearchQuery::TagLike(image_reads::glob_to_like(&request.tag_glob))),
        },
        [false, false, true] => {
            match crate::api::check_prefix("repository_prefix", &request.repository_prefix) {
                Some(v) => {
                    violations.push(v);
                    None
                }
                None => Some(SearchQuery::RepositoryLike(image_reads::prefix_to_like(
                    &request.repository_prefix,
                ))),
            }
        }
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
    let visibility = crate::api::visibility(&scope, registries.iter().map(|r| &r.reference));
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
