//! Scan calls: start a basic scan, read an image's findings (all pages, basic
//! and enhanced), and read or replace the registry's scanning configuration.

use aws_sdk_ecr::operation::RequestId;
use aws_sdk_ecr::operation::describe_image_scan_findings::DescribeImageScanFindingsOutput;
use aws_sdk_ecr::types::{
    EnhancedImageScanFinding, ImageIdentifier, ImageScanFinding, RegistryScanningRule, ScanFrequency,
    ScanType, ScanningRepositoryFilter, ScanningRepositoryFilterType,
};
use aws_smithy_types::retry::RetryConfig;
use chrono::{DateTime, Utc};

use super::error::{EcrError, classify};
use super::repositories::collect_pages;
use super::{CallLog, Registry};
use crate::domain::{Digest, Frequency, ImageSelector, RepositoryName, Severity};
pub use crate::domain::{ScanFinding, ScanReport};

/// ECR's largest page for DescribeImageScanFindings.
const PAGE_SIZE: i32 = 1000;

/// What StartImageScan did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStart {
    /// A scan started; ECR's status (IN_PROGRESS, …) and the image's digest.
    Started {
        /// The image's digest.
        digest: String,
        /// ECR's status.
        status: String,
    },
    /// ECR allows one basic scan per image per 24 hours; this one was refused.
    Limited,
}

/// A registry's scanning configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanningSettings {
    /// True for ENHANCED.
    pub enhanced: bool,
    /// Rules: frequency and wildcard repository filters.
    pub rules: Vec<(Frequency, Vec<String>)>,
}

fn image_id(selector: &ImageSelector) -> ImageIdentifier {
    match selector {
        ImageSelector::Tag(tag) => ImageIdentifier::builder().image_tag(tag.as_str()).build(),
        ImageSelector::Digest(digest) => ImageIdentifier::builder().image_digest(digest.as_str()).build(),
    }
}

