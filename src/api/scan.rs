//! `ecrgateway.v1.ScanService`: scan status and findings (cached, read
//! through on demand), the registry scanning configuration, the deploy gate
//! (answered from the in-process cache: no ECR call), and vulnerability
//! exceptions.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use uuid::Uuid;

use super::call::Call;
use super::convert::{time_of, timestamp};
use super::error::{ApiError, invalid, violations_of};
use super::image::{decode_reference, image_selector, resolved_tag_is_immutable, selector_suffix};
use super::mutation::{self, CacheChange, Done, check_request_id};
use super::page_token::{self, next_token};
use super::{AppState, Shared, repository_filter};
use crate::auth::authz::Resource;
use crate::domain::{Digest, ImageSelector, RegistryRef, RepositoryName, Violation, pinned_uri};
use crate::ecr::{CallLog, Registry, ScanReport, ScanStart, ScanningSettings};
use crate::pb;
use crate::pb::scan_service_server::ScanService;
use crate::policy::gate::{self, Frequency, GateFinding, GateImage, GateScan, Reference, Severity};
use crate::store::cache::RepoKey;
use crate::store::image_reads;
use crate::store::scans::{self, DeployFacts, ExceptionFilter, ExceptionRow, ScanRow, VulnerableQuery};

/// How long ECR makes a caller wait between basic scans of one image.
const SCAN_QUOTA: Duration = Duration::hours(24);
/// Longest justification or revocation reason.
const MAX_TEXT: usize = 2048;

/// The ScanService implementation.
#[derive(Debug, Clone)]
pub struct ScanApi {
    state: Shared,
}

