//! `ecrgateway.v1.ScanService`: scan status and findings (cached, read
//! through on demand), the registry scanning configuration, the deploy gate
//! (answered from the in-process cache: no ECR call), and vulnerability
//! exceptions.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument as _;
use uuid::Uuid;

use super::call::Call;
use super::convert::{time_of, timestamp};
use super::error::{ApiError, OrRecord as _, invalid, violations_of};
use super::image::{Located, image_selector, locate_reference, resolved_tag_is_immutable, selector_suffix};
use super::mutation::{self, CacheChange, Done, check_request_id};
use super::page_token::{self, next_token};
use super::{AppState, repository_filter};
use crate::auth::authz::Resource;
use crate::domain::{Digest, ImageSelector, RegistryRef, RepositoryName, Violation, pinned_uri};
use crate::ecr::{CallLog, Registry, ScanReport, ScanStart, ScanningSettings};
use crate::pb;
use crate::pb::scan_service_server::ScanService;
use crate::policy::gate::{self, Frequency, GateFinding, GateImage, GateScan, Reference, Severity};
use crate::store::cache::RepoKey;
use crate::store::image_reads;
use crate::store::scans::{self, DeployFacts, ExceptionFilter, ExceptionRow, ScanRow, VulnerableQuery};

mod configuration;
pub(super) mod deploy_gate;
mod exceptions;
mod findings;

use configuration::*;
use deploy_gate::*;
use exceptions::*;
use findings::*;

/// How long ECR makes a caller wait between basic scans of one image.
const SCAN_QUOTA: Duration = Duration::hours(24);
/// Longest justification or revocation reason.
const MAX_TEXT: usize = 2048;

/// The ScanService implementation.
pub type ScanApi = super::Api;

super::rpc::unary_rpcs! {
    ScanService, ScanApi, state {
        start_image_scan(StartImageScanRequest) -> ScanSummary = "StartImageScan", Write, start_image_scan;
        get_scan_findings(GetScanFindingsRequest) -> GetScanFindingsResponse = "GetScanFindings", Read, get_scan_findings;
        get_scanning_configuration(GetScanningConfigurationRequest) -> ScanningConfiguration = "GetScanningConfiguration", Read, get_scanning_configuration;
        update_scanning_configuration(UpdateScanningConfigurationRequest) -> ScanningConfiguration = "UpdateScanningConfiguration", Write, update_scanning_configuration;
        check_deployment(CheckDeploymentRequest) -> CheckDeploymentResponse = "CheckDeployment", Read, check_deployment;
        create_vulnerability_exception(CreateVulnerabilityExceptionRequest) -> VulnerabilityException = "CreateVulnerabilityException", Write, create_exception;
        list_vulnerability_exceptions(ListVulnerabilityExceptionsRequest) -> ListVulnerabilityExceptionsResponse = "ListVulnerabilityExceptions", Read, list_exceptions;
        revoke_vulnerability_exception(RevokeVulnerabilityExceptionRequest) -> VulnerabilityException = "RevokeVulnerabilityException", Write, revoke_exception;
        list_vulnerable_images(ListVulnerableImagesRequest) -> ListVulnerableImagesResponse = "ListVulnerableImages", Read, list_vulnerable_images;
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
