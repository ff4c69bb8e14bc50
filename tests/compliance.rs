//! ComplianceService against moto and Postgres: repositories made in ECR
//! directly (as the console, the CLI or Terraform would) break the tests'
//! org policy (tests/common `POLICY`) rule by rule; the sync brings them
//! into the cache, the compliance evaluation judges them, and the listing
//! answers from Postgres. A repository changed in ECR afterwards (drift) is
//! reported after the next sync, with an audit event of the service kind.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
};
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, tagged_repository, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::compliance_service_client::ComplianceServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use tonic::Code;

const OPEN_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"anyone","Effect":"Allow","Principal":"*","Action":["ecr:BatchGetImage"]}]}"#;

fn alice<T>(message: T) -> tonic::Request<T> {
    as_user(message, "alice@example.com", "payments")
}

fn sam<T>(message: T) -> tonic::Request<T> {
    as_user(message, "sam@example.com", "search")
}

fn admin<T>(message: T) -> tonic::Request<T> {
    as_user(message, "root@example.com", "platform-admins")
}

/// A gateway whose sync runs every second (and reads policies on its first pass).
async fn gateway(db: &TestDb, extra: &str) -> Gateway {
    let mut config = config(db, Moto::shared(), extra);
    config.sync.interval_seconds = 1;
    Gateway::start(config).await
}

fn compliance(gateway: &Gateway) -> ComplianceServiceClient<tonic::transport::Channel> {
    ComplianceServiceClient::new(gateway.channel.clone())
}

/// Every violation under `prefix`, walked page by page.
async fn all_violations(gateway: &Gateway, prefix: &str, page_size: i32) -> Vec<pb::PolicyViolation> {
    let mut client = compliance(gateway);
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
                prefix: prefix.into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await;
        let page = match page {
            // Before the first evaluation of the registry.
            Err(status) if status.code() == Code::Unavailable && found.is_empty() && token.is_empty() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            page => page.expect("list violations").into_inner(),
        };
        found.extend(page.violations);
        token = page.next_page_token;
        if token.is_empty() {
            return found;
        }
    }
}

