//! StartImageScan and GetScanFindings: scan status and findings, cached and read through on demand; ListVulnerableImages.

use super::*;

/// The row a report is stored as.
pub(super) fn row_of(repository: &RepositoryName, report: &ScanReport, fetched_at: DateTime<Utc>) -> ScanRow {
    let count = |s: Severity| {
        report
            .counts
            .iter()
            .filter(|(x, _)| *x == s)
            .map(|(_, n)| *n)
            .sum()
    };
    ScanRow {
        repository: repository.to_string(),
        digest: report.digest.clone(),
        status: report.status.clone(),
        description: report.description.clone(),
        completed_at: report.completed_at,
        vulnerability_source_updated_at: report.vulnerability_source_updated_at,
        critical: count(Severity::Critical),
        high: count(Severity::High),
        medium: count(Severity::Medium),
        low: count(Severity::Low),
        informational: count(Severity::Informational),
        undefined: count(Severity::Undefined),
        fetched_at,
    }
}

/// The digest a selector names, from the cache.
pub(super) async fn digest_of(
    state: &AppState,
    registry: &RegistryRef,
    repository: &RepositoryName,
    selector: &ImageSelector,
) -> Result<Digest, ApiError> {
    match selector {
        ImageSelector::Digest(digest) => Ok(digest.clone()),
        ImageSelector::Tag(tag) => {
            let resolved =
                image_reads::resolve_tag(state.store.pool(), registry, repository.as_str(), tag.as_str())
                    .await?
                    .ok_or_else(|| not_found(registry, repository, &format!(":{tag}")))?;
            Digest::parse(&resolved.digest)
                .map_err(|v| ApiError::internal(&std::io::Error::other(v.to_string())))
        }
    }
}

pub(super) async fn start_image_scan(
    state: &AppState,
    call: &mut Call,
    request: &pb::StartImageScanRequest,
) -> Result<(pb::ScanSummary, Value), ApiError> {
    call.caller()?;
    let (registry, repository) = state.locate(&request.registry, &request.repository)?;
    let selector = image_selector(&request.tag, &request.digest)?;
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let (response, _) = mutation::run(&state.store, call, "", request, state.mutation_lease, |attempt| {
        scan_now(registry, repository.clone(), selector, attempt.log)
    })
    .await?;
    let elements = json!({"imageDigest": response.digest, "status": response.status, "scanLimited": response.scan_limited});
    Ok((response, elements))
}

/// Starts the scan (or learns that ECR's daily quota refused it) and reads the status.
pub(super) async fn scan_now(
    registry: &Registry,
    repository: RepositoryName,
    selector: ImageSelector,
    log: CallLog,
) -> Result<Done<pb::ScanSummary>, ApiError> {
    let started = registry.start_image_scan(&log, &repository, &selector).await?;
    let now = Utc::now();
    let digest = match (&started, &selector) {
        (ScanStart::Started { digest, .. }, _) if !digest.is_empty() => digest.clone(),
        (_, ImageSelector::Digest(digest)) => digest.to_string(),
        (_, ImageSelector::Tag(_)) => registry
            .describe_image(&log, &repository, &selector)
            .await?
            .map(|image| image.digest.to_string())
            .ok_or_else(|| {
                not_found(
                    &registry.reference,
                    &repository,
                    &format!(":{}", tag_of(&selector)),
                )
            })?,
    };
    let digest =
        Digest::parse(&digest).map_err(|v| ApiError::internal(&std::io::Error::other(v.to_string())))?;
    let mut report = registry
        .describe_scan_findings(&log, &repository, &digest)
        .await?;
    let limited = started == ScanStart::Limited;
    if let ScanStart::Started { status, .. } = &started
        && report.status == "NOT_SCANNED"
    {
        report.status = status.clone();
        report.description = Some("the scan was started".to_owned());
    }
    let mut summary = summary_message(&registry.reference, &row_of(&repository, &report, now));
    summary.scan_limited = limited;
    summary.next_scan_allowed_at = Some(timestamp(if limited {
        report.completed_at.unwrap_or(now) + SCAN_QUOTA
    } else {
        now + SCAN_QUOTA
    }));
    if limited && summary.description.is_empty() {
        summary.description =
            "ECR allows one basic scan per image per 24 hours; this is the current scan".into();
    }
    Ok(Done {
        elements: json!({"imageDigest": digest.as_str(), "status": report.status, "scanLimited": limited}),
        change: CacheChange::Scan(registry.reference.clone(), repository, report),
        response: summary,
    })
}

