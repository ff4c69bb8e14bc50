//! ScanService end to end: findings seeded into moto (bound to the exact
//! digest, after StartImageScan), read through the gateway, and the deploy
//! gate's decisions table by table, with exceptions at every scope, expiry
//! and revocation. The gateway talks to moto through a counting proxy, so
//! "CheckDeployment makes no ECR call" is checked, not assumed.

mod common;

use std::time::Duration;

use common::images::push;
use common::proxy::FaultProxy;
use common::{
    Gateway, Moto, TestDb, as_user, config, ecr_client, seed_scan_findings, unique, violations,
    wait_for_audit_rows,
};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::scan_service_client::ScanServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const CRITICAL_CVE: &str = "CVE-2024-3094";
const HIGH_CVE: &str = "CVE-2023-44487";
const LOW_CVE: &str = "CVE-2022-0001";

fn carol<T>(message: T) -> tonic::Request<T> {
    as_user(message, "carol@example.com", "payments")
}

/// Exceptions and registry scanning settings are the admin group's actions (docs/security.md).
fn sec<T>(message: T) -> tonic::Request<T> {
    as_user(message, "sec-lead@example.com", "platform-admins")
}

fn scans(gateway: &Gateway) -> ScanServiceClient<Channel> {
    ScanServiceClient::new(gateway.channel.clone())
}

async fn create_repository(gateway: &Gateway, stem: &str, exclude_latest: bool) -> String {
    let name = unique("payments", stem);
    let settings = pb::RepositorySettings {
        tags: common::team_tags(),
        image_tag_mutability: if exclude_latest {
            pb::ImageTagMutability::ImmutableWithExclusion as i32
        } else {
            pb::ImageTagMutability::Immutable as i32
        },
        image_tag_mutability_exclusion_filters: if exclude_latest {
            vec!["latest".into()]
        } else {
            vec![]
        },
        ..Default::default()
    };
    gateway
        .repositories()
        .create_repository(carol(pb::CreateRepositoryRequest {
            repository: name.clone(),
            settings: Some(settings),
            ..Default::default()
        }))
        .await
        .expect("create repository");
    name
}

async fn refresh(gateway: &Gateway, repository: &str) {
    ImageServiceClient::new(gateway.channel.clone())
        .refresh_inventory(carol(pb::RefreshInventoryRequest {
            repository: repository.into(),
            ..Default::default()
        }))
        .await
        .expect("refresh");
}

async fn start_scan(gateway: &Gateway, repository: &str, digest: &str) -> pb::ScanSummary {
    scans(gateway)
        .start_image_scan(carol(pb::StartImageScanRequest {
            repository: repository.into(),
            digest: digest.into(),
            ..Default::default()
        }))
        .await
        .expect("start scan")
        .into_inner()
}

