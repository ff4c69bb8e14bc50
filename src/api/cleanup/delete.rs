//! DeleteImages: by tag or digest, refusing what is pinned or protected by the org policy, decided on ECR's state.

use super::*;

/// What ECR holds for one requested tag or digest, read just before deciding.
pub(super) struct Target {
    selector: ImageSelector,
    /// The image it names now, with all its tags; None when ECR has none.
    image: Option<(String, Vec<String>)>,
}

pub(super) async fn delete_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::DeleteImagesRequest,
) -> Result<(pb::DeleteImagesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
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
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| delete_in_ecr(state, registry, repository, selectors, attempt),
    )
    .await?;
    response.replayed = replayed;
    let elements = json!({"replayed": replayed, "results": response.results.len()});
    Ok((response, elements))
}

/// The mutation's work: ECR's state now (not the cache's: the decision must
/// hold for what ECR will delete), the protection and pin checks on it, then
/// BatchDeleteImage, and what it did per id.
async fn delete_in_ecr(
    state: &AppState,
    registry: &Registry,
    repository: RepositoryName,
    selectors: Vec<ImageSelector>,
    attempt: Attempt,
) -> Result<Done<pb::DeleteImagesResponse>, ApiError> {
    let store = &state.store;
    let policy = state.policy.current();
    let cleanup = &policy.config().cleanup;
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
    refuse_protected(cleanup, &registry.reference, &repository, &targets, &doomed)?;
    // Re-checked right before the delete: a pin taken meanwhile wins.
    let doomed_digests: Vec<String> = doomed.keys().cloned().collect();
    refuse_pinned(
        store,
        &registry.reference,
        repository.as_str(),
        Some(&doomed_digests),
    )
    .await?;
    let ids: Vec<ImageSelector> = targets.iter().map(|t| t.selector.clone()).collect();
    let outcomes = registry
        .batch_delete_images(&attempt.log, &repository, &ids)
        .await?;
    let (results, deleted, untagged) = results_of(&targets, outcomes, &doomed);
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
}

/// What BatchDeleteImage did per requested id: the results, the images gone
/// whole, and the tags gone from images that remain.
fn results_of(
    targets: &[Target],
    outcomes: Vec<DeleteOutcome>,
    doomed: &BTreeMap<String, Vec<String>>,
) -> (Vec<pb::DeleteImageResult>, BTreeSet<String>, Vec<String>) {
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
                outcome: if code == "ImageNotFound" {
                    "NOT_FOUND".into()
                } else {
                    code
                },
                message,
            },
        };
        results.push(result);
    }
    (results, deleted, untagged)
}

/// A violation for each entry of `list` that repeats an earlier one (ECR's
/// BatchDeleteImage takes each image id once).
pub(super) fn duplicates(list: &str, entries: &[String]) -> Vec<Violation> {
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
pub(super) fn doomed_images(targets: &[Target]) -> BTreeMap<String, Vec<String>> {
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
pub(super) fn refuse_protected(
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