pub(super) fn tag_of(selector: &ImageSelector) -> String {
    match selector {
        ImageSelector::Tag(tag) => tag.to_string(),
        ImageSelector::Digest(digest) => digest.to_string(),
    }
}

/// Page position of GetScanFindings: (rank, ordinal) of the last finding.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct FindingPosition(i16, i32);

pub(super) async fn get_scan_findings(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetScanFindingsRequest,
) -> Result<(pb::GetScanFindingsResponse, Value), ApiError> {
    call.caller()?;
    let (registry, repository) = state.locate(&request.registry, &request.repository)?;
    let selector = image_selector(&request.tag, &request.digest)?;
    let mut violations = Vec::new();
    let minimum = severity_filter("minimum_severity", request.minimum_severity)
        .or_record(&mut violations)
        .flatten();
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    let limit = limit.unwrap_or(100);
    call.set_repository(
        &registry.reference,
        registry.reference.repository_arn(&repository),
    );
    state
        .authorize_repository(call, &registry.reference, repository.as_str())
        .await?;
    let digest = digest_of(state, &registry.reference, &repository, &selector).await?;
    let fingerprint = page_token::fingerprint(&(
        &registry.reference.alias,
        repository.as_str(),
        digest.as_str(),
        request.minimum_severity,
    ));
    let key = state.page_key().await?;
    let after: Option<FindingPosition> = key.decode(&request.page_token, &fingerprint)?;
    let pool = state.store.pool();
    let cached = if request.refresh {
        None
    } else {
        scans::get(pool, &registry.reference, repository.as_str(), digest.as_str()).await?
    };
    let row = match cached {
        Some(row) => row,
        None => read_through(state, call, registry, &repository, &digest).await?,
    };
    let codes = minimum.map(Severity::codes_at_or_above).unwrap_or_default();
    let mut findings = scans::findings_page(
        pool,
        &registry.reference,
        repository.as_str(),
        digest.as_str(),
        &codes,
        after.map(|p| (p.0, p.1)),
        limit + 1,
    )
    .await?;
    let next_page_token = next_token(&mut findings, limit, |f| {
        key.encode(&fingerprint, &FindingPosition(scans::rank(f.severity), f.ordinal))
    });
    let covering = scans::covering(pool, &registry.reference, repository.as_str(), digest.as_str()).await?;
    let now = Utc::now();
    let response = pb::GetScanFindingsResponse {
        summary: Some(summary_message(&registry.reference, &row)),
        findings: findings
            .iter()
            .map(|f| pb::Finding {
                name: f.name.clone(),
                severity: severity_to_proto(Severity::from_code(f.severity)) as i32,
                description: f.description.clone().unwrap_or_default(),
                uri: f.uri.clone().unwrap_or_default(),
                package_name: f.package_name.clone().unwrap_or_default(),
                package_version: f.package_version.clone().unwrap_or_default(),
                fixed_in_version: f.fixed_in_version.clone().unwrap_or_default(),
                score: f.score.unwrap_or_default(),
                excepted: covering
                    .iter()
                    .any(|(cve, expires)| *expires > now && cve.eq_ignore_ascii_case(&f.name)),
            })
            .collect(),
        next_page_token,
    };
    let elements =
        json!({"imageDigest": digest.as_str(), "status": row.status, "findings": response.findings.len()});
    Ok((response, elements))
}