async fn check(
    gateway: &Gateway,
    reference: &str,
    environment: &str,
) -> Result<pb::CheckDeploymentResponse, tonic::Status> {
    scans(gateway)
        .check_deployment(carol(pb::CheckDeploymentRequest {
            reference: reference.into(),
            environment: environment.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

fn decided(response: &pb::CheckDeploymentResponse) -> (pb::Decision, Vec<String>) {
    (
        response.decision(),
        response.reasons.iter().map(|r| r.rule_id.clone()).collect(),
    )
}

async fn create_exception(
    gateway: &Gateway,
    request: pb::CreateVulnerabilityExceptionRequest,
) -> Result<pb::VulnerabilityException, tonic::Status> {
    scans(gateway)
        .create_vulnerability_exception(sec(request))
        .await
        .map(|r| r.into_inner())
}

fn in_days(days: i64) -> Option<prost_types::Timestamp> {
    let t = chrono::Utc::now() + chrono::Duration::days(days);
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

/// A repository with four images: one CRITICAL, one HIGH, one LOW finding,
/// and one never scanned; scans started through the gateway.
struct Scanned {
    repository: String,
    critical: String,
    high: String,
    low: String,
    unscanned: String,
}

async fn scanned_repository(gateway: &Gateway, moto: &str) -> Scanned {
    let ecr = ecr_client(moto).await;
    let repository = create_repository(gateway, "gate", false).await;
    let critical = push(&ecr, &repository, "v-critical", &format!("{repository}-c")).await;
    let high = push(&ecr, &repository, "v-high", &format!("{repository}-h")).await;
    let low = push(&ecr, &repository, "v-low", &format!("{repository}-l")).await;
    let unscanned = push(&ecr, &repository, "v-unscanned", &format!("{repository}-u")).await;
    seed_scan_findings(
        moto,
        &repository,
        &critical,
        &[(CRITICAL_CVE, "CRITICAL"), (LOW_CVE, "LOW")],
    )
    .await;
    seed_scan_findings(moto, &repository, &high, &[(HIGH_CVE, "HIGH")]).await;
    seed_scan_findings(moto, &repository, &low, &[(LOW_CVE, "LOW")]).await;
    refresh(gateway, &repository).await;
    for digest in [&critical, &high, &low] {
        let summary = start_scan(gateway, &repository, digest).await;
        assert_eq!(summary.status, "COMPLETE", "{summary:?}");
        assert!(!summary.scan_limited);
    }
    Scanned {
        repository,
        critical,
        high,
        low,
        unscanned,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gate_decides_from_the_cache_table_by_table_with_no_ecr_call() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let proxy = FaultProxy::start(moto).await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, "")).await;
    let s = scanned_repository(&gateway, moto).await;
    let r = &s.repository;

    // Warm nothing on purpose: the first check of each reference reads Postgres, not ECR.
    let before = proxy.total();
    let table: Vec<(String, &str, pb::Decision, Vec<&str>)> = vec![
        (
            format!("{r}@{}", s.critical),
            "prod",
            pb::Decision::Deny,
            vec!["deploy.severity-threshold"],
        ),
        (
            format!("{r}@{}", s.critical),
            "dev",
            pb::Decision::Deny,
            vec!["deploy.severity-threshold"],
        ),
        (
            format!("{r}@{}", s.high),
            "prod",
            pb::Decision::Deny,
            vec!["deploy.severity-threshold"],
        ),
        (format!("{r}@{}", s.high), "dev", pb::Decision::Allow, vec![]),
        (format!("{r}@{}", s.low), "prod", pb::Decision::Allow, vec![]),
        (format!("{r}:v-low"), "prod", pb::Decision::Allow, vec![]),
        (
            format!("{r}@{}", s.unscanned),
            "prod",
            pb::Decision::Deny,
            vec!["deploy.scan-missing"],
        ),
        (format!("{r}:v-unscanned"), "dev", pb::Decision::Allow, vec![]),
        (
            format!("{r}:no-such-tag"),
            "dev",
            pb::Decision::Deny,
            vec!["deploy.reference-mutable", "deploy.image-unknown"],
        ),
        (
            format!("999999999999.dkr.ecr.eu-west-1.amazonaws.com/{r}:v-low"),
            "prod",
            pb::Decision::Deny,
            vec!["deploy.registry-unmanaged"],
        ),
    ];
    for round in 0..2 {
        for (reference, environment, decision, rules) in &table {
            let answer = check(&gateway, reference, environment).await.expect("check");
            assert_eq!(
                decided(&answer),
                (*decision, rules.iter().map(|s| s.to_string()).collect()),
                "round {round}: {reference} in {environment}: {answer:?}"
            );
            for reason in &answer.reasons {
                assert!(!reason.message.is_empty());
            }
        }
    }
    assert_eq!(proxy.total(), before, "CheckDeployment must not call ECR");

    // The answer carries what a deploy system needs.
    let answer = check(&gateway, &format!("{r}@{}", s.critical), "prod")
        .await
        .unwrap();
    assert_eq!(answer.digest, s.critical);
    assert!(answer.pinned_uri.ends_with(&format!("{r}@{}", s.critical)));
    assert_eq!(
        answer.reasons[0].findings,
        vec![format!("{CRITICAL_CVE} (CRITICAL)")]
    );
    let scan = answer.scan.expect("scan");
    assert_eq!(
        (scan.status.as_str(), scan.counts.as_ref().unwrap().critical),
        ("COMPLETE", 1)
    );

    // Every decision is audited with its reasons.
    let pool = db.pool().await;
    let audited = wait_for_audit_rows(
        &pool,
        "event_name = 'CheckDeployment'",
        2 * table.len() as i64 + 1,
    )
    .await;
    assert_eq!(audited, 2 * table.len() as i64 + 1);
    let (decision, rule): (String, String) = sqlx::query_as(
        "SELECT response_elements->>'decision', response_elements->'reasons'->0->>'ruleId' FROM audit_events
         WHERE event_name = 'CheckDeployment' AND request_parameters->>'reference' LIKE '%' || $1 LIMIT 1",
    )
    .bind(&s.unscanned)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (decision.as_str(), rule.as_str()),
        ("DENY", "deploy.scan-missing")
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn exceptions_apply_at_each_scope_until_they_expire_or_are_revoked() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let s = scanned_repository(&gateway, moto).await;
    let critical = format!("{}@{}", s.repository, s.critical);
    let high = format!("{}@{}", s.repository, s.high);
    let deny = |a: &pb::CheckDeploymentResponse| a.decision() == pb::Decision::Deny;
    assert!(deny(&check(&gateway, &critical, "dev").await.unwrap()));

    // Image scope: only that digest.
    let image = create_exception(
        &gateway,
        pb::CreateVulnerabilityExceptionRequest {
            cve_id: CRITICAL_CVE.to_lowercase(),
            scope: pb::ExceptionScope::Image as i32,
            repository: s.repository.clone(),
            digest: s.critical.clone(),
            justification: "backport of the fix ships next sprint".into(),
            expire_time: in_days(7),
            ..Default::default()
        },
    )
    .await
    .expect("image exception");
    assert_eq!(image.cve_id, CRITICAL_CVE, "ids are normalised");
    assert_eq!(image.created_by, "sec-lead@example.com");
    assert!(image.active);
    let answer = check(&gateway, &critical, "dev").await.unwrap();
    assert_eq!(answer.decision(), pb::Decision::Allow, "{answer:?}");
    assert_eq!(
        answer.excepted_findings,
        vec![format!("{CRITICAL_CVE} (CRITICAL)")]
    );

    // Revoked: counted again at once.
    let revoked = scans(&gateway)
        .revoke_vulnerability_exception(sec(pb::RevokeVulnerabilityExceptionRequest {
            id: image.id.clone(),
            reason: "the fix landed".into(),
        }))
        .await
        .expect("revoke")
        .into_inner();
    assert!(!revoked.active && revoked.revoke_time.is_some());
    assert_eq!(revoked.revoked_by, "sec-lead@example.com");
    assert!(deny(&check(&gateway, &critical, "dev").await.unwrap()));

    // Repository, namespace and org scopes each cover the HIGH finding in prod.
    for (scope, namespace, repository) in [
        (pb::ExceptionScope::Repository, "", s.repository.as_str()),
        (pb::ExceptionScope::Namespace, "payments", ""),
        (pb::ExceptionScope::Org, "", ""),
    ] {
        assert!(
            deny(&check(&gateway, &high, "prod").await.unwrap()),
            "{scope:?} before"
        );
        let exception = create_exception(
            &gateway,
            pb::CreateVulnerabilityExceptionRequest {
                cve_id: HIGH_CVE.into(),
                scope: scope as i32,
                namespace: namespace.into(),
                repository: repository.into(),
                justification: format!("{scope:?}: mitigated by the ingress filter"),
                expire_time: in_days(30),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{scope:?}: {e:?}"));
        let answer = check(&gateway, &high, "prod").await.unwrap();
        assert_eq!(answer.decision(), pb::Decision::Allow, "{scope:?}: {answer:?}");
        // It does not cover another CVE.
        assert!(deny(&check(&gateway, &critical, "prod").await.unwrap()));
        scans(&gateway)
            .revoke_vulnerability_exception(sec(pb::RevokeVulnerabilityExceptionRequest {
                id: exception.id,
                reason: "test done".into(),
            }))
            .await
            .unwrap();
    }
    // A namespace exception elsewhere does not apply.
    create_exception(
        &gateway,
        pb::CreateVulnerabilityExceptionRequest {
            cve_id: HIGH_CVE.into(),
            scope: pb::ExceptionScope::Namespace as i32,
            namespace: "search".into(),
            justification: "other team".into(),
            expire_time: in_days(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(deny(&check(&gateway, &high, "prod").await.unwrap()));

    // Expiry: an exception that runs out stops applying without any write.
    let pool = db.pool().await;
    let short = create_exception(
        &gateway,
        pb::CreateVulnerabilityExceptionRequest {
            cve_id: HIGH_CVE.into(),
            scope: pb::ExceptionScope::Repository as i32,
            repository: s.repository.clone(),
            justification: "one-off hotfix deploy".into(),
            expire_time: in_days(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        check(&gateway, &high, "prod").await.unwrap().decision(),
        pb::Decision::Allow
    );
    sqlx::query(
        "UPDATE vulnerability_exceptions SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&short.id)
    .execute(&pool)
    .await
    .unwrap();
    // The change notification drops the cached facts.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = check(&gateway, &high, "prod").await.unwrap();
        if deny(&answer) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired exception still applies: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Listing: active ones by default, all with include_inactive; paginated.
    let list = |include_inactive, page_token: String| {
        let mut client = scans(&gateway);
        async move {
            client
                .list_vulnerability_exceptions(sec(pb::ListVulnerabilityExceptionsRequest {
                    include_inactive,
                    page_size: 2,
                    page_token,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let active = list(false, String::new()).await;
    assert_eq!(active.exceptions.len(), 1, "only the `search` one: {active:?}");
    assert!(active.next_page_token.is_empty());
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(true, token).await;
        all.extend(page.exceptions.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all.len(), 6, "{all:?}");
    let unique_ids: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(unique_ids.len(), 6);
    // Every exception change is audited.
    assert_eq!(
        wait_for_audit_rows(
            &pool,
            "event_name = 'CreateVulnerabilityException' AND error_code IS NULL",
            6
        )
        .await,
        6
    );
    assert_eq!(
        wait_for_audit_rows(
            &pool,
            "event_name = 'RevokeVulnerabilityException' AND error_code IS NULL",
            4
        )
        .await,
        4
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn findings_pages_vulnerable_images_and_the_scan_quota() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let s = scanned_repository(&gateway, moto).await;

    // A second scan within 24 h is not an error: the current status and when to retry.
    let again = start_scan(&gateway, &s.repository, &s.critical).await;
    assert!(again.scan_limited, "{again:?}");
    assert_eq!(again.status, "COMPLETE");
    assert!(again.next_scan_allowed_at.is_some());

    // Findings, most severe first, one per page.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = scans(&gateway)
            .get_scan_findings(carol(pb::GetScanFindingsRequest {
                repository: s.repository.clone(),
                tag: "v-critical".into(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            }))
            .await
            .expect("findings")
            .into_inner();
        let summary = page.summary.expect("summary");
        assert_eq!(
            (summary.digest.as_str(), summary.status.as_str()),
            (s.critical.as_str(), "COMPLETE")
        );
        names.extend(page.findings.iter().map(|f| {
            assert_eq!(f.package_name, "libexample");
            (f.name.clone(), f.severity())
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        names,
        vec![
            (CRITICAL_CVE.to_owned(), pb::Severity::Critical),
            (LOW_CVE.to_owned(), pb::Severity::Low)
        ]
    );
    let high_only = scans(&gateway)
        .get_scan_findings(carol(pb::GetScanFindingsRequest {
            repository: s.repository.clone(),
            digest: s.critical.clone(),
            minimum_severity: pb::Severity::High as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(high_only.findings.len(), 1);
    // A token from another query is refused.
    let wrong = scans(&gateway)
        .get_scan_findings(carol(pb::GetScanFindingsRequest {
            repository: s.repository.clone(),
            digest: s.high.clone(),
            page_token: {
                let first = scans(&gateway)
                    .get_scan_findings(carol(pb::GetScanFindingsRequest {
                        repository: s.repository.clone(),
                        digest: s.critical.clone(),
                        page_size: 1,
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                first.next_page_token
            },
            ..Default::default()
        }))
        .await
        .expect_err("foreign token");
    assert_eq!(wrong.code(), Code::InvalidArgument);

    // GetImage shows the scan summary.
    let image = ImageServiceClient::new(gateway.channel.clone())
        .get_image(carol(pb::GetImageRequest {
            repository: s.repository.clone(),
            digest: s.high.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(image.scan.expect("scan").counts.unwrap().high, 1);

    // Org-wide: by CVE and by minimum severity, paginated.
    let vulnerable = |cve: &str, minimum: pb::Severity, page_token: String| {
        let mut client = scans(&gateway);
        let cve = cve.to_owned();
        async move {
            client
                .list_vulnerable_images(carol(pb::ListVulnerableImagesRequest {
                    cve_id: cve,
                    minimum_severity: minimum as i32,
                    page_size: 1,
                    page_token,
                    ..Default::default()
                }))
                .await
                .map(|r| r.into_inner())
        }
    };
    let by_cve = vulnerable(LOW_CVE, pb::Severity::Unspecified, String::new())
        .await
        .unwrap();
    assert_eq!(by_cve.images.len(), 1);
    assert!(!by_cve.next_page_token.is_empty());
    let second = vulnerable(LOW_CVE, pb::Severity::Unspecified, by_cve.next_page_token.clone())
        .await
        .unwrap();
    let mut digests = vec![by_cve.images[0].digest.clone(), second.images[0].digest.clone()];
    digests.sort();
    let mut want = vec![s.critical.clone(), s.low.clone()];
    want.sort();
    assert_eq!(digests, want);
    assert!(second.next_page_token.is_empty());
    assert_eq!(
        by_cve.images[0].matching_findings,
        vec![format!("{LOW_CVE} (LOW)")]
    );
    assert!(!by_cve.images[0].tags.is_empty());
    let mut high_or_worse = Vec::new();
    let mut token = String::new();
    loop {
        let page = vulnerable("", pb::Severity::High, token).await.unwrap();
        high_or_worse.extend(page.images.into_iter().map(|i| i.digest));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    high_or_worse.sort();
    let mut want = vec![s.critical.clone(), s.high.clone()];
    want.sort();
    assert_eq!(high_or_worse, want);
    let both = vulnerable(LOW_CVE, pb::Severity::High, String::new())
        .await
        .expect_err("both");
    assert_eq!(
        violations(&both),
        vec![("cve_id".to_owned(), "VULNERABLE_IMAGES_QUERY".to_owned())]
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mutable_tag_is_denied_and_bad_input_names_the_field() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let repository = create_repository(&gateway, "mutable", true).await;
    let digest = push(&ecr, &repository, "latest", &format!("{repository}-latest")).await;
    refresh(&gateway, &repository).await;
    let answer = check(&gateway, &format!("{repository}:latest"), "dev")
        .await
        .unwrap();
    assert_eq!(
        decided(&answer),
        (pb::Decision::Deny, vec!["deploy.reference-mutable".to_owned()])
    );
    assert!(answer.reasons[0].message.contains("digest"));
    assert_eq!(answer.digest, digest);

    // Report mode: the same answer, marked as a report.
    let report = scans(&gateway)
        .check_deployment(carol(pb::CheckDeploymentRequest {
            reference: format!("{repository}:latest"),
            environment: "dev".into(),
            report_only: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(report.report_only);
    assert_eq!(decided(&report), decided(&answer));

    type Case<'a> = (
        &'a str,
        Result<pb::CheckDeploymentResponse, tonic::Status>,
        Vec<(&'a str, &'a str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown environment",
            check(&gateway, &format!("{repository}:latest"), "production").await,
            vec![("environment", "DEPLOY_ENVIRONMENT_UNKNOWN")],
        ),
        (
            "empty environment and reference",
            check(&gateway, "", "").await,
            vec![
                ("environment", "DEPLOY_ENVIRONMENT_UNKNOWN"),
                ("reference", "REFERENCE_EMPTY"),
            ],
        ),
    ];
    for (what, result, want) in cases {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let got = violations(&status);
        for (field, reason) in want {
            assert!(
                got.iter().any(|(f, r)| f == field && r == reason),
                "{what}: want {field}/{reason} in {got:?}"
            );
        }
    }

    let base = || pb::CreateVulnerabilityExceptionRequest {
        cve_id: HIGH_CVE.into(),
        scope: pb::ExceptionScope::Repository as i32,
        repository: repository.clone(),
        justification: "why".into(),
        expire_time: in_days(10),
        ..Default::default()
    };
    let bad: Vec<(pb::CreateVulnerabilityExceptionRequest, &str, &str)> = vec![
        (
            pb::CreateVulnerabilityExceptionRequest {
                cve_id: "CVE-24-1".into(),
                ..base()
            },
            "cve_id",
            "EXCEPTION_CVE_ID",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                cve_id: "'; DROP TABLE vulnerability_exceptions; --".into(),
                ..base()
            },
            "cve_id",
            "EXCEPTION_CVE_ID",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                justification: "   ".into(),
                ..base()
            },
            "justification",
            "EXCEPTION_JUSTIFICATION",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                expire_time: in_days(-1),
                ..base()
            },
            "expire_time",
            "EXCEPTION_EXPIRY_PAST",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                expire_time: in_days(365),
                ..base()
            },
            "expire_time",
            "EXCEPTION_EXPIRY_TOO_FAR",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                expire_time: None,
                ..base()
            },
            "expire_time",
            "EXCEPTION_EXPIRY_REQUIRED",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                scope: pb::ExceptionScope::Unspecified as i32,
                ..base()
            },
            "scope",
            "EXCEPTION_SCOPE",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                scope: pb::ExceptionScope::Org as i32,
                ..base()
            },
            "repository",
            "EXCEPTION_SCOPE_FIELDS",
        ),
        (
            pb::CreateVulnerabilityExceptionRequest {
                scope: pb::ExceptionScope::Image as i32,
                digest: "sha256:nothex".into(),
                ..base()
            },
            "digest",
            "OCI_DIGEST_FORMAT",
        ),
    ];
    for (request, field, reason) in bad {
        let status = create_exception(&gateway, request.clone())
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        let got = violations(&status);
        assert!(
            got.iter().any(|(f, r)| f == field && r == reason),
            "want {field}/{reason} in {got:?}"
        );
    }
    let pool = db.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM vulnerability_exceptions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing written for bad input");
    let missing = scans(&gateway)
        .revoke_vulnerability_exception(sec(pb::RevokeVulnerabilityExceptionRequest {
            id: uuid::Uuid::new_v4().to_string(),
            reason: "x".into(),
        }))
        .await
        .expect_err("no such exception");
    assert_eq!(missing.code(), Code::NotFound);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn scanning_configuration_is_checked_against_the_org_policy() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let update = |rules: Vec<pb::ScanningRule>, validate_only: bool| {
        let mut client = scans(&gateway);
        async move {
            client
                .update_scanning_configuration(sec(pb::UpdateScanningConfigurationRequest {
                    scan_type: pb::ScanType::Basic as i32,
                    rules,
                    validate_only,
                    ..Default::default()
                }))
                .await
        }
    };
    let rule = |filters: &[&str]| pb::ScanningRule {
        frequency: pb::ScanFrequency::ScanOnPush as i32,
        repository_filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    // The test policy requires scan on push for `payments` and `search`.
    let refused = update(vec![rule(&["payments/*"])], false)
        .await
        .expect_err("search uncovered");
    assert_eq!(
        violations(&refused),
        vec![("rules".to_owned(), "SCANNING_REQUIRE_SCAN_ON_PUSH".to_owned())]
    );
    assert!(refused.message().contains("search"));
    let dry = update(vec![rule(&["payments/*", "search/*"])], true)
        .await
        .expect("validate only");
    assert_eq!(dry.into_inner().rules.len(), 1);
    let applied = update(vec![rule(&["payments/*", "search/*"])], false)
        .await
        .expect("update")
        .into_inner();
    assert_eq!(applied.scan_type(), pb::ScanType::Basic);
    // ECR's own state.
    let ecr_config = ecr
        .get_registry_scanning_configuration()
        .send()
        .await
        .unwrap()
        .scanning_configuration
        .unwrap();
    let filters: Vec<String> = ecr_config.rules()[0]
        .repository_filters()
        .iter()
        .map(|f| f.filter().to_owned())
        .collect();
    assert_eq!(filters, vec!["payments/*", "search/*"]);
    let read = scans(&gateway)
        .get_scanning_configuration(carol(pb::GetScanningConfigurationRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.rules[0].repository_filters, vec!["payments/*", "search/*"]);
    gateway.stop().await.unwrap();
}
