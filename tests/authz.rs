//! Authorization against the real server and the default policy
//! (deploy/policies): every RPC × every role of docs/security.md — once with
//! insecure-dev headers, once with real credentials (OIDC tokens for people,
//! an mTLS client certificate for the deploy service) — list filtering, the
//! decision in the audit event, and reloading the policy on SIGHUP while
//! calls are in flight.

#[path = "common/authn.rs"]
mod authn_support;
mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::{Gateway, Moto, TestDb, as_user, config, tagged_repository, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::audit_service_client::AuditServiceClient;
use ecr_gateway::pb::cleanup_service_client::CleanupServiceClient;
use ecr_gateway::pb::compliance_service_client::ComplianceServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::registry_access_service_client::RegistryAccessServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use ecr_gateway::pb::scan_service_client::ScanServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// A lifecycle policy ECR accepts.
const POLICY: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged images after 30 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A role of docs/security.md, as insecure-dev headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    TeamMember,
    OtherTeam,
    Deployer,
    Reader,
    Admin,
    Anonymous,
}

const ROLES: [Role; 6] = [
    Role::TeamMember,
    Role::OtherTeam,
    Role::Deployer,
    Role::Reader,
    Role::Admin,
    Role::Anonymous,
];

/// How a caller proves who it is.
#[derive(Clone)]
enum Credential {
    /// insecure-dev headers: principal and groups.
    Headers(&'static str, &'static str),
    /// `authorization: Bearer <token>`.
    Token(String),
    /// The client certificate of the channel, or nothing at all.
    Channel,
}

/// A role's way in: its channel and its credential.
#[derive(Clone)]
struct Caller {
    channel: Channel,
    credential: Credential,
}

impl Caller {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        match &self.credential {
            Credential::Headers(principal, groups) => as_user(message, principal, groups),
            Credential::Token(token) => authn_support::with_token(message, token),
            Credential::Channel => tonic::Request::new(message),
        }
    }

    /// The insecure-dev caller of `role` on `channel`.
    fn headers(role: Role, channel: &Channel) -> Caller {
        let credential = match role {
            Role::TeamMember => Credential::Headers("alice@example.com", "payments"),
            Role::OtherTeam => Credential::Headers("sam@example.com", "search"),
            Role::Deployer => Credential::Headers("deploy-bot", "deployers"),
            Role::Reader => Credential::Headers("rita@example.com", "engineering"),
            Role::Admin => Credential::Headers("root@example.com", "platform-admins"),
            Role::Anonymous => Credential::Channel,
        };
        Caller {
            channel: channel.clone(),
            credential,
        }
    }
}

impl Role {
    fn request<T>(self, message: T) -> tonic::Request<T> {
        match self {
            Role::TeamMember => as_user(message, "alice@example.com", "payments"),
            Role::OtherTeam => as_user(message, "sam@example.com", "search"),
            Role::Deployer => as_user(message, "deploy-bot", "deployers"),
            Role::Reader => as_user(message, "rita@example.com", "engineering"),
            Role::Admin => as_user(message, "root@example.com", "platform-admins"),
            Role::Anonymous => tonic::Request::new(message),
        }
    }
}

/// The action groups of src/auth/schema.cedarschema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// In `read` only.
    Read,
    /// In `read` and `deploy` (ResolveImage, CheckDeployment).
    ReadDeploy,
    /// In `write` only.
    Write,
    /// In `write` and `deploy` (PinImage, UnpinImage).
    WriteDeploy,
    /// In `admin`.
    Admin,
    /// A list or search: filters, never denies.
    List,
    /// GetScanningConfiguration of the registry: every authenticated caller.
    RegistryStatus,
}

/// What the default policy says, for a call on a `payments/…` repository.
fn expected(kind: Kind, role: Role) -> Code {
    use Role::*;
    if role == Anonymous {
        return Code::Unauthenticated;
    }
    let allowed = match kind {
        Kind::List | Kind::RegistryStatus => true,
        Kind::Read => matches!(role, TeamMember | Reader | Admin),
        Kind::ReadDeploy => matches!(role, TeamMember | Reader | Deployer | Admin),
        Kind::Write => matches!(role, TeamMember | Admin),
        Kind::WriteDeploy => matches!(role, TeamMember | Deployer | Admin),
        Kind::Admin => role == Admin,
    };
    if allowed { Code::Ok } else { Code::PermissionDenied }
}

