//! `ImageService.PromoteImage`: an image under a new tag, in its repository
//! or another of the same registry, without pulling it. ECR's retag:
//! BatchGetImage for the exact manifest bytes, then PutImage with them, their
//! media type and the digest they must have. The rules (what the tag does,
//! how a refusal reads) live in [`crate::policy::promotion`].

use chrono::Utc;
use serde_json::{Value, json};

use super::AppState;
use super::call::Call;
use super::error::{ApiError, OrRecord as _, Precondition, invalid};
use super::image::{image_message, image_selector};
use super::mutation::{self, Attempt, CacheChange, Done, check_request_id};
use super::scan::deploy_gate::{decision, environment_rules, found_image, gate_verdict};
use crate::auth::authz::Resource;
use crate::domain::{
    AuditResource, Digest, ImageRecord, ImageSelector, ImageTag, RepositoryName, Violation, pinned_uri,
};
use crate::ecr::{CallLog, PutOutcome, RawManifest, Registry};
use crate::inventory::facts_of;
use crate::pb;
use crate::policy::gate::EnvironmentRules;
use crate::policy::promotion::{self, Refusal, Step};
use crate::store::image_reads::ImageRow;
use crate::store::images::ManifestFacts;

/// A PromoteImage request, decoded.
struct Promotion<'a> {
    registry: &'a Registry,
    source: RepositoryName,
    selector: ImageSelector,
    target: RepositoryName,
    tag: ImageTag,
    /// The environment and its rules, when the gate applies.
    gate: Option<(&'a str, EnvironmentRules)>,
}

/// What ECR holds, read before anything changes.
struct Found {
    image: ImageRecord,
    /// The target's image, when the target tag already names the source image.
    target: Option<ImageRecord>,
    manifest: RawManifest,
    gate: Option<pb::CheckDeploymentResponse>,
    step: Step,
}

/// The RPC: decode, authorize, then read ECR and (unless `validate_only`) tag.
pub(super) async fn promote_image(
    state: &AppState,
    call: &mut Call,
    request: &pb::PromoteImageRequest,
) -> Result<(pb::PromoteImageResponse, Value), ApiError> {
    call.caller()?;
    let promotion = decode(state, request)?;
    record_resources(call, &promotion);
    authorize(state, call, &promotion).await?;
    if request.validate_only {
        let log = CallLog::default();
        let found = find(state, &promotion, &log).await;
        call.record.outcome.ecr_request_ids = log.ids();
        let response = validated(&promotion, found?);
        let elements = elements(&response);
        return Ok((response, elements));
    }
    let (mut response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| promote(state, &promotion, attempt),
    )
    .await?;
    response.replayed = replayed;
    let elements = elements(&response);
    Ok((response, elements))
}

/// Every field checked at once; each problem names its field.
fn decode<'a>(state: &'a AppState, request: &'a pb::PromoteImageRequest) -> Result<Promotion<'a>, ApiError> {
    let mut violations = Vec::new();
    let located = state
        .locate(&request.registry, &request.repository)
        .or_record(&mut violations);
    let selector = image_selector(&request.tag, &request.digest).or_record(&mut violations);
    let target = match request.target_repository.as_str() {
        "" => None,
        name => RepositoryName::parse(name)
            .map(Some)
            .map_err(|v| violations.push(renamed(v, "target_repository")))
            .unwrap_or_default(),
    };
    let tag = if request.target_tag.is_empty() {
        violations.push(Violation::new(
            "target_tag",
            "promote.target-tag-required",
            "name the tag to give the image, e.g. `prod` or `v1.4.2`",
        ));
        None
    } else {
        ImageTag::parse(&request.target_tag)
            .map_err(|v| violations.push(renamed(v, "target_tag")))
            .ok()
    };
    let gate = match request.environment.as_str() {
        "" => None,
        environment => environment_rules(state, environment)
            .map(|rules| Some((environment, rules)))
            .or_record(&mut violations)
            .unwrap_or_default(),
    };
    violations.extend(check_request_id(&request.request_id));
    match (located, selector, tag) {
        (Some((registry, source)), Some(selector), Some(tag)) if violations.is_empty() => Ok(Promotion {
            registry,
            target: target.unwrap_or_else(|| source.clone()),
            source,
            selector,
            tag,
            gate,
        }),
        _ => Err(invalid(violations)),
    }
}

fn renamed(violation: Violation, field: &str) -> Violation {
    Violation {
        field: field.to_owned(),
        ..violation
    }
}

/// The audit event names both repositories.
fn record_resources(call: &mut Call, promotion: &Promotion) {
    let registry = &promotion.registry.reference;
    call.set_repository(registry, registry.repository_arn(&promotion.source));
    if promotion.target != promotion.source {
        call.record.resources.push(AuditResource {
            resource_type: "AWS::ECR::Repository".into(),
            arn: registry.repository_arn(&promotion.target),
        });
    }
}