/// (repository, rule) pairs under `prefix`, polled until `done` holds (30 s at most).
async fn wait_for(
    gateway: &Gateway,
    prefix: &str,
    done: impl Fn(&BTreeSet<(String, String)>) -> bool,
) -> Vec<pb::PolicyViolation> {
    let mut last = Vec::new();
    for _ in 0..120 {
        last = all_violations(gateway, prefix, 100).await;
        let pairs: BTreeSet<(String, String)> = last
            .iter()
            .map(|v| (v.repository.clone(), v.rule.clone()))
            .collect();
        if done(&pairs) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("violations under {prefix} never settled; last: {last:#?}");
}

fn pair(repository: &str, rule: &str) -> (String, String) {
    (repository.to_owned(), rule.to_owned())
}

/// The admin listener's `/metrics` text.
async fn metrics(addr: std::net::SocketAddr) -> String {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{addr}/metrics").parse().expect("uri");
    let response = client.get(uri).await.expect("admin answers");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn create_in_ecr(
    ecr: &aws_sdk_ecr::Client,
    name: &str,
    mutability: ImageTagMutability,
    scan_on_push: bool,
) {
    ecr.create_repository()
        .repository_name(name)
        .image_tag_mutability(mutability)
        .image_scanning_configuration(
            ImageScanningConfiguration::builder()
                .scan_on_push(scan_on_push)
                .build(),
        )
        .send()
        .await
        .expect("create in moto");
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_made_outside_the_gateway_are_judged_rule_by_rule_from_the_cache() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let prefix = unique("payments", "judged");
    let gateway = gateway(&db, "").await;
    // Made through the gateway: compliant.
    let good = format!("{prefix}-good");
    gateway
        .repositories()
        .create_repository(alice(tagged_repository(&good)))
        .await
        .expect("create through the gateway");
    // Then, in ECR directly (so the listing that brings them in lists `good` too):
    // made with the CLI's defaults: mutable tags, no scan on push, no tags, no lifecycle policy.
    let bare = format!("{prefix}-bare");
    create_in_ecr(&ecr, &bare, ImageTagMutability::Mutable, false).await;
    // Everything right but a repository policy open to anyone.
    let open = format!("{prefix}-open");
    create_in_ecr(&ecr, &open, ImageTagMutability::Immutable, true).await;
    ecr.set_repository_policy()
        .repository_name(&open)
        .policy_text(OPEN_POLICY)
        .send()
        .await
        .expect("set policy");

    let expected = [
        pair(&bare, "tags.required"),
        pair(&bare, "settings.tag-mutability"),
        pair(&bare, "settings.scan-on-push"),
        pair(&bare, "lifecycle-policy.missing"),
        pair(&open, "repository-policy.wildcard-principal"),
        pair(&open, "tags.required"),
        pair(&open, "lifecycle-policy.missing"),
    ];
    let violations = wait_for(&gateway, &prefix, |pairs| {
        expected.iter().all(|p| pairs.contains(p))
    })
    .await;

    let pairs: BTreeSet<(String, String)> = violations
        .iter()
        .map(|v| (v.repository.clone(), v.rule.clone()))
        .collect();
    assert_eq!(pairs, expected.iter().cloned().collect(), "{violations:#?}");
    assert!(
        violations.iter().all(|v| v.repository != good),
        "a repository the gateway made breaks nothing"
    );
    // Each violation says what is there, what the rule wants, and whether it can be mended.
    let find = |repository: &str, rule: &str, field: &str| {
        violations
            .iter()
            .find(|v| v.repository == repository && v.rule == rule && v.field.contains(field))
            .unwrap_or_else(|| panic!("{repository} {rule} {field} in {violations:#?}"))
    };
    let mutability = find(&bare, "settings.tag-mutability", "mutability");
    assert_eq!(
        (
            mutability.actual.as_str(),
            mutability.wanted.as_str(),
            mutability.mendable
        ),
        ("MUTABLE", "IMMUTABLE", true)
    );
    let scan = find(&bare, "settings.scan-on-push", "scan_on_push");
    assert_eq!((scan.actual.as_str(), scan.wanted.as_str()), ("false", "true"));
    let team = find(&bare, "tags.required", "team");
    assert_eq!((team.actual.as_str(), team.registry.as_str()), ("", "main"));
    find(&bare, "tags.required", "cost-center");
    let lifecycle = find(&bare, "lifecycle-policy.missing", "lifecycle_policy");
    assert!(
        lifecycle.wanted.contains("expire untagged images after 14 days"),
        "{lifecycle:?}"
    );
    let guard = find(&open, "repository-policy.wildcard-principal", "repository_policy");
    assert_eq!(guard.actual, OPEN_POLICY);
    assert!(guard.mendable);
    let now = chrono::Utc::now().timestamp();
    assert!(
        violations
            .iter()
            .all(|v| v.since.as_ref().is_some_and(|s| (now - s.seconds).abs() < 120))
    );

    // Paging walks the same list, one at a time.
    let paged = all_violations(&gateway, &prefix, 1).await;
    assert_eq!(paged, violations);

    // Filters: by rule, by mendable.
    let mut client = compliance(&gateway);
    let only_scan = client
        .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
            prefix: prefix.clone(),
            rule: "settings.scan-on-push".into(),
            ..Default::default()
        }))
        .await
        .expect("filter by rule")
        .into_inner();
    assert_eq!(only_scan.violations.len(), 1);
    assert_eq!(only_scan.violations[0].repository, bare);
    assert!(only_scan.evaluated_at.is_some());
    assert!(only_scan.freshness.and_then(|f| f.synced_at).is_some());
    let unmendable = client
        .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
            prefix: prefix.clone(),
            mendable: Some(false),
            ..Default::default()
        }))
        .await
        .expect("filter by mendable")
        .into_inner();
    assert_eq!(unmendable.violations, Vec::new());

    // A token of one filter is refused with another.
    let first = client
        .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
            prefix: prefix.clone(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("first page")
        .into_inner();
    let reused = client
        .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
            prefix: prefix.clone(),
            rule: "tags.required".into(),
            page_token: first.next_page_token,
            ..Default::default()
        }))
        .await
        .expect_err("a token is bound to its filters");
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");

    // The summary counts the same violations.
    let summary = client
        .get_compliance_summary(alice(pb::GetComplianceSummaryRequest {
            prefix: prefix.clone(),
            ..Default::default()
        }))
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(
        (
            summary.repositories,
            summary.compliant_repositories,
            summary.violations
        ),
        (3, 1, violations.len() as i64),
        "{summary:#?}"
    );
    let required = summary
        .rules
        .iter()
        .find(|r| r.key == "tags.required")
        .expect("tags.required counted");
    assert_eq!((required.violations, required.repositories), (4, 2));
    assert_eq!(summary.namespaces.len(), 1);
    assert_eq!(summary.namespaces[0].key, "payments");

    // Another team sees nothing of payments: the listing filters, it does not deny.
    let theirs = client
        .list_policy_violations(sam(pb::ListPolicyViolationsRequest {
            prefix: prefix.clone(),
            ..Default::default()
        }))
        .await
        .expect("sam lists")
        .into_inner();
    assert_eq!(theirs.violations, Vec::new());
    let their_summary = client
        .get_compliance_summary(sam(pb::GetComplianceSummaryRequest {
            prefix: prefix.clone(),
            ..Default::default()
        }))
        .await
        .expect("sam's summary")
        .into_inner();
    assert_eq!((their_summary.repositories, their_summary.violations), (0, 0));
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_encryption_are_reported_but_not_mendable() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let name = unique("legacy", "kms");
    ecr.create_repository()
        .repository_name(&name)
        .image_tag_mutability(ImageTagMutability::Immutable)
        .image_scanning_configuration(ImageScanningConfiguration::builder().scan_on_push(true).build())
        .encryption_configuration(
            EncryptionConfiguration::builder()
                .encryption_type(EncryptionType::Kms)
                .build()
                .expect("encryption"),
        )
        .send()
        .await
        .expect("create in moto");
    let gateway = gateway(&db, "").await;

    let violations = wait_for(&gateway, &name, |pairs| {
        pairs.contains(&pair(&name, "naming.namespace"))
            && pairs.contains(&pair(&name, "settings.encryption"))
    })
    .await;

    let unmendable: Vec<&str> = violations
        .iter()
        .filter(|v| !v.mendable)
        .map(|v| v.rule.as_str())
        .collect();
    assert!(
        unmendable.contains(&"naming.namespace") && unmendable.contains(&"settings.encryption"),
        "{violations:#?}"
    );
    assert!(
        unmendable
            .iter()
            .all(|r| r.starts_with("naming.") || *r == "settings.encryption"),
        "only names and encryption cannot be mended: {violations:#?}"
    );
    let encryption = violations
        .iter()
        .find(|v| v.rule == "settings.encryption")
        .unwrap();
    assert_eq!(encryption.wanted, "AES256");
    assert!(encryption.actual.starts_with("KMS"), "{encryption:?}");
    // Only a platform admin may read a repository outside every team's namespace.
    let alice_sees = compliance(&gateway)
        .list_policy_violations(alice(pb::ListPolicyViolationsRequest {
            prefix: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("alice lists")
        .into_inner();
    assert_eq!(alice_sees.violations, Vec::new());
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_in_ecr_is_reported_after_the_next_sync_with_an_audit_event() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let gateway = gateway(
        &db,
        "[admin]\nlisten = \"127.0.0.1:0\"\ngauge_refresh_seconds = 1\n",
    )
    .await;
    let admin_addr = gateway.admin.expect("the config sets [admin] listen");
    let name = unique("payments", "drifting");
    gateway
        .repositories()
        .create_repository(alice(tagged_repository(&name)))
        .await
        .expect("create through the gateway");
    // Compliant once judged.
    let settled = wait_for(&gateway, &name, |pairs| pairs.is_empty()).await;
    assert_eq!(settled, Vec::new());

    // Someone makes its tags mutable in the console.
    ecr.put_image_tag_mutability()
        .repository_name(&name)
        .image_tag_mutability(ImageTagMutability::Mutable)
        .send()
        .await
        .expect("change in moto");

    let drifted = wait_for(&gateway, &name, |pairs| {
        pairs.contains(&pair(&name, "settings.tag-mutability"))
    })
    .await;
    assert_eq!(drifted.len(), 1, "{drifted:#?}");
    let since = drifted[0].since;

    // The sync left an audit event naming the change.
    let pool = db.pool().await;
    let event: (String, String, serde_json::Value) = sqlx::query_as(
        "SELECT principal, principal_type, response_elements FROM audit_events
         WHERE event_name = 'SyncDetectDrift' AND request_parameters->>'repositoryName' = $1",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .expect("one drift event");
    assert_eq!(
        (event.0.as_str(), event.1.as_str()),
        ("ecr-gateway/sync", "Service")
    );
    assert_eq!(
        event.2["changes"],
        serde_json::json!([{"field": "settings.image_tag_mutability", "before": "IMMUTABLE", "after": "MUTABLE"}])
    );

    // The gauge counts it.
    let mut counted = false;
    for _ in 0..40 {
        let text = metrics(admin_addr).await;
        if text.contains(
            "ecr_gateway_policy_violations{rule=\"settings.tag-mutability\",namespace=\"payments\"}",
        ) {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(counted, "the violation gauge names the rule and namespace");

    // A second sync that finds the same keeps the violation's `since`.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = all_violations(&gateway, &name, 100).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].since, since);

    // Mended in ECR: the violation goes.
    ecr.put_image_tag_mutability()
        .repository_name(&name)
        .image_tag_mutability(ImageTagMutability::Immutable)
        .send()
        .await
        .expect("mend in moto");
    let mended = wait_for(&gateway, &name, |pairs| pairs.is_empty()).await;
    assert_eq!(mended, Vec::new());
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_filters_name_the_field_and_the_rule() {
    let db = TestDb::create().await;
    let gateway = gateway(&db, "").await;
    let mut client = compliance(&gateway);
    for (request, field) in [
        (
            pb::ListPolicyViolationsRequest {
                rule: "DEPLOY".into(),
                ..Default::default()
            },
            "rule",
        ),
        (
            pb::ListPolicyViolationsRequest {
                registry: "nope".into(),
                ..Default::default()
            },
            "registry",
        ),
        (
            pb::ListPolicyViolationsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListPolicyViolationsRequest {
                prefix: "Payments/".into(),
                ..Default::default()
            },
            "prefix",
        ),
    ] {
        let status = client
            .list_policy_violations(admin(request.clone()))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
        let fields: Vec<String> = common::violations(&status).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, [field], "{request:?}: {status:?}");
    }
    let anonymous = client
        .get_compliance_summary(tonic::Request::new(pb::GetComplianceSummaryRequest::default()))
        .await
        .expect_err("no identity");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_reloaded_on_sighup_judges_every_repository_anew() {
    use common::process::Process;
    let db = TestDb::create().await;
    let text = common::config_text(&db, Moto::shared(), "");
    let process = Process::start(&text).await;
    let name = unique("payments", "reloaded");
    RepositoryServiceClient::new(process.channel.clone())
        .create_repository(alice(tagged_repository(&name)))
        .await
        .expect("create through the gateway");
    let list = |channel: tonic::transport::Channel, name: String| async move {
        ComplianceServiceClient::new(channel)
            .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
                prefix: name,
                ..Default::default()
            }))
            .await
    };
    // Compliant under the policy it started with (judged as it started and on the create).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match list(process.channel.clone(), name.clone()).await {
            Ok(page) if page.get_ref().violations.is_empty() => break,
            Ok(page) => panic!("compliant at first: {page:?}"),
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => panic!("{status:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "never judged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The policy now also requires an `owner` tag.
    let stricter = text.replace(
        r#"required = ["team", "cost-center"]"#,
        r#"required = ["team", "cost-center", "owner"]"#,
    );
    assert_ne!(stricter, text, "the tests' policy names its required tags");
    std::fs::write(process.config_path(), stricter).expect("rewrite the config");
    process.signal(libc::SIGHUP);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let violations = loop {
        let page = list(process.channel.clone(), name.clone())
            .await
            .expect("list")
            .into_inner();
        if !page.violations.is_empty() {
            break page.violations;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reloaded policy was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0].rule, "tags.required");
    assert!(violations[0].field.contains("owner"), "{violations:?}");

    // A broken policy leaves the one in force.
    std::fs::write(
        process.config_path(),
        text.replace(
            r#"default_tag_mutability = "IMMUTABLE""#,
            r#"default_tag_mutability = "MUTABLE""#,
        ),
    )
    .expect("rewrite the config");
    process.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = list(process.channel.clone(), name.clone())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        still.violations.len(),
        1,
        "the stricter policy stays in force: {still:?}"
    );
    process.terminate(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_and_pull_through_rules_say_plainly_that_moto_lacks_them() {
    let db = TestDb::create().await;
    let gateway = gateway(&db, "").await;
    let mut client = compliance(&gateway);

    let denied = client
        .get_creation_templates(alice(pb::GetCreationTemplatesRequest::default()))
        .await
        .expect_err("admin only");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let lacking = [
        (
            "DescribeRepositoryCreationTemplates",
            client
                .get_creation_templates(admin(pb::GetCreationTemplatesRequest::default()))
                .await
                .map(|_| ()),
        ),
        (
            "DescribeRepositoryCreationTemplates",
            client
                .sync_creation_templates(admin(pb::SyncCreationTemplatesRequest {
                    request_id: "sync-templates-1".into(),
                    ..Default::default()
                }))
                .await
                .map(|_| ()),
        ),
        (
            "DescribePullThroughCacheRules",
            client
                .list_pull_through_cache_rules(admin(pb::ListPullThroughCacheRulesRequest::default()))
                .await
                .map(|_| ()),
        ),
    ];
    for (operation, answer) in lacking {
        let status = answer.expect_err("moto lacks it");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(operation), "{status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("ENDPOINT_LACKS_API")
        );
    }
    // The registry stays healthy: no circuit opened, ECR still answers.
    let health = tonic_health::pb::health_client::HealthClient::new(gateway.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ecrgateway.v1.Registry/main".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The sync's own failed call was recorded as failed, with the reason.
    let pool = db.pool().await;
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE event_name = 'SyncCreationTemplates' AND status = 'failed'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(recorded, 1);
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lifecycle_policy_that_would_expire_what_a_retention_floor_keeps_is_a_violation() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let name = unique("payments", "floored");
    create_in_ecr(&ecr, &name, ImageTagMutability::Immutable, true).await;
    ecr.put_lifecycle_policy()
        .repository_name(&name)
        .lifecycle_policy_text(
            r#"{"rules":[{"rulePriority":1,"description":"keep one release","selection":{"tagStatus":"tagged","tagPatternList":["v*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
        )
        .send()
        .await
        .expect("lifecycle policy");
    for tag in ["v1", "v2", "v3"] {
        common::images::push(&ecr, &name, tag, &format!("{name}-{tag}")).await;
    }
    let floors = "[policy.cleanup.namespaces.payments]\nkeep_newest = [{ tags = \"v*\", count = 2 }]\n";
    let gateway = gateway(&db, floors).await;

    let violations = wait_for(&gateway, &name, |pairs| {
        pairs.contains(&pair(&name, "cleanup.retention-floor"))
    })
    .await;

    let floor = violations
        .iter()
        .find(|v| v.rule == "cleanup.retention-floor")
        .unwrap();
    assert!(!floor.mendable);
    assert!(
        floor
            .description
            .contains("keeps the 2 newest images tagged `v*`"),
        "{floor:?}"
    );
    assert!(floor.description.contains("would expire"), "{floor:?}");
    let only = compliance(&gateway)
        .list_policy_violations(admin(pb::ListPolicyViolationsRequest {
            prefix: name.clone(),
            rule: "cleanup.retention-floor".into(),
            ..Default::default()
        }))
        .await
        .expect("filter by the rule")
        .into_inner();
    assert_eq!(only.violations.len(), 1);
    gateway.stop().await.expect("stop");
}