type Answer = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

struct Rpc {
    name: &'static str,
    kind: Kind,
    call: Box<dyn Fn(&Caller) -> Answer + Send + Sync>,
}

struct Fixture {
    repository: String,
    run_id: String,
    exception_id: String,
    /// A remediation run alice (the team member) started.
    remediation_id: String,
}

macro_rules! rpc {
    ($table:ident, $fixture:ident, $name:literal, $kind:expr, $client:ident . $method:ident, $message:expr) => {{
        #[allow(unused_variables)]
        let repository = $fixture.repository.clone();
        #[allow(unused_variables)]
        let run_id = $fixture.run_id.clone();
        #[allow(unused_variables)]
        let exception_id = $fixture.exception_id.clone();
        #[allow(unused_variables)]
        let remediation_id = $fixture.remediation_id.clone();
        $table.push(Rpc {
            name: $name,
            kind: $kind,
            call: Box::new(move |caller: &Caller| {
                let mut client = $client::new(caller.channel.clone());
                let request = caller.request($message(&repository, &run_id, &exception_id, &remediation_id));
                Box::pin(async move { client.$method(request).await.map(|_| ()) })
            }),
        });
    }};
}

fn in_days(days: i64) -> Option<prost_types::Timestamp> {
    let t = chrono::Utc::now() + chrono::Duration::days(days);
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

/// Every RPC of the five services, each with a valid request about the
/// fixture repository (`payments/…`). Writes that would destroy the fixture
/// are `validate_only` (authorization runs before validation stops them).
fn table(f: &Fixture) -> Vec<Rpc> {
    let mut t = Vec::new();
    type S = str;
    // RepositoryService
    rpc!(
        t,
        f,
        "CreateRepository",
        Kind::Write,
        RepositoryServiceClient.create_repository,
        |r: &S, _: &S, _: &S, _: &S| pb::CreateRepositoryRequest {
            validate_only: true,
            ..tagged_repository(&format!("{r}-new"))
        }
    );
    rpc!(
        t,
        f,
        "GetRepository",
        Kind::Read,
        RepositoryServiceClient.get_repository,
        |r: &S, _: &S, _: &S, _: &S| pb::GetRepositoryRequest {
            repository: r.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "ListRepositories",
        Kind::List,
        RepositoryServiceClient.list_repositories,
        |_: &S, _: &S, _: &S, _: &S| pb::ListRepositoriesRequest::default()
    );
    rpc!(
        t,
        f,
        "UpdateRepository",
        Kind::Write,
        RepositoryServiceClient.update_repository,
        |r: &S, _: &S, _: &S, _: &S| pb::UpdateRepositoryRequest {
            repository: r.into(),
            settings: Some(pb::RepositorySettings {
                scan_on_push: Some(true),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["scan_on_push".into()]
            }),
            validate_only: true,
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "DeleteRepository",
        Kind::Write,
        RepositoryServiceClient.delete_repository,
        |r: &S, _: &S, _: &S, _: &S| pb::DeleteRepositoryRequest {
            repository: r.into(),
            validate_only: true,
            ..Default::default()
        }
    );
    // ImageService
    rpc!(
        t,
        f,
        "ListImages",
        Kind::Read,
        ImageServiceClient.list_images,
        |r: &S, _: &S, _: &S, _: &S| pb::ListImagesRequest {
            repository: r.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "GetImage",
        Kind::Read,
        ImageServiceClient.get_image,
        |r: &S, _: &S, _: &S, _: &S| pb::GetImageRequest {
            repository: r.into(),
            tag: "v1".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "ResolveImage",
        Kind::ReadDeploy,
        ImageServiceClient.resolve_image,
        |r: &S, _: &S, _: &S, _: &S| pb::ResolveImageRequest {
            reference: format!("{r}:v1"),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "SearchImages",
        Kind::List,
        ImageServiceClient.search_images,
        |_: &S, _: &S, _: &S, _: &S| pb::SearchImagesRequest {
            tag_glob: "v*".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "WatchImages",
        Kind::List,
        ImageServiceClient.watch_images,
        |_: &S, _: &S, _: &S, _: &S| pb::WatchImagesRequest::default()
    );
    rpc!(
        t,
        f,
        "RefreshInventory",
        Kind::Write,
        ImageServiceClient.refresh_inventory,
        |r: &S, _: &S, _: &S, _: &S| pb::RefreshInventoryRequest {
            repository: r.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "GetSyncStatus",
        Kind::Read,
        ImageServiceClient.get_sync_status,
        |r: &S, _: &S, _: &S, _: &S| pb::GetSyncStatusRequest {
            repository: r.into(),
            ..Default::default()
        }
    );
    // PromoteImage is authorized as PullImages on the source and PushImages
    // on the target (here the same repository): a write.
    rpc!(
        t,
        f,
        "PromoteImage",
        Kind::Write,
        ImageServiceClient.promote_image,
        |r: &S, _: &S, _: &S, _: &S| pb::PromoteImageRequest {
            repository: r.into(),
            tag: "v1".into(),
            target_tag: "v1-promoted".into(),
            ..Default::default()
        }
    );
    // ScanService
    rpc!(
        t,
        f,
        "StartImageScan",
        Kind::Write,
        ScanServiceClient.start_image_scan,
        |r: &S, _: &S, _: &S, _: &S| pb::StartImageScanRequest {
            repository: r.into(),
            tag: "v1".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "GetScanFindings",
        Kind::Read,
        ScanServiceClient.get_scan_findings,
        |r: &S, _: &S, _: &S, _: &S| pb::GetScanFindingsRequest {
            repository: r.into(),
            tag: "v1".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "GetScanningConfiguration",
        Kind::RegistryStatus,
        ScanServiceClient.get_scanning_configuration,
        |_: &S, _: &S, _: &S, _: &S| pb::GetScanningConfigurationRequest::default()
    );
    rpc!(
        t,
        f,
        "UpdateScanningConfiguration",
        Kind::Admin,
        ScanServiceClient.update_scanning_configuration,
        |_: &S, _: &S, _: &S, _: &S| pb::UpdateScanningConfigurationRequest {
            scan_type: pb::ScanType::Basic as i32,
            rules: vec![pb::ScanningRule {
                frequency: pb::ScanFrequency::ScanOnPush as i32,
                repository_filters: vec!["*".into()],
            }],
            validate_only: true,
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "CheckDeployment",
        Kind::ReadDeploy,
        ScanServiceClient.check_deployment,
        |r: &S, _: &S, _: &S, _: &S| pb::CheckDeploymentRequest {
            reference: format!("{r}:v1"),
            environment: "prod".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "CreateVulnerabilityException",
        Kind::Admin,
        ScanServiceClient.create_vulnerability_exception,
        |r: &S, _: &S, _: &S, _: &S| pb::CreateVulnerabilityExceptionRequest {
            cve_id: "CVE-2024-3094".into(),
            scope: pb::ExceptionScope::Repository as i32,
            repository: r.into(),
            justification: "not reachable in this service".into(),
            expire_time: in_days(7),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "ListVulnerabilityExceptions",
        Kind::List,
        ScanServiceClient.list_vulnerability_exceptions,
        |_: &S, _: &S, _: &S, _: &S| pb::ListVulnerabilityExceptionsRequest::default()
    );
    rpc!(
        t,
        f,
        "RevokeVulnerabilityException",
        Kind::Admin,
        ScanServiceClient.revoke_vulnerability_exception,
        |_: &S, _: &S, e: &S, _: &S| pb::RevokeVulnerabilityExceptionRequest {
            id: e.into(),
            reason: "fixed upstream".into()
        }
    );
    rpc!(
        t,
        f,
        "ListVulnerableImages",
        Kind::List,
        ScanServiceClient.list_vulnerable_images,
        |_: &S, _: &S, _: &S, _: &S| pb::ListVulnerableImagesRequest {
            cve_id: "CVE-2024-3094".into(),
            ..Default::default()
        }
    );
    // ComplianceService
    rpc!(
        t,
        f,
        "ListPolicyViolations",
        Kind::List,
        ComplianceServiceClient.list_policy_violations,
        |_: &S, _: &S, _: &S, _: &S| pb::ListPolicyViolationsRequest::default()
    );
    rpc!(
        t,
        f,
        "GetComplianceSummary",
        Kind::List,
        ComplianceServiceClient.get_compliance_summary,
        |_: &S, _: &S, _: &S, _: &S| pb::GetComplianceSummaryRequest::default()
    );
    rpc!(
        t,
        f,
        "RemediateRepositories",
        Kind::Write,
        ComplianceServiceClient.remediate_repositories,
        |r: &S, _: &S, _: &S, _: &S| pb::RemediateRepositoriesRequest {
            repositories: vec![r.into()],
            dry_run: true,
            ..Default::default()
        }
    );
    // The run's starter (alice) and those the policy lets act on the registry's runs (admins).
    rpc!(
        t,
        f,
        "GetRemediationRun",
        Kind::Write,
        ComplianceServiceClient.get_remediation_run,
        |_: &S, _: &S, _: &S, id: &S| pb::GetRemediationRunRequest { id: id.into() }
    );
    rpc!(
        t,
        f,
        "ListRemediationRuns",
        Kind::List,
        ComplianceServiceClient.list_remediation_runs,
        |_: &S, _: &S, _: &S, _: &S| pb::ListRemediationRunsRequest::default()
    );
    rpc!(
        t,
        f,
        "CancelRemediationRun",
        Kind::Write,
        ComplianceServiceClient.cancel_remediation_run,
        |_: &S, _: &S, _: &S, id: &S| pb::CancelRemediationRunRequest { id: id.into() }
    );
    rpc!(
        t,
        f,
        "GetCreationTemplates",
        Kind::Admin,
        ComplianceServiceClient.get_creation_templates,
        |_: &S, _: &S, _: &S, _: &S| pb::GetCreationTemplatesRequest::default()
    );
    rpc!(
        t,
        f,
        "SyncCreationTemplates",
        Kind::Admin,
        ComplianceServiceClient.sync_creation_templates,
        |_: &S, _: &S, _: &S, _: &S| pb::SyncCreationTemplatesRequest {
            validate_only: true,
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "ListPullThroughCacheRules",
        Kind::Admin,
        ComplianceServiceClient.list_pull_through_cache_rules,
        |_: &S, _: &S, _: &S, _: &S| pb::ListPullThroughCacheRulesRequest::default()
    );
    // CleanupService
    rpc!(
        t,
        f,
        "DeleteImages",
        Kind::Write,
        CleanupServiceClient.delete_images,
        |r: &S, _: &S, _: &S, _: &S| pb::DeleteImagesRequest {
            repository: r.into(),
            digests: vec![DIGEST.into()],
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "PinImage",
        Kind::WriteDeploy,
        CleanupServiceClient.pin_image,
        |r: &S, _: &S, _: &S, _: &S| pb::PinImageRequest {
            repository: r.into(),
            digest: DIGEST.into(),
            holder: "deploy/prod".into(),
            reason: "running in prod".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "UnpinImage",
        Kind::WriteDeploy,
        CleanupServiceClient.unpin_image,
        |r: &S, _: &S, _: &S, _: &S| pb::UnpinImageRequest {
            repository: r.into(),
            digest: DIGEST.into(),
            holder: "deploy/prod".into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "ListPins",
        Kind::List,
        CleanupServiceClient.list_pins,
        |_: &S, _: &S, _: &S, _: &S| pb::ListPinsRequest::default()
    );
    rpc!(
        t,
        f,
        "GetLifecyclePolicy",
        Kind::Read,
        CleanupServiceClient.get_lifecycle_policy,
        |r: &S, _: &S, _: &S, _: &S| pb::GetLifecyclePolicyRequest {
            repository: r.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "SetLifecyclePolicy",
        Kind::Write,
        CleanupServiceClient.set_lifecycle_policy,
        |r: &S, _: &S, _: &S, _: &S| pb::SetLifecyclePolicyRequest {
            repository: r.into(),
            policy_text: POLICY.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "DeleteLifecyclePolicy",
        Kind::Write,
        CleanupServiceClient.delete_lifecycle_policy,
        |r: &S, _: &S, _: &S, _: &S| pb::DeleteLifecyclePolicyRequest {
            repository: r.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "PreviewCleanup",
        Kind::Read,
        CleanupServiceClient.preview_cleanup,
        |r: &S, _: &S, _: &S, _: &S| pb::PreviewCleanupRequest {
            repository: r.into(),
            policy_text: POLICY.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "RunCleanup",
        Kind::Write,
        CleanupServiceClient.run_cleanup,
        |r: &S, _: &S, _: &S, _: &S| pb::RunCleanupRequest {
            repository: r.into(),
            policy_text: POLICY.into(),
            dry_run: true,
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "GetCleanupRun",
        Kind::Read,
        CleanupServiceClient.get_cleanup_run,
        |_: &S, id: &S, _: &S, _: &S| pb::GetCleanupRunRequest {
            id: id.into(),
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "ListCleanupRuns",
        Kind::List,
        CleanupServiceClient.list_cleanup_runs,
        |_: &S, _: &S, _: &S, _: &S| pb::ListCleanupRunsRequest::default()
    );
    rpc!(
        t,
        f,
        "CancelCleanupRun",
        Kind::Write,
        CleanupServiceClient.cancel_cleanup_run,
        |_: &S, id: &S, _: &S, _: &S| pb::CancelCleanupRunRequest { id: id.into() }
    );
    // AuditService
    rpc!(
        t,
        f,
        "LookupAuditEvents",
        Kind::List,
        AuditServiceClient.lookup_audit_events,
        |_: &S, _: &S, _: &S, _: &S| pb::LookupAuditEventsRequest::default()
    );
    rpc!(
        t,
        f,
        "StreamAuditEvents",
        Kind::Admin,
        AuditServiceClient.stream_audit_events,
        |_: &S, _: &S, _: &S, _: &S| pb::StreamAuditEventsRequest::default()
    );
    rpc!(
        t,
        f,
        "VerifyAuditLog",
        Kind::Admin,
        AuditServiceClient.verify_audit_log,
        |_: &S, _: &S, _: &S, _: &S| pb::VerifyAuditLogRequest::default()
    );
    // RegistryAccessService: GetRegistryCredentials asks for PullImages or
    // PushImages on every entry of its scope.
    rpc!(
        t,
        f,
        "PullImages",
        Kind::ReadDeploy,
        RegistryAccessServiceClient.get_registry_credentials,
        |r: &S, _: &S, _: &S, _: &S| pb::GetRegistryCredentialsRequest {
            repositories: vec![r.into()],
            repository_prefixes: vec!["payments/".into()],
            access: pb::RegistryAccess::Pull as i32,
            ..Default::default()
        }
    );
    rpc!(
        t,
        f,
        "PushImages",
        Kind::Write,
        RegistryAccessServiceClient.get_registry_credentials,
        |r: &S, _: &S, _: &S, _: &S| pb::GetRegistryCredentialsRequest {
            repositories: vec![r.into()],
            access: pb::RegistryAccess::Push as i32,
            ..Default::default()
        }
    );
    t
}

/// A fixture repository in `payments`, a dry-run cleanup run and a vulnerability exception on it.
async fn fixture(admin: &Caller, member: &Caller) -> Fixture {
    let repository = unique("payments", "authz");
    RepositoryServiceClient::new(admin.channel.clone())
        .create_repository(admin.request(tagged_repository(&repository)))
        .await
        .expect("create the fixture repository");
    let run = CleanupServiceClient::new(admin.channel.clone())
        .run_cleanup(admin.request(pb::RunCleanupRequest {
            repository: repository.clone(),
            policy_text: POLICY.into(),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("a cleanup run")
        .into_inner();
    let exception = ScanServiceClient::new(admin.channel.clone())
        .create_vulnerability_exception(admin.request(pb::CreateVulnerabilityExceptionRequest {
            cve_id: "CVE-2023-44487".into(),
            scope: pb::ExceptionScope::Repository as i32,
            repository: repository.clone(),
            justification: "HTTP/2 is not exposed".into(),
            expire_time: in_days(7),
            ..Default::default()
        }))
        .await
        .expect("an exception")
        .into_inner();
    let remediation = ComplianceServiceClient::new(member.channel.clone())
        .remediate_repositories(member.request(pb::RemediateRepositoriesRequest {
            repositories: vec![repository.clone()],
            ..Default::default()
        }))
        .await
        .expect("a remediation run")
        .into_inner();
    Fixture {
        repository,
        run_id: run.id,
        exception_id: exception.id,
        remediation_id: remediation.run.expect("a run").id,
    }
}

/// Calls every RPC as every role; returns the cells that did not answer as
/// the default policy says.
async fn run_matrix(callers: &[(Role, Caller)]) -> Vec<String> {
    let admin = &callers
        .iter()
        .find(|(role, _)| *role == Role::Admin)
        .expect("an admin")
        .1;
    let member = &callers
        .iter()
        .find(|(role, _)| *role == Role::TeamMember)
        .expect("a team member")
        .1;
    let fixture = fixture(admin, member).await;
    let table = table(&fixture);
    let names: BTreeSet<&str> = table.iter().map(|rpc| rpc.name).collect();
    let actions = ecr_gateway::auth::authz::schema_actions().expect("schema");
    // RPCs authorized as other actions rather than as themselves.
    let authorized_as_others = BTreeSet::from(["PromoteImage", "RemediateRepositories"]);
    assert_eq!(
        names,
        actions
            .iter()
            .map(String::as_str)
            .chain(authorized_as_others)
            .collect::<BTreeSet<_>>(),
        "the matrix covers every RPC"
    );

    let mut failures = Vec::new();
    for rpc in &table {
        for (role, caller) in callers {
            let role = *role;
            let answer = (rpc.call)(caller).await;
            let code = answer.as_ref().err().map_or(Code::Ok, |s| s.code());
            let expected = expected(rpc.kind, role);
            let ok = match expected {
                // Allowed: whatever the call then says, it is not about who is calling,
                // not a malformed request (the table's requests are valid) and not a bug.
                Code::Ok => !matches!(
                    code,
                    Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument | Code::Internal
                ),
                expected => code == expected,
            };
            if !ok {
                failures.push(format!(
                    "{} as {role:?}: expected {expected:?}, got {code:?} ({})",
                    rpc.name,
                    answer
                        .as_ref()
                        .err()
                        .map(|s| s.message().to_owned())
                        .unwrap_or_default()
                ));
            }
            if let (Code::PermissionDenied, Err(status)) = (expected, &answer) {
                assert!(
                    status.message().contains(rpc.name) && status.message().contains("docs/security.md"),
                    "a denial names the action and where the model is documented: {}",
                    status.message()
                );
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_asks_the_policy_for_every_role() {
    let db = TestDb::create().await;
    // Credentials on (these lines land in the main registry's table), so an allowed PullImages/PushImages issues one.
    let access = "credentials_role_arn = \"arn:aws:iam::123456789012:role/ecr-gateway-credentials\"\n[access]\nenabled = true\n";
    let gateway = Gateway::start(config(&db, Moto::shared(), access)).await;
    let callers: Vec<(Role, Caller)> = ROLES
        .iter()
        .map(|role| (*role, Caller::headers(*role, &gateway.channel)))
        .collect();
    let failures = run_matrix(&callers).await;
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Each call's decision is in its audit event.
    let pool = db.pool().await;
    common::wait_for_audit_rows(&pool, "event_name = 'VerifyAuditLog'", 6).await;
    let (decision, policies, method): (String, serde_json::Value, String) = sqlx::query_as(
        "SELECT authz_decision->>'decision', authz_decision->'policies', auth_method FROM audit_events \
         WHERE event_name = 'DeleteImages' AND principal = 'alice@example.com'",
    )
    .fetch_one(&pool)
    .await
    .expect("alice's DeleteImages");
    assert_eq!(
        (decision.as_str(), policies, method.as_str()),
        (
            "allow",
            serde_json::json!(["team-manages-namespace"]),
            "insecure-dev"
        )
    );
    let (decision, status, code): (String, String, String) = sqlx::query_as(
        "SELECT authz_decision->>'decision', status, error_code FROM audit_events \
         WHERE event_name = 'DeleteImages' AND principal = 'sam@example.com'",
    )
    .fetch_one(&pool)
    .await
    .expect("sam's DeleteImages");
    assert_eq!(
        (decision.as_str(), status.as_str(), code.as_str()),
        ("deny", "failed", "PermissionDenied")
    );
    let undecided: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE authz_decision IS NULL AND principal <> 'anonymous' \
         AND auth_method <> 'internal'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(undecided, 0, "every authenticated call records a decision");
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_show_only_what_the_caller_may_read() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let payments = unique("payments", "listed");
    let search = unique("search", "listed");
    for name in [&payments, &search] {
        gateway
            .repositories()
            .create_repository(Role::Admin.request(tagged_repository(name)))
            .await
            .expect("create");
    }
    let visible = |role: Role| {
        let mut client = gateway.repositories();
        let (payments, search) = (payments.clone(), search.clone());
        async move {
            let listed = client
                .list_repositories(role.request(pb::ListRepositoriesRequest {
                    page_size: 1000,
                    ..Default::default()
                }))
                .await
                .expect("list")
                .into_inner();
            let names: BTreeSet<String> = listed.repositories.into_iter().map(|r| r.repository).collect();
            (names.contains(&payments), names.contains(&search), names)
        }
    };
    let (p, s, _) = visible(Role::TeamMember).await;
    assert_eq!((p, s), (true, false), "a team member sees their namespace");
    let (p, s, _) = visible(Role::OtherTeam).await;
    assert_eq!((p, s), (false, true), "the other team sees theirs");
    let (p, s, _) = visible(Role::Reader).await;
    assert_eq!((p, s), (true, true), "a reader sees what engineering may read");
    let (_, _, names) = visible(Role::Deployer).await;
    assert!(names.is_empty(), "deployers may not list: {names:?}");
    let (p, s, _) = visible(Role::Admin).await;
    assert_eq!((p, s), (true, true));

    // The audit trail, too: alice sees events about payments, not about search.
    let pool = db.pool().await;
    common::wait_for_audit_rows(
        &pool,
        "event_name = 'CreateRepository' AND status = 'succeeded'",
        2,
    )
    .await;
    let events = AuditServiceClient::new(gateway.channel.clone())
        .lookup_audit_events(Role::TeamMember.request(pb::LookupAuditEventsRequest {
            event_name: "CreateRepository".into(),
            page_size: 100,
            ..Default::default()
        }))
        .await
        .expect("lookup")
        .into_inner()
        .events;
    let about: BTreeSet<String> = events
        .iter()
        .flat_map(|e| e.resources.iter().map(|r| r.arn.clone()))
        .collect();
    assert!(about.iter().any(|arn| arn.ends_with(&payments)), "{about:?}");
    assert!(!about.iter().any(|arn| arn.ends_with(&search)), "{about:?}");
    gateway.stop().await.expect("stop");
}

/// Copies the default policy into a directory the test can rewrite.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("deploy/policies/default.cedar"),
        dir.path().join("default.cedar"),
    )
    .expect("copy");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_policy_while_calls_are_in_flight() {
    let db = TestDb::create().await;
    let policies = policy_dir();
    let entities =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/authz-entities.json");
    let text = common::config_text(&db, Moto::shared(), "").replace(
        &format!("policies = \"{}/deploy/policies\"", env!("CARGO_MANIFEST_DIR")),
        &format!("policies = \"{}\"", policies.path().display()),
    );
    assert!(
        text.contains(&policies.path().display().to_string()),
        "the test config points at the copy"
    );
    assert!(text.contains(&entities.display().to_string()));
    let process = common::process::Process::start(&text).await;
    let repository = unique("payments", "reload");
    RepositoryServiceClient::new(process.channel.clone())
        .create_repository(Role::Admin.request(tagged_repository(&repository)))
        .await
        .expect("create");

    // Alice reads her repository in a loop while the policy changes under her.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let channel = process.channel.clone();
        let (repository, stop) = (repository.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = RepositoryServiceClient::new(channel.clone())
                    .get_repository(Role::TeamMember.request(pb::GetRepositoryRequest {
                        repository: repository.clone(),
                        ..Default::default()
                    }))
                    .await;
                codes.push(answer.err().map_or(Code::Ok, |s| s.code()));
            }
            codes
        }));
    }
    let get = |role: Role| {
        let channel = process.channel.clone();
        let repository = repository.clone();
        async move {
            RepositoryServiceClient::new(channel)
                .get_repository(role.request(pb::GetRepositoryRequest {
                    repository,
                    ..Default::default()
                }))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code())
        }
    };
    assert_eq!(get(Role::TeamMember).await, Code::Ok);

    // Teams lose read access to their namespace (write and deploy stay).
    let file = policies.path().join("default.cedar");
    let original = std::fs::read_to_string(&file).expect("read");
    let narrowed = original.replace(
        "action in [EcrGateway::Action::\"read\", EcrGateway::Action::\"write\", EcrGateway::Action::\"deploy\"]",
        "action in [EcrGateway::Action::\"write\", EcrGateway::Action::\"deploy\"]",
    );
    assert_ne!(narrowed, original);
    std::fs::write(&file, narrowed).expect("write");
    process.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(Role::TeamMember).await != Code::PermissionDenied {
        assert!(
            Instant::now() < deadline,
            "the narrowed policy did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(Role::Admin).await, Code::Ok, "admins keep access");

    // A broken policy keeps the one in force.
    std::fs::write(&file, "permit (principal, action, resource").expect("write");
    process.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(Role::TeamMember).await,
        Code::PermissionDenied,
        "still the narrowed policy"
    );
    assert_eq!(get(Role::Admin).await, Code::Ok, "and not deny-everything");

    // Restored, alice reads again.
    std::fs::write(&file, original).expect("write");
    process.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(Role::TeamMember).await != Code::Ok {
        assert!(
            Instant::now() < deadline,
            "the restored policy did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    for reader in readers {
        for code in reader.await.expect("reader") {
            seen.insert(format!("{code:?}"));
        }
    }
    assert!(
        seen.iter().all(|code| code == "Ok" || code == "PermissionDenied"),
        "calls in flight during reloads end allowed or denied, nothing else: {seen:?}"
    );
    assert!(
        seen.contains("Ok") && seen.contains("PermissionDenied"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_for_every_role_with_real_credentials() {
    use authn_support::{
        SigningKey, TestCa, TlsGateway, claims, config_with_auth, jwks, oidc_section, write,
    };
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("dir");
    let key = SigningKey::es256("matrix-1");
    let jwks_file = write(dir.path(), "jwks.json", &jwks(&[&key]).to_string());
    let server_ca = TestCa::new("matrix server CA");
    let client_ca = TestCa::new("matrix client CA");
    let server = server_ca.server();
    let auth = format!(
        "[auth]\nmodes = [\"oidc\", \"mtls\"]\n{}[auth.mtls]\nca_file = \"{}\"\n",
        oidc_section(&format!("jwks_file = \"{}\"", jwks_file.display())),
        write(dir.path(), "client-ca.pem", &client_ca.cert_pem).display(),
    );
    let tls = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        write(dir.path(), "server.pem", &server.cert_pem).display(),
        write(dir.path(), "server.key", &server.key_pem).display(),
    );
    let gateway = TlsGateway::start(config_with_auth(&db, Moto::shared(), &auth, &tls)).await;
    let plain = gateway.channel(&server_ca, None).await;
    // The deploy service is a workload: its SPIFFE id is in group `deployers`
    // through the entity data (tests/fixtures/authz-entities.json), not a claim.
    let argo = client_ca.client("argo-cd", Some("spiffe://example.org/ns/deploy/sa/argo-cd"));
    let workload = gateway.channel(&server_ca, Some(&argo)).await;
    let token = |subject: &str, groups: &[&str]| Credential::Token(key.mint(&claims(subject, groups)));
    let callers = vec![
        (
            Role::TeamMember,
            Caller {
                channel: plain.clone(),
                credential: token("alice@example.com", &["payments"]),
            },
        ),
        (
            Role::OtherTeam,
            Caller {
                channel: plain.clone(),
                credential: token("sam@example.com", &["search"]),
            },
        ),
        (
            Role::Deployer,
            Caller {
                channel: workload,
                credential: Credential::Channel,
            },
        ),
        (
            Role::Reader,
            Caller {
                channel: plain.clone(),
                credential: token("rita@example.com", &["engineering"]),
            },
        ),
        (
            Role::Admin,
            Caller {
                channel: plain.clone(),
                credential: token("root@example.com", &["platform-admins"]),
            },
        ),
        (
            Role::Anonymous,
            Caller {
                channel: plain,
                credential: Credential::Channel,
            },
        ),
    ];
    let failures = run_matrix(&callers).await;
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The deploy service's calls are recorded as the workload they came from.
    let pool = db.pool().await;
    common::wait_for_audit_rows(&pool, "event_name = 'VerifyAuditLog'", 6).await;
    let (kind, method, decision, policies): (String, String, String, serde_json::Value) = sqlx::query_as(
        "SELECT principal_type, auth_method, authz_decision->>'decision', authz_decision->'policies' \
         FROM audit_events WHERE event_name = 'ResolveImage' \
         AND principal = 'spiffe://example.org/ns/deploy/sa/argo-cd'",
    )
    .fetch_one(&pool)
    .await
    .expect("argo's ResolveImage");
    assert_eq!(
        (kind.as_str(), method.as_str(), decision.as_str(), policies),
        (
            "Service",
            "mtls",
            "allow",
            serde_json::json!(["deployers-in-granted-namespaces"])
        )
    );
    gateway.stop().await.expect("stop");
}