fn time(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

impl Registry {
    /// Starts a basic scan. ECR's "one scan per image per 24 h" refusal
    /// (LimitExceededException) is [`ScanStart::Limited`], not an error, and is
    /// not retried (the SDK would otherwise treat it as throttling).
    pub async fn start_image_scan(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        selector: &ImageSelector,
    ) -> Result<ScanStart, EcrError> {
        self.budget.acquire("StartImageScan").await;
        let result = self
            .client
            .start_image_scan()
            .registry_id(&self.reference.account_id)
            .repository_name(repository.as_str())
            .image_id(image_id(selector))
            .customize()
            .config_override(aws_sdk_ecr::config::Config::builder().retry_config(RetryConfig::disabled()))
            .send()
            .await;
        match result {
            Ok(output) => {
                log.record(output.request_id());
                Ok(ScanStart::Started {
                    digest: output.image_id.and_then(|id| id.image_digest).unwrap_or_default(),
                    status: output
                        .image_scan_status
                        .and_then(|s| s.status)
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_else(|| "IN_PROGRESS".to_owned()),
                })
            }
            Err(error) => {
                log.record(error.request_id());
                let error = classify("StartImageScan", error);
                if error.code() == "LimitExceededException" {
                    Ok(ScanStart::Limited)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// The image's scan and every finding (all pages). An image ECR has no scan
    /// of reads as status NOT_SCANNED; an image ECR does not have is NotFound.
    pub async fn describe_scan_findings(
        &self,
        log: &CallLog,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<ScanReport, EcrError> {
        let first = std::sync::Mutex::new(None::<DescribeImageScanFindingsOutput>);
        let pages = collect_pages(|token| async {
            self.budget.acquire("DescribeImageScanFindings").await;
            let output = self
                .client
                .describe_image_scan_findings()
                .registry_id(&self.reference.account_id)
                .repository_name(repository.as_str())
                .image_id(image_id(&ImageSelector::Digest(digest.clone())))
                .max_results(PAGE_SIZE)
                .set_next_token(token)
                .send()
                .await
                .inspect_err(|e| log.record(e.request_id()))
                .map_err(|e| classify("DescribeImageScanFindings", e))?;
            log.record(output.request_id());
            let next = output.next_token.clone();
            let findings = output.image_scan_findings.clone();
            let mut held = first.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_none() {
                *held = Some(output);
            }
            Ok((findings.into_iter().collect::<Vec<_>>(), next))
        })
        .await;
        let pages = match pages {
            Ok(pages) => pages,
            Err(EcrError::NotFound { code, .. }) if code == "ScanNotFoundException" => {
                return Ok(ScanReport {
                    digest: digest.to_string(),
                    status: "NOT_SCANNED".to_owned(),
                    description: Some("ECR has no scan of this image".to_owned()),
                    completed_at: None,
                    vulnerability_source_updated_at: None,
                    counts: Vec::new(),
                    findings: Vec::new(),
                });
            }
            Err(error) => return Err(error),
        };
        let first = first.into_inner().unwrap_or_else(|p| p.into_inner());
        let status = first.as_ref().and_then(|o| o.image_scan_status.as_ref());
        let summary = pages.first();
        Ok(ScanReport {
            digest: digest.to_string(),
            status: status
                .and_then(|s| s.status.as_ref())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "PENDING".to_owned()),
            description: status.and_then(|s| s.description.clone()),
            completed_at: time(summary.and_then(|s| s.image_scan_completed_at.as_ref())),
            vulnerability_source_updated_at: time(
                summary.and_then(|s| s.vulnerability_source_updated_at.as_ref()),
            ),
            counts: summary
                .and_then(|s| s.finding_severity_counts.as_ref())
                .map(|counts| {
                    counts
                        .iter()
                        .map(|(severity, n)| (Severity::from_ecr(severity.as_str()), *n))
                        .collect()
                })
                .unwrap_or_default(),
            findings: pages
                .iter()
                .flat_map(|page| {
                    page.findings.iter().flatten().map(basic_finding).chain(
                        page.enhanced_findings
                            .iter()
                            .flatten()
                            .filter_map(enhanced_finding),
                    )
                })
                .collect(),
        })
    }

    /// The registry's scanning configuration.
    pub async fn get_scanning_configuration(&self, log: &CallLog) -> Result<ScanningSettings, EcrError> {
        self.budget.acquire("GetRegistryScanningConfiguration").await;
        let output = self
            .client
            .get_registry_scanning_configuration()
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("GetRegistryScanningConfiguration", e))?;
        log.record(output.request_id());
        let configuration = output.scanning_configuration;
        Ok(ScanningSettings {
            enhanced: configuration.as_ref().and_then(|c| c.scan_type.as_ref()) == Some(&ScanType::Enhanced),
            rules: configuration
                .as_ref()
                .map(|c| c.rules())
                .unwrap_or_default()
                .iter()
                .map(|rule| {
                    (
                        match rule.scan_frequency() {
                            ScanFrequency::ContinuousScan => Frequency::Continuous,
                            ScanFrequency::ScanOnPush => Frequency::ScanOnPush,
                            _ => Frequency::Manual,
                        },
                        rule.repository_filters()
                            .iter()
                            .map(|f| f.filter().to_owned())
                            .collect(),
                    )
                })
                .collect(),
        })
    }

    /// Replaces the registry's scanning configuration.
    pub async fn put_scanning_configuration(
        &self,
        log: &CallLog,
        settings: &ScanningSettings,
    ) -> Result<(), EcrError> {
        let rules = settings
            .rules
            .iter()
            .map(|(frequency, filters)| {
                RegistryScanningRule::builder()
                    .scan_frequency(match frequency {
                        Frequency::ScanOnPush => ScanFrequency::ScanOnPush,
                        Frequency::Continuous => ScanFrequency::ContinuousScan,
                        Frequency::Manual => ScanFrequency::Manual,
                    })
                    .set_repository_filters(Some(
                        filters
                            .iter()
                            .map(|f| {
                                ScanningRepositoryFilter::builder()
                                    .filter(f)
                                    .filter_type(ScanningRepositoryFilterType::Wildcard)
                                    .build()
                                    .map_err(build_error)
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ))
                    .build()
                    .map_err(build_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.budget.acquire("PutRegistryScanningConfiguration").await;
        let output = self
            .client
            .put_registry_scanning_configuration()
            .scan_type(if settings.enhanced {
                ScanType::Enhanced
            } else {
                ScanType::Basic
            })
            .set_rules(Some(rules))
            .send()
            .await
            .inspect_err(|e| log.record(e.request_id()))
            .map_err(|e| classify("PutRegistryScanningConfiguration", e))?;
        log.record(output.request_id());
        Ok(())
    }
}

fn build_error(error: aws_sdk_ecr::error::BuildError) -> EcrError {
    EcrError::Invalid {
        operation: "PutRegistryScanningConfiguration",
        code: "BuildError".to_owned(),
        message: error.to_string(),
    }
}

fn basic_finding(finding: &ImageScanFinding) -> ScanFinding {
    let attribute = |key: &str| {
        finding
            .attributes
            .iter()
            .flatten()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
    };
    ScanFinding {
        name: finding.name.clone().unwrap_or_default(),
        severity: Severity::from_ecr(finding.severity.as_ref().map_or("UNDEFINED", |s| s.as_str())),
        description: finding.description.clone(),
        uri: finding.uri.clone(),
        package_name: attribute("package_name"),
        package_version: attribute("package_version"),
        fixed_in_version: None,
        score: attribute("CVSS3_SCORE")
            .or_else(|| attribute("CVSS2_SCORE"))
            .and_then(|s| s.parse().ok()),
    }
}

fn enhanced_finding(finding: &EnhancedImageScanFinding) -> Option<ScanFinding> {
    let details = finding.package_vulnerability_details.as_ref();
    let package = details.and_then(|d| d.vulnerable_packages.as_ref()?.first());
    Some(ScanFinding {
        name: details
            .and_then(|d| d.vulnerability_id.clone())
            .or_else(|| finding.title.clone())?,
        severity: Severity::from_ecr(finding.severity.as_deref().unwrap_or("UNDEFINED")),
        description: finding.description.clone(),
        uri: details.and_then(|d| d.source_url.clone()),
        package_name: package.and_then(|p| p.name.clone()),
        package_version: package.and_then(|p| p.version.clone()),
        fixed_in_version: package.and_then(|p| p.fixed_in_version.clone()),
        score: (finding.score != 0.0).then_some(finding.score),
    })
}