/// `PullImages` on the source and `PushImages` on the target.
async fn authorize(state: &AppState, call: &mut Call, promotion: &Promotion<'_>) -> Result<(), ApiError> {
    let registry = &promotion.registry.reference;
    let mut resources = Vec::with_capacity(2);
    for name in [&promotion.source, &promotion.target] {
        resources.push(Resource::Repository {
            registry: registry.clone(),
            name: name.to_string(),
            tags: state.store.repository_tags(registry, name.as_str()).await?,
        });
    }
    call.authorize_all(
        &state.authz,
        "PromoteImage",
        &[("PullImages", &resources[0]), ("PushImages", &resources[1])],
    )
}

/// The source as ECR has it now (written through to the cache), the gate's
/// decision on it, its manifest, and what the target tag would do.
async fn find(state: &AppState, promotion: &Promotion<'_>, log: &CallLog) -> Result<Found, ApiError> {
    let registry = promotion.registry;
    let image = state
        .syncer
        .refresh_image(registry, &promotion.source, &promotion.selector, log)
        .await
        .map_err(super::image::sync_error)?
        .ok_or_else(|| source_not_found(promotion))?;
    let gate = match &promotion.gate {
        Some((environment, rules)) => {
            Some(check_gate(state, promotion, &image.digest, environment, rules).await?)
        }
        None => None,
    };
    let manifest = registry
        .get_manifest(log, &promotion.source, &image.digest)
        .await?
        .ok_or_else(|| source_not_found(promotion))?;
    let current = registry
        .describe_image(log, &promotion.target, &ImageSelector::Tag(promotion.tag.clone()))
        .await?;
    let holder = current.as_ref().map(|c| c.digest.to_string());
    let target = current.filter(|c| c.digest == image.digest);
    let immutable = match &holder {
        Some(holder) if holder != image.digest.as_str() => target_tag_immutable(promotion, log).await?,
        _ => false,
    };
    let step = promotion::plan(
        &format!("{}:{}", promotion.target, promotion.tag),
        image.digest.as_str(),
        holder.as_deref(),
        immutable,
    )
    .map_err(refused)?;
    Ok(Found {
        image,
        target,
        manifest,
        gate,
        step,
    })
}

/// The deploy gate on the source image by digest; a DENY is FAILED_PRECONDITION carrying its reasons.
async fn check_gate(
    state: &AppState,
    promotion: &Promotion<'_>,
    digest: &Digest,
    environment: &str,
    rules: &EnvironmentRules,
) -> Result<pb::CheckDeploymentResponse, ApiError> {
    let registry = &promotion.registry.reference;
    let now = Utc::now();
    let selector = ImageSelector::Digest(digest.clone());
    let (verdict, facts) = gate_verdict(
        state,
        registry,
        &promotion.source,
        &selector,
        environment,
        rules,
        now,
    )
    .await?;
    let allowed = verdict.allowed();
    let request = pb::CheckDeploymentRequest {
        registry: registry.alias.clone(),
        reference: format!("{}@{digest}", promotion.source),
        environment: environment.to_owned(),
        report_only: false,
    };
    let found = facts.map(|f| found_image(registry, &promotion.source, f));
    let (response, _) = decision(&request, verdict, found, now);
    if allowed {
        return Ok(response);
    }
    Err(ApiError::FailedPrecondition {
        reason: "DEPLOY_GATE_DENIED",
        violations: response
            .reasons
            .iter()
            .map(|r| Precondition {
                kind: r.rule_id.clone(),
                subject: format!("{}@{digest}", promotion.source),
                description: format!(
                    "the deploy gate of `{environment}` denies this image ({}), so it is not promoted: {}",
                    r.rule_id, r.message
                ),
            })
            .collect(),
    })
}

/// Whether ECR would refuse to move the target tag (the repository's settings, read now).
async fn target_tag_immutable(promotion: &Promotion<'_>, log: &CallLog) -> Result<bool, ApiError> {
    let repository = promotion
        .registry
        .fetch_repository(log, &promotion.target)
        .await?
        .ok_or_else(|| {
            super::image::repository_not_found(&promotion.registry.reference, &promotion.target)
        })?;
    Ok(repository
        .tag_mutability
        .is_immutable(promotion.tag.as_str(), &repository.exclusion_filters))
}

/// The mutation's work: read, tag, read the result back for the cache.
async fn promote(
    state: &AppState,
    promotion: &Promotion<'_>,
    attempt: Attempt,
) -> Result<Done<pb::PromoteImageResponse>, ApiError> {
    let log = &attempt.log;
    let found = find(state, promotion, log).await?;
    let changed = match &found.step {
        Step::Unchanged => false,
        Step::Tag { .. } => put(promotion, &found.manifest, log).await?,
    };
    let registry = promotion.registry;
    let digest = ImageSelector::Digest(found.image.digest.clone());
    // Unchanged: the target tag's image, as just read, is the answer.
    let unchanged = found.target.clone().filter(|_| !changed);
    let image = match unchanged {
        Some(image) => Some(image),
        None => registry.describe_image(log, &promotion.target, &digest).await?,
    }
    .ok_or_else(|| ApiError::Unavailable {
        reason: "ECR_INCONSISTENT",
        description: "ECR took the tag but does not show the image yet; retry with the same request_id"
            .into(),
        retry_after: std::time::Duration::from_secs(1),
    })?;
    let raw = &found.manifest;
    let facts = facts_of(raw.digest.as_str(), &raw.manifest, raw.media_type.as_deref());
    let response = response(promotion, &image, &facts, &found, changed, false);
    Ok(Done {
        elements: elements(&response),
        response,
        change: CacheChange::ImagePut {
            registry: registry.reference.clone(),
            repository: promotion.target.clone(),
            image: Box::new(image),
            facts,
        },
    })
}