impl ScanApi {
    /// A service over the shared state.
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ScanService for ScanApi {
    async fn start_image_scan(
        &self,
        request: Request<pb::StartImageScanRequest>,
    ) -> Result<Response<pb::ScanSummary>, Status> {
        let mut call = Call::start(&request, "StartImageScan", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository,
            "imageTag": request.tag, "imageDigest": request.digest,
        }));
        let result = start_image_scan(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn get_scan_findings(
        &self,
        request: Request<pb::GetScanFindingsRequest>,
    ) -> Result<Response<pb::GetScanFindingsResponse>, Status> {
        let mut call = Call::start(&request, "GetScanFindings", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "repositoryName": request.repository, "imageTag": request.tag,
            "imageDigest": request.digest, "minimumSeverity": request.minimum_severity,
            "pageSize": request.page_size, "pageToken": request.page_token, "refresh": request.refresh,
        }));
        let result = get_scan_findings(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn get_scanning_configuration(
        &self,
        request: Request<pb::GetScanningConfigurationRequest>,
    ) -> Result<Response<pb::ScanningConfiguration>, Status> {
        let mut call = Call::start(&request, "GetScanningConfiguration", true);
        let request = request.into_inner();
        call.set_parameters(json!({"registry": request.registry}));
        let result = get_scanning_configuration(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn update_scanning_configuration(
        &self,
        request: Request<pb::UpdateScanningConfigurationRequest>,
    ) -> Result<Response<pb::ScanningConfiguration>, Status> {
        let mut call = Call::start(&request, "UpdateScanningConfiguration", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "scanType": request.scan_type,
            "rules": request.rules.iter().map(|r| json!({"frequency": r.frequency, "repositoryFilters": r.repository_filters})).collect::<Vec<_>>(),
            "requestId": request.request_id, "validateOnly": request.validate_only,
        }));
        let result = update_scanning_configuration(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn check_deployment(
        &self,
        request: Request<pb::CheckDeploymentRequest>,
    ) -> Result<Response<pb::CheckDeploymentResponse>, Status> {
        let mut call = Call::start(&request, "CheckDeployment", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "registry": request.registry, "reference": request.reference,
            "environment": request.environment, "reportOnly": request.report_only,
        }));
        let result = check_deployment(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn create_vulnerability_exception(
        &self,
        request: Request<pb::CreateVulnerabilityExceptionRequest>,
    ) -> Result<Response<pb::VulnerabilityException>, Status> {
        let mut call = Call::start(&request, "CreateVulnerabilityException", false);
        let request = request.into_inner();
        call.set_parameters(json!({
            "cveId": request.cve_id, "scope": request.scope, "registry": request.registry,
            "namespace": request.namespace, "repositoryName": request.repository, "imageDigest": request.digest,
            "justification": request.justification,
            "expireTime": request.expire_time.as_ref().map(|t| json!({"seconds": t.seconds, "nanos": t.nanos})),
            "requestId": request.request_id,
        }));
        let result = create_exception(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn list_vulnerability_exceptions(
        &self,
        request: Request<pb::ListVulnerabilityExceptionsRequest>,
    ) -> Result<Response<pb::ListVulnerabilityExceptionsResponse>, Status> {
        let mut call = Call::start(&request, "ListVulnerabilityExceptions", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "cveId": request.cve_id, "repositoryName": request.repository, "registry": request.registry,
            "includeInactive": request.include_inactive, "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = list_exceptions(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn revoke_vulnerability_exception(
        &self,
        request: Request<pb::RevokeVulnerabilityExceptionRequest>,
    ) -> Result<Response<pb::VulnerabilityException>, Status> {
        let mut call = Call::start(&request, "RevokeVulnerabilityException", false);
        let request = request.into_inner();
        call.set_parameters(json!({"id": request.id, "reason": request.reason}));
        let result = revoke_exception(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }

    async fn list_vulnerable_images(
        &self,
        request: Request<pb::ListVulnerableImagesRequest>,
    ) -> Result<Response<pb::ListVulnerableImagesResponse>, Status> {
        let mut call = Call::start(&request, "ListVulnerableImages", true);
        let request = request.into_inner();
        call.set_parameters(json!({
            "cveId": request.cve_id, "minimumSeverity": request.minimum_severity, "registry": request.registry,
            "pageSize": request.page_size, "pageToken": request.page_token,
        }));
        let result = list_vulnerable_images(&self.state, &mut call, &request).await;
        call.finish(&self.state.audit, result).await
    }
}

fn not_found(registry: &RegistryRef, repository: &RepositoryName, what: &str) -> ApiError {
    ApiError::NotFound {
        resource_type: "ecr.image",
        resource_name: format!("{}/{}{}", registry.alias, repository, what),
        description: format!(
            "no image {what} in `{repository}` of registry `{}` as of the last sync; if it was pushed just now, \
             call ImageService.RefreshInventory first",
            registry.alias
        ),
    }
}

fn severity_to_proto(severity: Severity) -> pb::Severity {
    match severity {
        Severity::Informational => pb::Severity::Informational,
        Severity::Low => pb::Severity::Low,
        Severity::Medium => pb::Severity::Medium,
        Severity::High => pb::Severity::High,
        Severity::Critical => pb::Severity::Critical,
        Severity::Undefined => pb::Severity::Undefined,
    }
}

/// A request's severity filter: `None` for unset.
fn severity_filter(field: &str, value: i32) -> Result<Option<Severity>, Violation> {
    match pb::Severity::try_from(value) {
        Ok(pb::Severity::Unspecified) => Ok(None),
        Ok(pb::Severity::Informational) => Ok(Some(Severity::Informational)),
        Ok(pb::Severity::Low) => Ok(Some(Severity::Low)),
        Ok(pb::Severity::Medium) => Ok(Some(Severity::Medium)),
        Ok(pb::Severity::High) => Ok(Some(Severity::High)),
        Ok(pb::Severity::Critical) => Ok(Some(Severity::Critical)),
        Ok(pb::Severity::Undefined) => Ok(Some(Severity::Undefined)),
        Err(_) => Err(Violation::new(
            field,
            "enum.unknown-value",
            format!("{value} is not a Severity; use SEVERITY_LOW … SEVERITY_CRITICAL"),
        )),
    }
}

fn counts_message(row: Option<&ScanRow>) -> pb::SeverityCounts {
    row.map(|r| pb::SeverityCounts {
        critical: r.critical,
        high: r.high,
        medium: r.medium,
        low: r.low,
        informational: r.informational,
        undefined: r.undefined,
    })
    .unwrap_or_default()
}

pub(super) fn summary_message(registry: &RegistryRef, row: &ScanRow) -> pb::ScanSummary {
    pb::ScanSummary {
        registry: registry.alias.clone(),
        repository: row.repository.clone(),
        digest: row.digest.clone(),
        status: row.status.clone(),
        description: row.description.clone().unwrap_or_default(),
        completed_at: row.completed_at.map(timestamp),
        vulnerability_source_updated_at: row.vulnerability_source_updated_at.map(timestamp),
        counts: Some(counts_message(Some(row))),
        fetched_at: Some(timestamp(row.fetched_at)),
        next_scan_allowed_at: None,
        scan_limited: false,
    }
}

/// The row a report is stored as.
fn row_of(repository: &RepositoryName, report: &ScanReport, fetched_at: DateTime<Utc>) -> ScanRow {
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
async fn digest_of(
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

async fn start_image_scan(
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
async fn scan_now(
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

fn tag_of(selector: &ImageSelector) -> String {
    match selector {
        ImageSelector::Tag(tag) => tag.to_string(),
        ImageSelector::Digest(digest) => digest.to_string(),
    }
}

/// Page position of GetScanFindings: (rank, ordinal) of the last finding.
#[derive(Debug, Serialize, Deserialize)]
struct FindingPosition(i16, i32);

async fn get_scan_findings(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetScanFindingsRequest,
) -> Result<(pb::GetScanFindingsResponse, Value), ApiError> {
    call.caller()?;
    let (registry, repository) = state.locate(&request.registry, &request.repository)?;
    let selector = image_selector(&request.tag, &request.digest)?;
    let mut violations = Vec::new();
    let minimum = severity_filter("minimum_severity", request.minimum_severity)
        .map_err(|v| violations.push(v))
        .ok()
        .flatten();
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
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
async fn read_through(
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

fn frequency_of(value: i32, field: String) -> Result<Frequency, Violation> {
    match pb::ScanFrequency::try_from(value) {
        Ok(pb::ScanFrequency::ScanOnPush) => Ok(Frequency::ScanOnPush),
        Ok(pb::ScanFrequency::ContinuousScan) => Ok(Frequency::Continuous),
        Ok(pb::ScanFrequency::Manual) => Ok(Frequency::Manual),
        _ => Err(Violation::new(
            field,
            "scanning.frequency",
            "use SCAN_FREQUENCY_SCAN_ON_PUSH or SCAN_FREQUENCY_CONTINUOUS_SCAN",
        )),
    }
}

fn configuration_message(registry: &RegistryRef, settings: &ScanningSettings) -> pb::ScanningConfiguration {
    pb::ScanningConfiguration {
        registry: registry.alias.clone(),
        scan_type: if settings.enhanced {
            pb::ScanType::Enhanced
        } else {
            pb::ScanType::Basic
        } as i32,
        rules: settings
            .rules
            .iter()
            .map(|(frequency, filters)| pb::ScanningRule {
                frequency: match frequency {
                    Frequency::ScanOnPush => pb::ScanFrequency::ScanOnPush,
                    Frequency::Continuous => pb::ScanFrequency::ContinuousScan,
                    Frequency::Manual => pb::ScanFrequency::Manual,
                } as i32,
                repository_filters: filters.clone(),
            })
            .collect(),
    }
}

fn configuration_json(settings: &ScanningSettings) -> Value {
    json!({
        "scanType": if settings.enhanced { "ENHANCED" } else { "BASIC" },
        "rules": settings.rules.iter().map(|(f, filters)| json!({"frequency": format!("{f:?}"), "repositoryFilters": filters})).collect::<Vec<_>>(),
    })
}

async fn get_scanning_configuration(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetScanningConfigurationRequest,
) -> Result<(pb::ScanningConfiguration, Value), ApiError> {
    call.caller()?;
    let registry = state.registry(&request.registry).map_err(|v| invalid(vec![v]))?;
    call.set_registry(&registry.reference);
    call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    let log = CallLog::default();
    let settings = registry.get_scanning_configuration(&log).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let settings = settings?;
    Ok((
        configuration_message(&registry.reference, &settings),
        configuration_json(&settings),
    ))
}

async fn update_scanning_configuration(
    state: &AppState,
    call: &mut Call,
    request: &pb::UpdateScanningConfigurationRequest,
) -> Result<(pb::ScanningConfiguration, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registry = state
        .registry(&request.registry)
        .map_err(|v| violations.push(v))
        .ok();
    violations.extend(check_request_id(&request.request_id));
    let enhanced = match pb::ScanType::try_from(request.scan_type) {
        Ok(pb::ScanType::Basic) => false,
        Ok(pb::ScanType::Enhanced) => true,
        _ => {
            violations.push(Violation::new(
                "scan_type",
                "scanning.scan-type",
                "required: SCAN_TYPE_BASIC or SCAN_TYPE_ENHANCED",
            ));
            false
        }
    };
    let mut rules = Vec::new();
    for (i, rule) in request.rules.iter().enumerate() {
        match frequency_of(rule.frequency, format!("rules[{i}].frequency")) {
            Ok(frequency) => rules.push((frequency, rule.repository_filters.clone())),
            Err(v) => violations.push(v),
        }
    }
    let config = state.policy.config();
    violations.extend(gate::scanning_violations(
        enhanced,
        &rules,
        &config.naming.namespaces,
        config.settings.require_scan_on_push,
    ));
    let Some(registry) = registry.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_registry(&registry.reference);
    call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    let settings = ScanningSettings { enhanced, rules };
    if request.validate_only {
        return Ok((
            configuration_message(&registry.reference, &settings),
            json!({"validateOnly": true, "configuration": configuration_json(&settings)}),
        ));
    }
    let (response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| async move {
            registry
                .put_scanning_configuration(&attempt.log, &settings)
                .await?;
            Ok(Done {
                response: configuration_message(&registry.reference, &settings),
                change: CacheChange::Nothing,
                elements: configuration_json(&settings),
            })
        },
    )
    .await?;
    Ok((response, json!({"replayed": replayed})))
}

/// The environment's rules, or INVALID_ARGUMENT naming the known ones.
pub(super) fn environment_rules<'a>(
    state: &'a AppState,
    environment: &str,
) -> Result<&'a gate::EnvironmentRules, Violation> {
    let environments = &state.policy.config().deploy.environments;
    environments.get(environment).ok_or_else(|| {
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

async fn check_deployment(
    state: &AppState,
    call: &mut Call,
    request: &pb::CheckDeploymentRequest,
) -> Result<(pb::CheckDeploymentResponse, Value), ApiError> {
    call.caller()?;
    let rules = environment_rules(state, &request.environment);
    let decoded = decode_reference(state, &request.registry, &request.reference);
    let (rules, decoded) = match (rules, decoded) {
        (Ok(rules), Ok(decoded)) => (rules, Ok(decoded)),
        (Ok(rules), Err(ApiError::InvalidArgument { violations, .. }))
            if violations
                .iter()
                .all(|v| v.rule == "reference.unmanaged-registry") =>
        {
            (rules, Err(violations))
        }
        (Ok(_), Err(error)) => return Err(error),
        (Err(violation), decoded) => {
            let mut violations = vec![violation];
            if let Err(error) = decoded {
                violations.extend(violations_of(error));
            }
            return Err(invalid(violations));
        }
    };
    let now = Utc::now();
    let (registry, reference) = match decoded {
        Ok(decoded) => decoded,
        Err(violations) => {
            // Not an error: the answer to "may this be deployed?" is no,
            // and it tells nothing about any repository the gateway manages.
            call.allow_unscoped("the reference names a registry the gateway does not manage");
            let reasons = violations
                .into_iter()
                .map(|v| gate::Reason {
                    rule_id: "deploy.registry-unmanaged",
                    message: v.description,
                    findings: Vec::new(),
                })
                .collect();
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
        rules,
        now,
    )
    .await?;
    let found = facts.map(|f| found_image(&registry.reference, repository, f));
    Ok(decision(request, verdict, found, now))
}

/// What a decision reports of the image it judged: digest, pinned URI and scan.
pub(super) fn found_image(
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
pub(super) async fn gate_verdict(
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

pub(super) fn decision(
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
async fn cached_deploy_facts(
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

fn exception_message(state: &AppState, row: &ExceptionRow, now: DateTime<Utc>) -> pb::VulnerabilityException {
    let alias = match (&row.account_id, &row.region) {
        (Some(account), Some(region)) => state
            .registries
            .alias_of(account, region)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{account}/{region}")),
        _ => String::new(),
    };
    pb::VulnerabilityException {
        id: row.id.to_string(),
        cve_id: row.cve_id.clone(),
        scope: match row.scope.as_str() {
            "org" => pb::ExceptionScope::Org,
            "namespace" => pb::ExceptionScope::Namespace,
            "repository" => pb::ExceptionScope::Repository,
            _ => pb::ExceptionScope::Image,
        } as i32,
        registry: alias,
        namespace: row.namespace.clone().unwrap_or_default(),
        repository: row.repository.clone().unwrap_or_default(),
        digest: row.digest.clone().unwrap_or_default(),
        justification: row.justification.clone(),
        created_by: row.created_by.clone(),
        create_time: Some(timestamp(row.created_at)),
        expire_time: Some(timestamp(row.expires_at)),
        revoke_time: row.revoked_at.map(timestamp),
        revoked_by: row.revoked_by.clone().unwrap_or_default(),
        revoke_reason: row.revoke_reason.clone().unwrap_or_default(),
        active: row.revoked_at.is_none() && row.expires_at > now,
    }
}

fn exception_json(message: &pb::VulnerabilityException) -> Value {
    json!({
        "id": message.id, "cveId": message.cve_id, "scope": message.scope, "registry": message.registry,
        "namespace": message.namespace, "repositoryName": message.repository, "imageDigest": message.digest,
        "expireTime": message.expire_time.as_ref().map(|t| t.seconds), "active": message.active,
    })
}

/// Free text a person writes: required, at most [`MAX_TEXT`] characters, no control characters.
fn check_text(field: &str, text: &str, rule: &'static str) -> Option<Violation> {
    if text.trim().is_empty() {
        Some(Violation::new(
            field,
            rule,
            "required: say why, for the people who review it",
        ))
    } else if text.chars().count() > MAX_TEXT {
        Some(Violation::new(
            field,
            rule,
            format!("at most {MAX_TEXT} characters"),
        ))
    } else if text.chars().any(|c| c.is_control() && c != '\n') {
        Some(Violation::new(
            field,
            rule,
            "control characters are not allowed (newlines are)",
        ))
    } else {
        None
    }
}

async fn create_exception(
    state: &AppState,
    call: &mut Call,
    request: &pb::CreateVulnerabilityExceptionRequest,
) -> Result<(pb::VulnerabilityException, Value), ApiError> {
    let creator = call.caller()?.identity.principal.clone();
    let now = Utc::now();
    let mut violations = Vec::new();
    violations.extend(check_request_id(&request.request_id));
    let cve_id = gate::parse_vulnerability_id("cve_id", &request.cve_id)
        .map_err(|v| violations.push(v))
        .ok();
    violations.extend(check_text(
        "justification",
        &request.justification,
        "exception.justification",
    ));
    let max_days = state.policy.config().deploy.max_exception_days;
    let expires_at = time_of("expire_time", request.expire_time.as_ref())
        .and_then(|t| gate::check_expiry("expire_time", t, max_days, now))
        .map_err(|v| violations.push(v))
        .ok();
    let scope = pb::ExceptionScope::try_from(request.scope).unwrap_or(pb::ExceptionScope::Unspecified);
    let unexpected = |field: &str, value: &str, violations: &mut Vec<Violation>| {
        if !value.is_empty() {
            violations.push(Violation::new(
                field,
                "exception.scope-fields",
                format!("`{field}` does not belong to this scope; leave it empty"),
            ));
        }
    };
    let mut target = (None, None, None, None); // (registry, namespace, repository, digest)
    match scope {
        pb::ExceptionScope::Unspecified => violations.push(Violation::new(
            "scope",
            "exception.scope",
            "required: EXCEPTION_SCOPE_ORG, _NAMESPACE, _REPOSITORY or _IMAGE",
        )),
        pb::ExceptionScope::Org => {
            unexpected("registry", &request.registry, &mut violations);
            unexpected("namespace", &request.namespace, &mut violations);
            unexpected("repository", &request.repository, &mut violations);
            unexpected("digest", &request.digest, &mut violations);
        }
        pb::ExceptionScope::Namespace => {
            target.0 = state
                .registry(&request.registry)
                .map_err(|v| violations.push(v))
                .ok();
            match RepositoryName::parse(&format!("{}/x", request.namespace)) {
                Ok(_) if !request.namespace.is_empty() && !request.namespace.contains('/') => {
                    target.1 = Some(request.namespace.clone())
                }
                _ => violations.push(Violation::new(
                    "namespace",
                    "exception.namespace",
                    "give a namespace: the first path segment of repository names, e.g. `payments`",
                )),
            }
            unexpected("repository", &request.repository, &mut violations);
            unexpected("digest", &request.digest, &mut violations);
        }
        pb::ExceptionScope::Repository | pb::ExceptionScope::Image => {
            target.0 = state
                .registry(&request.registry)
                .map_err(|v| violations.push(v))
                .ok();
            unexpected("namespace", &request.namespace, &mut violations);
            target.2 = RepositoryName::parse(&request.repository)
                .map_err(|v| violations.push(v))
                .ok();
            if scope == pb::ExceptionScope::Image {
                target.3 = Digest::parse(&request.digest)
                    .map_err(|v| violations.push(v))
                    .ok();
            } else {
                unexpected("digest", &request.digest, &mut violations);
            }
        }
    }
    let (Some(cve_id), Some(expires_at), true) = (cve_id, expires_at, violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let (registry, namespace, repository, digest) = target;
    if let (Some(registry), Some(repository)) = (registry, &repository) {
        call.set_repository(&registry.reference, registry.reference.repository_arn(repository));
    } else if let Some(registry) = registry {
        call.set_registry(&registry.reference);
    }
    authorize_exception(
        state,
        call,
        registry.map(|r| &r.reference),
        namespace.as_deref(),
        repository.as_ref().map(|r| r.as_str()),
    )
    .await?;
    let row = ExceptionRow {
        id: Uuid::now_v7(),
        cve_id,
        scope: match scope {
            pb::ExceptionScope::Org => "org",
            pb::ExceptionScope::Namespace => "namespace",
            pb::ExceptionScope::Repository => "repository",
            _ => "image",
        }
        .to_owned(),
        account_id: registry.map(|r| r.reference.account_id.clone()),
        region: registry.map(|r| r.reference.region.clone()),
        namespace,
        repository: repository.map(|r| r.to_string()),
        digest: digest.map(|d| d.to_string()),
        justification: request.justification.trim().to_owned(),
        created_by: creator,
        created_at: now,
        expires_at,
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    };
    let message = exception_message(state, &row, now);
    let (response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |_| async move {
            Ok(Done {
                elements: exception_json(&message),
                response: message,
                change: CacheChange::InsertException(Box::new(row)),
            })
        },
    )
    .await?;
    let elements = json!({"replayed": replayed, "exception": exception_json(&response)});
    Ok((response, elements))
}

/// Page position of ListVulnerabilityExceptions.
#[derive(Debug, Serialize, Deserialize)]
struct ExceptionPosition(DateTime<Utc>, Uuid);

async fn list_exceptions(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListVulnerabilityExceptionsRequest,
) -> Result<(pb::ListVulnerabilityExceptionsResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let cve_id = (!request.cve_id.is_empty())
        .then(|| gate::parse_vulnerability_id("cve_id", &request.cve_id))
        .transpose()
        .map_err(|v| violations.push(v))
        .ok()
        .flatten();
    let registry = (!request.registry.is_empty())
        .then(|| state.registry(&request.registry))
        .transpose()
        .map_err(|v| violations.push(v))
        .ok()
        .flatten();
    let repository = repository_filter(&request.repository)
        .map_err(|v| violations.push(v))
        .ok()
        .flatten();
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
    let Some(limit) = limit.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let scope = call.authorize_list(&state.authz, state.registries.all().map(|r| &r.reference))?;
    let filter = ExceptionFilter {
        cve_id,
        registry: registry.map(|r| (r.reference.account_id.clone(), r.reference.region.clone())),
        repository: repository.map(|r| r.to_string()),
        include_inactive: request.include_inactive,
        visibility: super::visibility(&scope, state.registries.all().map(|r| &r.reference)),
    };
    let fingerprint = page_token::fingerprint(&(
        &filter.cve_id,
        &filter.registry,
        &filter.repository,
        filter.include_inactive,
    ));
    let key = state.page_key().await?;
    let after: Option<ExceptionPosition> = key.decode(&request.page_token, &fingerprint)?;
    let now = Utc::now();
    let mut rows = scans::list_exceptions(
        state.store.pool(),
        &filter,
        now,
        after.map(|p| (p.0, p.1)),
        limit + 1,
    )
    .await?;
    let next_page_token = next_token(&mut rows, limit, |r| {
        key.encode(&fingerprint, &ExceptionPosition(r.created_at, r.id))
    });
    let response = pb::ListVulnerabilityExceptionsResponse {
        exceptions: rows.iter().map(|r| exception_message(state, r, now)).collect(),
        next_page_token,
    };
    let elements = json!({"count": response.exceptions.len()});
    Ok((response, elements))
}

async fn revoke_exception(
    state: &AppState,
    call: &mut Call,
    request: &pb::RevokeVulnerabilityExceptionRequest,
) -> Result<(pb::VulnerabilityException, Value), ApiError> {
    let revoker = call.caller()?.identity.principal.clone();
    let mut violations = Vec::new();
    let id = Uuid::parse_str(&request.id)
        .map_err(|_| {
            violations.push(Violation::new(
                "id",
                "exception.id",
                "give the exception's id (a UUID, as CreateVulnerabilityException returned it)",
            ))
        })
        .ok();
    violations.extend(check_text("reason", &request.reason, "exception.revoke-reason"));
    let Some(id) = id.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    let existing = scans::get_exception(state.store.pool(), id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            resource_type: "ecr-gateway.vulnerability-exception",
            resource_name: id.to_string(),
            description: format!(
                "no vulnerability exception {id}; ListVulnerabilityExceptions with include_inactive shows them all"
            ),
        })?;
    let registry = match (&existing.account_id, &existing.region) {
        (Some(account), Some(region)) => state
            .registries
            .all()
            .find(|r| &r.reference.account_id == account && &r.reference.region == region)
            .map(|r| r.reference.clone()),
        _ => None,
    };
    match authorize_exception(
        state,
        call,
        registry.as_ref(),
        existing.namespace.as_deref(),
        existing.repository.as_deref(),
    )
    .await
    {
        // To a caller who may not even list it, the denial names it by its id
        // only (the usual one names its repository or namespace).
        Err(ApiError::PermissionDenied { .. }) if !exception_readable(state, call, &existing)? => {
            return Err(call.denied_by_id(&format!("vulnerability exception `{id}`")));
        }
        other => other?,
    }
    let now = Utc::now();
    let mut revoked = existing.clone();
    let change = if existing.revoked_at.is_some() {
        // Already revoked: answer with it as it is.
        CacheChange::Nothing
    } else {
        revoked.revoked_at = Some(now);
        revoked.revoked_by = Some(revoker.clone());
        revoked.revoke_reason = Some(request.reason.trim().to_owned());
        CacheChange::RevokeException {
            id,
            by: revoker,
            reason: request.reason.trim().to_owned(),
            at: now,
        }
    };
    let message = exception_message(state, &revoked, now);
    let (response, _) = mutation::run(
        &state.store,
        call,
        "",
        request,
        state.mutation_lease,
        |_| async move {
            Ok(Done {
                elements: exception_json(&message),
                response: message,
                change,
            })
        },
    )
    .await?;
    let elements = json!({"exception": exception_json(&response)});
    Ok((response, elements))
}

/// Page position of ListVulnerableImages.
type VulnerablePosition = (String, String, String, String);

async fn list_vulnerable_images(
    state: &AppState,
    call: &mut Call,
    request: &pb::ListVulnerableImagesRequest,
) -> Result<(pb::ListVulnerableImagesResponse, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let minimum = severity_filter("minimum_severity", request.minimum_severity)
        .map_err(|v| violations.push(v))
        .ok()
        .flatten();
    let query = match (request.cve_id.is_empty(), minimum) {
        (false, None) => gate::parse_vulnerability_id("cve_id", &request.cve_id)
            .map(VulnerableQuery::Cve)
            .map_err(|v| violations.push(v))
            .ok(),
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
        .map_err(|v| violations.push(v))
        .unwrap_or_default();
    let limit = page_token::page_size(request.page_size)
        .map_err(|e| violations.extend(violations_of(e)))
        .ok();
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
    let visibility = super::visibility(&scope, registries.iter().map(|r| &r.reference));
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

/// Authorizes a call on a vulnerability exception's scope: its repository,
/// its namespace, or (org-wide) every registry.
async fn authorize_exception(
    state: &AppState,
    call: &mut Call,
    registry: Option<&crate::domain::RegistryRef>,
    namespace: Option<&str>,
    repository: Option<&str>,
) -> Result<(), ApiError> {
    match (registry, namespace, repository) {
        (Some(registry), _, Some(repository)) => state.authorize_repository(call, registry, repository).await,
        (Some(registry), Some(namespace), None) => call.authorize(
            &state.authz,
            &Resource::Namespace {
                registry: registry.clone(),
                namespace: namespace.to_owned(),
            },
        ),
        // An org-wide exception applies in every registry: each must allow it.
        _ => {
            for registry in state.registries.all() {
                call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
            }
            Ok(())
        }
    }
}

/// Whether the caller may see `row` where ListVulnerabilityExceptions lists
/// it: org-wide exceptions everyone (they apply to everyone), the others
/// where the caller may read their repository, namespace or registry.
fn exception_readable(state: &AppState, call: &Call, row: &ExceptionRow) -> Result<bool, ApiError> {
    let (Some(account), Some(region)) = (&row.account_id, &row.region) else {
        return Ok(true);
    };
    let Some(registry) = state.registries.at(account, region) else {
        return Ok(false);
    };
    let identity = &call.caller()?.identity;
    let scope = state
        .authz
        .scope(identity, "ListVulnerabilityExceptions", [&registry.reference]);
    let alias = registry.reference.alias.as_str();
    Ok(match (&row.repository, &row.namespace) {
        (Some(repository), _) => scope.allows(alias, repository),
        (None, Some(namespace)) => scope.allows(alias, &format!("{namespace}/")),
        (None, None) => scope.allows_all(alias),
    })
}