/// Reads an image's scan from ECR and caches it.
pub(super) async fn read_through(
    state: &AppState,
    call: &mut Call,
    registry: &Registry,
    repository: &RepositoryName,
    digest: &Digest,
) -> Result<ScanRow, ApiError> {
    let log = CallLog::default();
    let report = registry.describe_scan_findings(&log, repository, digest).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let report = report?;
    let now = Utc::now();
    async {
        let mut tx = state.store.begin().await?;
        scans::store_report(&mut tx, &registry.reference, repository.as_str(), &report, now).await?;
        tx.commit().await.map_err(crate::store::StoreError::from)
    }
    .instrument(crate::store::transaction_span("store_scan_report"))
    .await?;
    state.store.invalidate(&registry.reference, repository.as_str());
    Ok(row_of(repository, &report, now))
}

/// Page position of ListVulnerableImages.
pub(super) type VulnerablePosition = (String, String, String, String);

pub(super) async fn list_vulnerable_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListVulnerableImagesRequest,
) -> Result<(pb::ListVulnerableImagesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let minimum = severity_filter("minimum_severity", request.minimum_severity)
        .or_record(&mut violations)
        .flatten();
    let query = match (request.cve_id.is_empty(), minimum) {
        (false, None) => gate::parse_vulnerability_id("cve_id", &request.cve_id)
            .map(VulnerableQuery::Cve)
            .or_record(&mut violations),
        (true, Some(severity)) => Some(VulnerableQuery::Severities(severity.codes_at_or_above())),
        _ => {
            violations.push(Violation::new(
                "cve_id",
                "vulnerable-images.query",
                "give exactly one of `cve_id` and `minimum_severity`",
            ));
            None
        }
    };
    let registries = state
        .registries_named(&request.registry)
        .or_record(&mut violations)
        .unwrap_or_default();
    let limit = page_token::page_size(request.page_size).or_record(&mut violations);
    let (Some(query), Some(limit), true) = (query, limit, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let scope = call.authorize_list(&state.authz, registries.iter().map(|r| &r.reference))?;
    let keys: Vec<(String, String)> = registries
        .iter()
        .map(|r| (r.reference.account_id.clone(), r.reference.region.clone()))
        .collect();
    let fingerprint = page_token::fingerprint(&(format!("{query:?}"), &keys));
    let key = state.page_key().await?;
    let after: Option<VulnerablePosition> = key.decode(&request.page_token, &fingerprint)?;
    let visibility = crate::api::visibility(&scope, registries.iter().map(|r| &r.reference));
    let mut rows =
        scans::vulnerable_images(state.store.pool(), &visibility, &query, after.as_ref(), limit + 1).await?;
    let next_page_token = next_token(&mut rows, limit, |r| {
        key.encode(
            &fingerprint,
            &(
                r.account_id.clone(),
                r.region.clone(),
                r.repository.clone(),
                r.digest.clone(),
            ),
        )
    });
    let response = pb::ListVulnerableImagesResponse {
        images: rows
            .into_iter()
            .map(|r| pb::VulnerableImage {
                registry: state
                    .registries
                    .alias_of(&r.account_id, &r.region)
                    .unwrap_or_default()
                    .to_owned(),
                counts: Some(pb::SeverityCounts {
                    critical: r.critical,
                    high: r.high,
                    medium: r.medium,
                    low: r.low,
                    informational: r.informational,
                    undefined: r.undefined,
                }),
                repository: r.repository,
                digest: r.digest,
                tags: r.tags,
                push_time: Some(timestamp(r.pushed_at)),
                matching_findings: r.matching,
                pinned: r.pinned,
            })
            .collect(),
        next_page_token,
    };
    let elements = json!({"count": response.images.len()});
    Ok((response, elements))
}
