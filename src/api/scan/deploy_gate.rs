//! CheckDeployment: the deploy gate, answered from the in-process cache (no ECR call); PromoteImage asks it too.

use super::*;

/// The environment's rules, or INVALID_ARGUMENT naming the known ones.
pub(in crate::api) fn environment_rules(
    state: &AppState,
    environment: &str,
) -> Result<gate::EnvironmentRules, Violation> {
    let policy = state.policy.current();
    let environments = &policy.config().deploy.environments;
    environments.get(environment).cloned().ok_or_else(|| {
        Violation::new(
            "environment",
            "deploy.environment-unknown",
            format!(
                "{} is not an environment of the org policy; use one of: {}",
                if environment.is_empty() {
                    "an empty name".to_owned()
                } else {
                    format!("`{}`", environment.chars().take(64).collect::<String>())
                },
                environments.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

pub(super) async fn check_deployment(
    state: &AppState,
    call: &mut Call,
    request: &pb::CheckDeploymentRequest,
) -> Result<(pb::CheckDeploymentResponse, Value), ApiError> {
    call.caller()?;
    let rules = environment_rules(state, &request.environment);
    let located = locate_reference(state, &request.registry, &request.reference);
    let (rules, located) = match (rules, located) {
        (Ok(rules), Ok(located)) => (rules, located),
        (Ok(_), Err(error)) => return Err(error),
        (Err(violation), located) => {
            let mut violations = vec![violation];
            match located {
                Err(error) => violations.extend(violations_of(error)),
                Ok(Located::Unmanaged(unmanaged)) => violations.push(unmanaged),
                Ok(Located::Managed(..)) => {}
            }
            return Err(invalid(violations));
        }
    };
    let now = Utc::now();
    let (registry, reference) = match located {
        Located::Managed(registry, reference) => (registry, reference),
        Located::Unmanaged(violation) => {
            // Not an error: the answer to "may this be deployed?" is no,
            // and it tells nothing about any repository the gateway manages.
            call.allow_unscoped("the reference names a registry the gateway does not manage");
            let reasons = vec![gate::Reason {
                rule_id: "deploy.registry-unmanaged",
                message: violation.description,
                findings: Vec::new(),
            }];
            return Ok(decision(
                request,
                gate::Verdict {
                    reasons,
                    excepted: Vec::new(),
                },
                None,
                now,
            ));
        }
    };
    let repository = &reference.repository;
    call.set_repository(&registry.reference, registry.reference.repository_arn(repository));
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let (verdict, facts) = gate_verdict(
        state,
        &registry.reference,
        repository,
        &reference.selector,
        &request.environment,
        &rules,
        now,
    )
    .await?;
    let found = facts.map(|f| found_image(&registry.reference, repository, f));
    Ok(decision(request, verdict, found, now))
}

/// What a decision reports of the image it judged: digest, pinned URI and scan.
pub(in crate::api) fn found_image(
    registry: &RegistryRef,
    repository: &RepositoryName,
    facts: DeployFacts,
) -> (String, String, Option<pb::ScanSummary>) {
    let pinned = Digest::parse(&facts.digest)
        .map(|d| pinned_uri(&registry.account_id, &registry.region, repository, &d))
        .unwrap_or_default();
    let scan = facts.scan.as_ref().map(|s| summary_message(registry, s));
    (facts.digest, pinned, scan)
}

/// The deploy gate's verdict on an image (from the cache, no ECR call) and
/// the facts it used: CheckDeployment's decision, and PromoteImage's gate.
pub(in crate::api) async fn gate_verdict(
    state: &AppState,
    registry: &RegistryRef,
    repository: &RepositoryName,
    selector: &ImageSelector,
    environment: &str,
    rules: &gate::EnvironmentRules,
    now: DateTime<Utc>,
) -> Result<(gate::Verdict, Option<DeployFacts>), ApiError> {
    let facts = cached_deploy_facts(state, registry, repository, selector).await?;
    let reference_kind = match selector {
        ImageSelector::Digest(_) => Reference::Digest,
        ImageSelector::Tag(tag) if facts.as_ref().is_some_and(|f| f.tag_immutable) => {
            Reference::ImmutableTag(tag.to_string())
        }
        ImageSelector::Tag(tag) => Reference::MutableTag(tag.to_string()),
    };
    let image = facts.as_ref().map(|f| GateImage {
        pushed_at: f.pushed_at,
        status: f.status.clone(),
        scan: f.scan.as_ref().map(|s| GateScan {
            status: s.status.clone(),
            completed_at: s.completed_at,
            counts: Severity::ALL.iter().map(|sev| (*sev, s.count(*sev))).collect(),
            findings: f
                .findings
                .iter()
                .map(|(name, code)| GateFinding {
                    name: name.clone(),
                    severity: Severity::from_code(*code),
                })
                .collect(),
        }),
    });
    let excepted: Vec<String> = facts
        .as_ref()
        .map(|f| {
            f.exceptions
                .iter()
                .filter(|(_, expires)| *expires > now)
                .map(|(cve, _)| cve.clone())
                .collect()
        })
        .unwrap_or_default();
    let verdict = gate::decide(
        environment,
        rules,
        &reference_kind,
        image.as_ref(),
        &excepted,
        now,
    );
    Ok((verdict, facts))
}

pub(in crate::api) fn decision(
    request: &pb::CheckDeploymentRequest,
    verdict: gate::Verdict,
    found: Option<(String, String, Option<pb::ScanSummary>)>,
    now: DateTime<Utc>,
) -> (pb::CheckDeploymentResponse, Value) {
    let allowed = verdict.allowed();
    let (digest, pinned_uri, scan) = found.unwrap_or_default();
    let elements = json!({
        "decision": if allowed { "ALLOW" } else { "DENY" },
        "environment": request.environment,
        "imageDigest": digest,
        "reportOnly": request.report_only,
        "reasons": verdict.reasons.iter().map(|r| json!({"ruleId": r.rule_id, "message": r.message, "findings": r.findings})).collect::<Vec<_>>(),
        "exceptedFindings": verdict.excepted,
    });
    let response = pb::CheckDeploymentResponse {
        decision: if allowed {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        reasons: verdict
            .reasons
            .into_iter()
            .map(|r| pb::DecisionReason {
                rule_id: r.rule_id.to_owned(),
                message: r.message,
                findings: r.findings,
            })
            .collect(),
        environment: request.environment.clone(),
        digest,
        pinned_uri,
        scan,
        excepted_findings: verdict.excepted,
        report_only: request.report_only,
        decided_at: Some(timestamp(now)),
    };
    (response, elements)
}

/// The gate's facts from the in-process cache, else from Postgres (then cached).
pub(super) async fn cached_deploy_facts(
    state: &AppState,
    registry: &RegistryRef,
    repository: &RepositoryName,
    selector: &ImageSelector,
) -> Result<Option<DeployFacts>, ApiError> {
    let cache = state.store.deploy_facts();
    let key = RepoKey::new(registry, repository.as_str());
    let suffix = selector_suffix(selector);
    if let Some(hit) = cache.get(&key, suffix.as_str()) {
        return Ok(hit);
    }
    let ticket = state.store.invalidations().ticket();
    let pool = state.store.pool();
    let (digest, tag_immutable) = match selector {
        ImageSelector::Digest(digest) => (Some(digest.to_string()), false),
        ImageSelector::Tag(tag) => {
            match image_reads::resolve_tag(pool, registry, repository.as_str(), tag.as_str()).await? {
                Some(resolved) => {
                    let immutable = resolved_tag_is_immutable(&resolved, tag.as_str());
                    (Some(resolved.digest), immutable)
                }
                None => (None, false),
            }
        }
    };
    let row = match &digest {
        Some(digest) => image_reads::get(pool, registry, repository.as_str(), digest).await?,
        None => None,
    };
    let facts = match row {
        None => None,
        Some(row) => Some(DeployFacts {
            scan: scans::get(pool, registry, repository.as_str(), &row.digest).await?,
            findings: scans::gate_findings(pool, registry, repository.as_str(), &row.digest).await?,
            exceptions: scans::covering(pool, registry, repository.as_str(), &row.digest).await?,
            digest: row.digest,
            tag_immutable,
            status: row.status,
            pushed_at: row.pushed_at,
        }),
    };
    cache.insert(ticket, key, suffix, facts.clone());
    Ok(facts)
}