/// PutImage; true when it changed ECR, false when ECR already had the tag there.
async fn put(promotion: &Promotion<'_>, manifest: &RawManifest, log: &CallLog) -> Result<bool, ApiError> {
    let target = promotion.target.to_string();
    match promotion
        .registry
        .put_image(log, &promotion.target, manifest, &promotion.tag)
        .await?
    {
        PutOutcome::Tagged => Ok(true),
        PutOutcome::AlreadyTagged => Ok(false),
        // The tag was taken between the check and the put.
        PutOutcome::TagImmutable(detail) => Err(refused(Refusal::TagImmutable {
            target: format!("{target}:{}", promotion.tag),
            holder: format!("another image ({detail})"),
        })),
        PutOutcome::LayersMissing(detail) => Err(refused(Refusal::LayersMissing {
            repository: target,
            detail,
        })),
        PutOutcome::ReferencesMissing(detail) => Err(refused(Refusal::ReferencesMissing {
            repository: target,
            detail,
        })),
    }
}

fn refused(refusal: Refusal) -> ApiError {
    let subject = match &refusal {
        Refusal::TagImmutable { target, .. } => target.clone(),
        Refusal::LayersMissing { repository, .. } | Refusal::ReferencesMissing { repository, .. } => {
            repository.clone()
        }
    };
    ApiError::FailedPrecondition {
        reason: refusal.kind(),
        violations: vec![Precondition {
            kind: refusal.kind().into(),
            subject,
            description: refusal.describe(),
        }],
    }
}

fn source_not_found(promotion: &Promotion<'_>) -> ApiError {
    let what = match &promotion.selector {
        ImageSelector::Tag(tag) => format!(":{tag}"),
        ImageSelector::Digest(digest) => format!("@{digest}"),
    };
    ApiError::NotFound {
        resource_type: "ecr.image",
        resource_name: format!(
            "{}/{}{what}",
            promotion.registry.reference.alias, promotion.source
        ),
        description: format!(
            "ECR has no image {what} in `{}` of registry `{}`",
            promotion.source, promotion.registry.reference.alias
        ),
    }
}

/// validate_only's answer: what would happen, from the source image.
fn validated(promotion: &Promotion<'_>, found: Found) -> pb::PromoteImageResponse {
    let raw = &found.manifest;
    let facts = facts_of(raw.digest.as_str(), &raw.manifest, raw.media_type.as_deref());
    let changed = matches!(found.step, Step::Tag { .. });
    let mut response = response(promotion, &found.image, &facts, &found, changed, true);
    response.validate_only = true;
    response
}

fn response(
    promotion: &Promotion<'_>,
    image: &ImageRecord,
    facts: &ManifestFacts,
    found: &Found,
    changed: bool,
    validate_only: bool,
) -> pb::PromoteImageResponse {
    let registry = &promotion.registry.reference;
    let row = ImageRow {
        account_id: registry.account_id.clone(),
        region: registry.region.clone(),
        repository: image.repository.to_string(),
        digest: image.digest.to_string(),
        tags: image.tags.clone(),
        size_bytes: image.size_bytes,
        pushed_at: image.pushed_at.unwrap_or_else(Utc::now),
        last_pulled_at: image.last_pulled_at,
        manifest_media_type: image.manifest_media_type.clone(),
        artifact_media_type: image.artifact_media_type.clone(),
        status: image.status.clone(),
        subject_digest: image.subject_digest.clone(),
        kind: Some(facts.kind.clone()),
        artifact_type: facts.artifact_type.clone(),
        children: facts.children.clone(),
        synced_at: Utc::now(),
    };
    let previous = match &found.step {
        Step::Tag { previous } => previous.clone().unwrap_or_default(),
        Step::Unchanged => String::new(),
    };
    pb::PromoteImageResponse {
        image: Some(image_message(registry, &row, Some(row.synced_at), true)),
        digest: image.digest.to_string(),
        pinned_uri: pinned_uri(
            &registry.account_id,
            &registry.region,
            &promotion.target,
            &image.digest,
        ),
        changed,
        previous_digest: previous,
        gate: found.gate.clone(),
        replayed: false,
        validate_only,
    }
}

/// The audit record's `responseElements`.
fn elements(response: &pb::PromoteImageResponse) -> Value {
    json!({
        "imageDigest": response.digest,
        "pinnedUri": response.pinned_uri,
        "changed": response.changed,
        "previousDigest": response.previous_digest,
        "gateDecision": response.gate.as_ref().map(|_| "ALLOW"),
        "replayed": response.replayed,
        "validateOnly": response.validate_only,
    })
}
