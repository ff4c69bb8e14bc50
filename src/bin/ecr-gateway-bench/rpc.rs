//! The RPCs `load` drives, each built from the seeded data set: which one
//! ([`Rpc`]), the call itself with the benchmark's identity, and the page
//! tokens the deep-page listing starts from.

use clap::ValueEnum;
use ecr_gateway::pb;

use crate::audit_seed::AUDIT_NAMES;
use crate::seed::{PREVIEW_REPOSITORY, digest, repository_name, tags};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Rpc {
    /// grpc.health.v1.Health/Check
    Health,
    /// ImageService/ResolveImage by tag
    Resolve,
    /// ImageService/ListImages, first page of 100
    ListFirst,
    /// ImageService/ListImages, the 5th page of 100
    ListDeep,
    /// ImageService/SearchImages by digest
    SearchDigest,
    /// ScanService/CheckDeployment by digest, environment prod
    Check,
    /// CleanupService/PreviewCleanup of the big repository (`seed-preview`), first page
    Preview,
    /// AuditService/LookupAuditEvents by principal, newest 100
    LookupPrincipal,
    /// AuditService/LookupAuditEvents by event name in the last day
    LookupNameDay,
    /// AuditService/LookupAuditEvents by resource ARN prefix (a namespace), mutating calls only
    LookupResourcePrefix,
    /// AuditService/LookupAuditEvents of one principal's errors
    LookupErrors,
    /// AuditService/LookupAuditEvents, no filter (the newest 100)
    LookupNewest,
    /// ComplianceService/ListPolicyViolations of a namespace (`payments/` or `search/`), a page of 100
    Violations,
    /// ComplianceService/ListPolicyViolations of one rule (a page of 100 of every registry)
    ViolationsRule,
    /// ComplianceService/GetComplianceSummary of every registry
    ComplianceSummary,
}

fn with_identity<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-ecr-gateway-principal",
        tonic::metadata::MetadataValue::from_static("bench"),
    );
    // The benchmark reads every namespace: a platform admin under deploy/policies.
    request.metadata_mut().insert(
        "x-ecr-gateway-groups",
        tonic::metadata::MetadataValue::from_static("platform-admins"),
    );
    request
}

pub(crate) async fn call(
    channel: &tonic::transport::Channel,
    rpc: Rpc,
    n: usize,
    repositories: usize,
    per_repository: usize,
    deep_tokens: &[(String, String)],
) -> String {
    // Spread requests over the seeded set with a multiplicative hash.
    let spread = n.wrapping_mul(2_654_435_761) % (repositories * per_repository);
    let (r, mut i) = (spread / per_repository, spread % per_repository);
    if tags(i).is_empty() {
        i = (i + 1) % per_repository;
    }
    let mut images = pb::image_service_client::ImageServiceClient::new(channel.clone());
    let result = match rpc {
        Rpc::Health => tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ()),
        Rpc::Resolve => {
            let tag = tags(i).into_iter().next().unwrap_or_default();
            images
                .resolve_image(with_identity(pb::ResolveImageRequest {
                    reference: format!("{}:{tag}", repository_name(r)),
                    ..Default::default()
                }))
                .await
                .map(|_| ())
        }
        Rpc::ListFirst => images
            .list_images(with_identity(pb::ListImagesRequest {
                repository: repository_name(r),
                page_size: 100,
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        Rpc::ListDeep => {
            let (repository, token) = &deep_tokens[n % deep_tokens.len()];
            images
                .list_images(with_identity(pb::ListImagesRequest {
                    repository: repository.clone(),
                    page_size: 100,
                    page_token: token.clone(),
                    ..Default::default()
                }))
                .await
                .map(|_| ())
        }
        Rpc::Check => pb::scan_service_client::ScanServiceClient::new(channel.clone())
            .check_deployment(with_identity(pb::CheckDeploymentRequest {
                reference: format!("{}@{}", repository_name(r), digest(r, i)),
                environment: "prod".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        Rpc::Preview => pb::cleanup_service_client::CleanupServiceClient::new(channel.clone())
            .preview_cleanup(with_identity(pb::PreviewCleanupRequest {
                repository: repository_name(PREVIEW_REPOSITORY),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        Rpc::LookupPrincipal
        | Rpc::LookupNameDay
        | Rpc::LookupResourcePrefix
        | Rpc::LookupErrors
        | Rpc::LookupNewest => {
            let mut request = pb::LookupAuditEventsRequest::default();
            match rpc {
                Rpc::LookupPrincipal => request.principal = format!("user-{}@example.com", spread % 1000),
                Rpc::LookupNameDay => {
                    request.event_name = AUDIT_NAMES[spread % AUDIT_NAMES.len()].into();
                    request.start_time = Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - 86_400,
                        nanos: 0,
                    });
                }
                Rpc::LookupResourcePrefix => {
                    request.resource_arn = format!(
                        "arn:aws:ecr:us-east-1:123456789012:repository/team-{}/",
                        spread % 50
                    );
                    request.resource_prefix = true;
                    request.read_only = pb::ReadOnlyFilter::False as i32;
                }
                Rpc::LookupErrors => {
                    request.principal = format!("user-{}@example.com", spread % 1000);
                    request.error_code = "*".into();
                }
                _ => {}
            }
            pb::audit_service_client::AuditServiceClient::new(channel.clone())
                .lookup_audit_events(with_identity(request))
                .await
                .map(|_| ())
        }
        Rpc::Violations | Rpc::ViolationsRule => {
            let mut request = pb::ListPolicyViolationsRequest {
                page_size: 100,
                ..Default::default()
            };
            match rpc {
                Rpc::Violations => request.prefix = ["payments/", "search/"][n % 2].into(),
                _ => request.rule = "settings.scan-on-push".into(),
            }
            pb::compliance_service_client::ComplianceServiceClient::new(channel.clone())
                .list_policy_violations(with_identity(request))
                .await
                .map(|_| ())
        }
        Rpc::ComplianceSummary => {
            pb::compliance_service_client::ComplianceServiceClient::new(channel.clone())
                .get_compliance_summary(with_identity(pb::GetComplianceSummaryRequest::default()))
                .await
                .map(|_| ())
        }
        Rpc::SearchDigest => images
            .search_images(with_identity(pb::SearchImagesRequest {
                digest: digest(r, i),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => "OK".into(),
        Err(status) => format!("{:?}", status.code()),
    }
}

/// Tokens of the 5th page of 100 for the first `count` repositories.
pub(crate) async fn deep_tokens(
    channel: &tonic::transport::Channel,
    count: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut client = pb::image_service_client::ImageServiceClient::new(channel.clone());
    let mut tokens = Vec::new();
    for r in 0..count {
        let mut token = String::new();
        for _ in 0..4 {
            let page = client
                .list_images(with_identity(pb::ListImagesRequest {
                    repository: repository_name(r),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            token = page.next_page_token;
        }
        tokens.push((repository_name(r), token));
    }
    Ok(tokens)
}
