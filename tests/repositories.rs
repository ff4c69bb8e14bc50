//! RepositoryService end to end: real gateway, real Postgres, real moto.
//! ECR's state is always checked with the test's own ECR client.

mod common;

use std::collections::HashMap;

use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, unique, violations, wait_for_audit_rows};
use ecr_gateway::pb;
use tonic::Code;
use tonic_types::StatusExt;

fn good_settings() -> pb::RepositorySettings {
    pb::RepositorySettings {
        tags: common::team_tags(),
        image_tag_mutability: pb::ImageTagMutability::ImmutableWithExclusion as i32,
        image_tag_mutability_exclusion_filters: vec!["latest".into()],
        ..Default::default()
    }
}

fn create_request(name: &str, request_id: &str) -> pb::CreateRepositoryRequest {
    pb::CreateRepositoryRequest {
        registry: String::new(),
        repository: name.to_owned(),
        settings: Some(good_settings()),
        request_id: request_id.to_owned(),
        validate_only: false,
    }
}

fn alice<T>(message: T) -> tonic::Request<T> {
    as_user(message, "alice@example.com", "payments")
}

/// A member of the search team (the `search` namespace is theirs, not alice's).
fn sam<T>(message: T) -> tonic::Request<T> {
    as_user(message, "sam@example.com", "search")
}

async fn start(db: &TestDb) -> Gateway {
    Gateway::start(config(db, Moto::shared(), "")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn create_repository_applies_every_enforced_setting_in_ecr() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "api");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Sid":"pull","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::210987654321:root"},"Action":["ecr:BatchGetImage"]}]}"#;
    let mut request = create_request(&name, "create-all-settings");
    request.settings.as_mut().expect("settings").repository_policy = policy.into();

    let response = gateway
        .repositories()
        .create_repository(alice(request))
        .await
        .expect("created")
        .into_inner();

    let ecr = ecr_client(Moto::shared()).await;
    let described = ecr
        .describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .expect("exists");
    let repo = &described.repositories()[0];
    assert_eq!(
        repo.image_tag_mutability().map(|m| m.as_str()),
        Some("IMMUTABLE_WITH_EXCLUSION")
    );
    let filters: Vec<&str> = repo
        .image_tag_mutability_exclusion_filters()
        .iter()
        .map(|f| f.filter())
        .collect();
    assert_eq!(filters, vec!["latest"]);
    assert!(
        repo.image_scanning_configuration()
            .expect("scan config")
            .scan_on_push()
    );
    assert_eq!(
        repo.encryption_configuration()
            .expect("encryption")
            .encryption_type()
            .as_str(),
        "AES256"
    );
    let tags = ecr
        .list_tags_for_resource()
        .resource_arn(repo.repository_arn().expect("arn"))
        .send()
        .await
        .expect("tags");
    let tags: HashMap<&str, &str> = tags.tags().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags.get("team"), Some(&"payments"));
    assert_eq!(tags.get("cost-center"), Some(&"cc-1001"));
    assert_eq!(tags.get("managed-by"), Some(&"ecr-gateway"));
    let lifecycle = ecr
        .get_lifecycle_policy()
        .repository_name(&name)
        .send()
        .await
        .expect("lifecycle");
    assert!(
        lifecycle
            .lifecycle_policy_text()
            .expect("text")
            .contains("untagged")
    );
    let repo_policy = ecr
        .get_repository_policy()
        .repository_name(&name)
        .send()
        .await
        .expect("policy");
    assert!(repo_policy.policy_text().expect("text").contains("210987654321"));
    let returned = response.repository.expect("repository");
    assert_eq!(returned.repository, name);
    assert_eq!(returned.arn, repo.repository_arn().expect("arn"));
    assert!(!response.replayed);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_repository_reports_every_violation_at_once() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let request = pb::CreateRepositoryRequest {
        repository: "Payments/Bad_Name".into(),
        settings: Some(pb::RepositorySettings {
            tags: [("team".to_owned(), "payments".to_owned())].into_iter().collect(),
            image_tag_mutability: pb::ImageTagMutability::Mutable as i32,
            ..Default::default()
        }),
        ..Default::default()
    };

    let status = gateway
        .repositories()
        .create_repository(alice(request))
        .await
        .expect_err("rejected");

    assert_eq!(status.code(), Code::InvalidArgument);
    let reasons: Vec<String> = violations(&status).into_iter().map(|(_, r)| r).collect();
    for expected in [
        "ECR_REPOSITORY_NAME_GRAMMAR",
        "TAGS_REQUIRED",
        "SETTINGS_TAG_MUTABILITY",
    ] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "{expected} missing from {reasons:?}"
        );
    }
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.domain, "ecr-gateway");
    assert_eq!(info.reason, "ORG_POLICY_VIOLATION");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_org_rule_broken_alone_is_reported_with_its_field_and_rule() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let base = || create_request(&unique("payments", "rule"), "");
    let cases: Vec<(&str, pb::CreateRepositoryRequest, &str, &str)> = vec![
        (
            "not a team namespace",
            pb::CreateRepositoryRequest {
                repository: "marketing/site".into(),
                ..base()
            },
            "repository",
            "NAMING_NAMESPACE",
        ),
        (
            "too deep",
            pb::CreateRepositoryRequest {
                repository: "payments/a/b/c".into(),
                ..base()
            },
            "repository",
            "NAMING_MAX_DEPTH",
        ),
        (
            "reserved segment",
            pb::CreateRepositoryRequest {
                repository: "payments/admin".into(),
                ..base()
            },
            "repository",
            "NAMING_RESERVED",
        ),
        (
            "value not allowed",
            {
                let mut r = base();
                r.settings
                    .as_mut()
                    .unwrap()
                    .tags
                    .insert("team".into(), "marketing".into());
                r
            },
            "settings.tags",
            "TAGS_ALLOWED_VALUES",
        ),
        (
            "exclusion not allowed",
            {
                let mut r = base();
                r.settings
                    .as_mut()
                    .unwrap()
                    .image_tag_mutability_exclusion_filters = vec!["release-*".into()];
                r
            },
            "settings.image_tag_mutability_exclusion_filters",
            "SETTINGS_EXCLUSION_FILTER_ALLOWED",
        ),
        (
            "scan on push off",
            {
                let mut r = base();
                r.settings.as_mut().unwrap().scan_on_push = Some(false);
                r
            },
            "settings.scan_on_push",
            "SETTINGS_SCAN_ON_PUSH",
        ),
        (
            "wildcard principal",
            {
                let mut r = base();
                r.settings.as_mut().unwrap().repository_policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"ecr:*"}]}"#.into();
                r
            },
            "settings.repository_policy",
            "REPOSITORY_POLICY_WILDCARD_PRINCIPAL",
        ),
        (
            "foreign account",
            {
                let mut r = base();
                r.settings.as_mut().unwrap().repository_policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::999999999999:root"},"Action":"ecr:*"}]}"#.into();
                r
            },
            "settings.repository_policy",
            "REPOSITORY_POLICY_CROSS_ACCOUNT",
        ),
        (
            "unknown registry",
            pb::CreateRepositoryRequest {
                registry: "nope".into(),
                ..base()
            },
            "registry",
            "REGISTRY_UNKNOWN",
        ),
        (
            "bad request id",
            pb::CreateRepositoryRequest {
                request_id: "has spaces".into(),
                ..base()
            },
            "request_id",
            "REQUEST_ID_FORMAT",
        ),
    ];
    for (case, request, field, reason) in cases {
        let status = gateway
            .repositories()
            .create_repository(alice(request))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        let found = violations(&status);
        assert!(
            found.iter().any(|(f, r)| f.starts_with(field) && r == reason),
            "{case}: expected {field}/{reason}, got {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_only_reports_the_plan_and_touches_nothing() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("search", "indexer");
    let mut request = create_request(&name, "validate-only-1");
    request
        .settings
        .as_mut()
        .unwrap()
        .tags
        .insert("team".into(), "search".into());
    request.validate_only = true;

    let response = gateway
        .repositories()
        .create_repository(sam(request))
        .await
        .expect("valid")
        .into_inner();

    let planned = response.repository.expect("planned");
    assert_eq!(
        planned
            .settings
            .expect("settings")
            .tags
            .get("managed-by")
            .map(String::as_str),
        Some("ecr-gateway")
    );
    let ecr = ecr_client(Moto::shared()).await;
    let error = ecr
        .describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .expect_err("not created");
    assert!(format!("{error:?}").contains("RepositoryNotFound"));
    let pool = db.pool().await;
    let cached: i64 = sqlx::query_scalar("SELECT count(*) FROM repositories")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(cached, 0);
    let ops: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(ops, 0, "validate_only must not claim the request_id");
    assert_eq!(
        wait_for_audit_rows(&pool, "event_name = 'CreateRepository' AND read_only", 1).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_request_id_replays_and_creates_nothing_new() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "replay");
    let first = gateway
        .repositories()
        .create_repository(alice(create_request(&name, "replay-1")))
        .await
        .expect("first")
        .into_inner();

    let second = gateway
        .repositories()
        .create_repository(alice(create_request(&name, "replay-1")))
        .await
        .expect("second")
        .into_inner();

    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.repository.map(|r| r.arn), second.repository.map(|r| r.arn));
    let ecr = ecr_client(Moto::shared()).await;
    let all = ecr.describe_repositories().send().await.expect("list");
    assert_eq!(
        all.repositories()
            .iter()
            .filter(|r| r.repository_name() == Some(name.as_str()))
            .count(),
        1
    );
    let pool = db.pool().await;
    let mutations: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE event_name = 'CreateRepository' AND cardinality(ecr_request_ids) > 0")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(mutations, 1, "only the first call reached ECR");
    assert_eq!(
        wait_for_audit_rows(&pool, "event_name = 'CreateRepository'", 2).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_id_sent_to_two_replicas_at_once_gets_the_winners_answer_from_both() {
    let db = TestDb::create().await;
    let proxy = common::proxy::FaultProxy::start(Moto::shared()).await;
    // Two replicas over one database.
    let a = Gateway::start(config(&db, &proxy.endpoint, "")).await;
    let b = Gateway::start(config(&db, &proxy.endpoint, "")).await;
    let name = unique("payments", "twice");
    let request = create_request(&name, "twice-1");
    // The first attempt hangs in ECR (moto creates, its answer is held back)
    // while the same request reaches the other replica.
    let before = proxy.count("CreateRepository");
    proxy.hold_answers("CreateRepository", before);
    let mut first_client = a.repositories();
    let first_request = alice(request.clone());
    let first = tokio::spawn(async move { first_client.create_repository(first_request).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while proxy.count("CreateRepository") == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the first attempt never reached ECR"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A caller whose deadline comes first is told to retry soon, not after the lease.
    let mut hurried = alice(request.clone());
    hurried.set_timeout(std::time::Duration::from_millis(500));
    let refused = b
        .repositories()
        .create_repository(hurried)
        .await
        .expect_err("the first attempt is still running");
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    let retry_delay = refused
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry_delay <= std::time::Duration::from_secs(1),
        "a retry delay like an attempt's, not the lease's: {retry_delay:?}"
    );
    let mut second_client = b.repositories();
    let mut second_request = alice(request.clone());
    second_request.set_timeout(std::time::Duration::from_secs(15));
    let second = tokio::spawn(async move { second_client.create_repository(second_request).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second call waits for the running attempt: {:?}",
        second.await
    );
    proxy.heal();
    let first = first.await.unwrap().expect("first").into_inner();
    let second = second
        .await
        .unwrap()
        .expect("second waited and got the answer")
        .into_inner();
    assert!(!first.replayed);
    assert!(second.replayed, "the second call replays the first one's answer");
    assert_eq!(first.repository, second.repository);
    assert_eq!(
        proxy.count("CreateRepository"),
        before + 1,
        "one create reached ECR"
    );
    let ecr = ecr_client(Moto::shared()).await;
    let all = ecr.describe_repositories().send().await.expect("list");
    assert_eq!(
        all.repositories()
            .iter()
            .filter(|r| r.repository_name() == Some(name.as_str()))
            .count(),
        1
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_reused_for_another_request_is_rejected() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    gateway
        .repositories()
        .create_repository(alice(create_request(&unique("payments", "a"), "reuse-1")))
        .await
        .expect("first");

    let status = gateway
        .repositories()
        .create_repository(alice(create_request(&unique("payments", "b"), "reuse-1")))
        .await
        .expect_err("reused");

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![("request_id".to_owned(), "REQUEST_ID_REUSED".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_made_outside_this_request_is_already_exists() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "taken");
    let ecr = ecr_client(Moto::shared()).await;
    ecr.create_repository()
        .repository_name(&name)
        .send()
        .await
        .expect("made by someone else");

    let status = gateway
        .repositories()
        .create_repository(alice(create_request(&name, "taken-1")))
        .await
        .expect_err("exists");

    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&name));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_finishes_a_create_that_failed_half_way() {
    let db = TestDb::create().await;
    let moto = Moto::start();
    let proxy = common::proxy::FaultProxy::start(&moto.endpoint).await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, "")).await;
    let name = unique("payments", "half");
    proxy.fail_action("PutLifecyclePolicy");

    let first = gateway
        .repositories()
        .create_repository(alice(create_request(&name, "half-1")))
        .await
        .expect_err("step fails");

    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert!(first.get_details_retry_info().is_some());
    let ecr = ecr_client(&moto.endpoint).await;
    ecr.describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .expect("repository step done");
    assert!(
        ecr.get_lifecycle_policy()
            .repository_name(&name)
            .send()
            .await
            .is_err(),
        "lifecycle step not done"
    );

    proxy.heal();
    let second = gateway
        .repositories()
        .create_repository(alice(create_request(&name, "half-1")))
        .await
        .expect("retry finishes")
        .into_inner();

    assert!(!second.replayed);
    ecr.get_lifecycle_policy()
        .repository_name(&name)
        .send()
        .await
        .expect("lifecycle now set");
    let pool = db.pool().await;
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM audit_events WHERE event_name = 'CreateRepository' ORDER BY event_time",
    )
    .fetch_all(&pool)
    .await
    .expect("audit");
    assert_eq!(statuses, vec!["failed", "succeeded"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_unreachable_is_unavailable_and_the_audit_record_says_failed() {
    let db = TestDb::create().await;
    let dead_endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let gateway = Gateway::start(config(&db, &dead_endpoint, "")).await;

    let status = gateway
        .repositories()
        .create_repository(alice(create_request(&unique("payments", "down"), "down-1")))
        .await
        .expect_err("unreachable");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.get_details_retry_info().is_some());
    let pool = db.pool().await;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, error_code FROM audit_events WHERE event_name = 'CreateRepository'")
            .fetch_all(&pool)
            .await
            .expect("audit");
    assert_eq!(rows, vec![("failed".to_owned(), Some("Unavailable".to_owned()))]);
    let cached: i64 = sqlx::query_scalar("SELECT count(*) FROM repositories")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(cached, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_unreachable_refuses_mutations_before_ecr_is_called() {
    let db = TestDb::create().await;
    let mut cfg = config(&db, Moto::shared(), "");
    cfg.database.url = format!("postgres://postgres@127.0.0.1:{}/nothing", common::free_port());
    cfg.database.migrate_on_start = false;
    cfg.database.acquire_timeout_seconds = 1;
    let gateway = Gateway::start(cfg).await;
    let name = unique("payments", "nodb");

    let status = gateway
        .repositories()
        .create_repository(alice(create_request(&name, "nodb-1")))
        .await
        .expect_err("no db");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("info").reason,
        "AUDIT_UNAVAILABLE"
    );
    let ecr = ecr_client(Moto::shared()).await;
    assert!(
        ecr.describe_repositories()
            .repository_names(&name)
            .send()
            .await
            .is_err(),
        "ECR must not be touched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_repository_with_images_needs_force() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "full");
    gateway
        .repositories()
        .create_repository(alice(create_request(&name, "")))
        .await
        .expect("created");
    let ecr = ecr_client(Moto::shared()).await;
    common::images::push(&ecr, &name, "v1", &name).await;
    let delete = |force| pb::DeleteRepositoryRequest {
        repository: name.clone(),
        force,
        ..Default::default()
    };

    let refused = gateway
        .repositories()
        .delete_repository(alice(delete(false)))
        .await
        .expect_err("not empty");

    assert_eq!(refused.code(), Code::FailedPrecondition);
    let failure = refused
        .get_details_precondition_failure()
        .expect("precondition failure");
    assert_eq!(failure.violations[0].r#type, "REPOSITORY_NOT_EMPTY");
    ecr.describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .expect("still there");

    let deleted = gateway
        .repositories()
        .delete_repository(alice(delete(true)))
        .await
        .expect("forced")
        .into_inner();

    assert_eq!(deleted.image_count, 1);
    assert!(
        ecr.describe_repositories()
            .repository_names(&name)
            .send()
            .await
            .is_err(),
        "gone from ECR"
    );
    let get = gateway
        .repositories()
        .get_repository(alice(pb::GetRepositoryRequest {
            repository: name.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("gone");
    assert_eq!(get.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_repositories_pages_and_filters_by_prefix_and_tag() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let stem = unique("payments", "list");
    let mut names = Vec::new();
    for i in 0..5 {
        let name = format!("{stem}/svc{i}");
        let mut request = create_request(&name, "");
        if i % 2 == 0 {
            request
                .settings
                .as_mut()
                .unwrap()
                .tags
                .insert("tier".into(), "gold".into());
        }
        gateway
            .repositories()
            .create_repository(alice(request))
            .await
            .expect("created");
        names.push(name);
    }
    let list = |page_token: String, tag: Option<&str>| pb::ListRepositoriesRequest {
        prefix: format!("{stem}/"),
        page_size: 2,
        page_token,
        tag_filter: tag
            .map(|t| [("tier".to_owned(), t.to_owned())].into_iter().collect())
            .unwrap_or_default(),
        ..Default::default()
    };

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = gateway
            .repositories()
            .list_repositories(alice(list(token, None)))
            .await
            .expect("page")
            .into_inner();
        assert!(page.repositories.len() <= 2);
        seen.extend(page.repositories.into_iter().map(|r| r.repository));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, names);

    let gold = gateway
        .repositories()
        .list_repositories(alice(list(String::new(), Some("gold"))))
        .await
        .expect("gold")
        .into_inner();
    assert_eq!(
        gold.repositories
            .iter()
            .map(|r| r.repository.clone())
            .collect::<Vec<_>>(),
        vec![names[0].clone(), names[2].clone()]
    );
    let status = gateway
        .repositories()
        .list_repositories(alice(list(gold.next_page_token.clone(), None)))
        .await
        .expect_err("token bound to the tag filter");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status)[0].0, "page_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_registry_in_another_account_is_reached_by_assuming_a_role() {
    let db = TestDb::create().await;
    let extra = format!(
        r#"
[[registries]]
alias = "partner"
account_id = "{other}"
region = "{region}"
endpoint_url = "{endpoint}"
role_arn = "arn:aws:iam::{other}:role/ecr-gateway"
"#,
        other = common::OTHER_ACCOUNT,
        region = common::REGION,
        endpoint = Moto::shared(),
    );
    let gateway = Gateway::start(config(&db, Moto::shared(), &extra)).await;
    let name = unique("payments", "partner");
    let mut request = create_request(&name, "");
    request.registry = "partner".into();

    let created = gateway
        .repositories()
        .create_repository(alice(request))
        .await
        .expect("created")
        .into_inner();

    let repository = created.repository.expect("repository");
    assert_eq!(repository.registry_id, common::OTHER_ACCOUNT);
    assert!(
        repository.arn.contains(common::OTHER_ACCOUNT),
        "{}",
        repository.arn
    );
    let ecr = ecr_client(Moto::shared()).await;
    let in_default = ecr.describe_repositories().repository_names(&name).send().await;
    assert!(in_default.is_err(), "must not exist in the default account");
    let partner = common::ecr_client_assuming(
        Moto::shared(),
        &format!("arn:aws:iam::{}:role/ecr-gateway", common::OTHER_ACCOUNT),
    )
    .await;
    let in_partner = partner
        .describe_repositories()
        .repository_names(&name)
        .send()
        .await;
    assert!(
        in_partner.is_ok(),
        "exists in the partner account: {in_partner:?}"
    );
    let listed = gateway
        .repositories()
        .list_repositories(alice(pb::ListRepositoriesRequest {
            registry: "main".into(),
            prefix: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.repositories.is_empty(),
        "the main registry's listing keeps the partner's repositories apart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_repository_changes_only_the_masked_settings_under_the_policy() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "update");
    gateway
        .repositories()
        .create_repository(alice(create_request(&name, "")))
        .await
        .expect("created");
    let update = |paths: &[&str], settings: pb::RepositorySettings| pb::UpdateRepositoryRequest {
        repository: name.clone(),
        settings: Some(settings),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..Default::default()
    };
    let mut new_tags = good_settings();
    new_tags.tags.insert("cost-center".into(), "cc-2002".into());

    let updated = gateway
        .repositories()
        .update_repository(alice(update(&["tags"], new_tags)))
        .await
        .expect("updated")
        .into_inner();

    let settings = updated
        .repository
        .expect("repository")
        .settings
        .expect("settings");
    assert_eq!(
        settings.tags.get("cost-center").map(String::as_str),
        Some("cc-2002")
    );
    assert_eq!(
        settings.image_tag_mutability,
        pb::ImageTagMutability::ImmutableWithExclusion as i32
    );
    let ecr = ecr_client(Moto::shared()).await;
    let arn = ecr
        .describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .expect("repo")
        .repositories()[0]
        .repository_arn()
        .expect("arn")
        .to_owned();
    let tags = ecr
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .expect("tags");
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == "cost-center" && t.value() == "cc-2002")
    );

    let mutable = pb::RepositorySettings {
        image_tag_mutability: pb::ImageTagMutability::Mutable as i32,
        ..Default::default()
    };
    let refused = gateway
        .repositories()
        .update_repository(alice(update(&["image_tag_mutability"], mutable)))
        .await
        .expect_err("policy");
    // MUTABLE is not allowed, and the kept exclusion filters need a *_WITH_EXCLUSION mutability: both are reported.
    assert_eq!(
        violations(&refused),
        vec![
            (
                "settings.image_tag_mutability".to_owned(),
                "SETTINGS_TAG_MUTABILITY".to_owned()
            ),
            (
                "settings.image_tag_mutability_exclusion_filters".to_owned(),
                "SETTINGS_EXCLUSION_FILTER_COUNT".to_owned()
            ),
        ]
    );

    let bad_mask = gateway
        .repositories()
        .update_repository(alice(update(&["encryption", "colour"], good_settings())))
        .await
        .expect_err("mask");
    let reasons: Vec<String> = violations(&bad_mask).into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        reasons,
        vec!["UPDATE_MASK_IMMUTABLE_FIELD", "UPDATE_MASK_UNKNOWN_PATH"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_repository_answers_from_the_cache_or_reads_through() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("search", "get");
    let mut request = create_request(&name, "");
    request
        .settings
        .as_mut()
        .unwrap()
        .tags
        .insert("team".into(), "search".into());
    gateway
        .repositories()
        .create_repository(sam(request))
        .await
        .expect("created");
    let get = |consistency: pb::Consistency| pb::GetRepositoryRequest {
        repository: name.clone(),
        consistency: consistency as i32,
        ..Default::default()
    };

    let cached = gateway
        .repositories()
        .get_repository(sam(get(pb::Consistency::Unspecified)))
        .await
        .expect("cached")
        .into_inner();
    let strong = gateway
        .repositories()
        .get_repository(sam(get(pb::Consistency::Strong)))
        .await
        .expect("strong")
        .into_inner();

    let cached_freshness = cached.freshness.expect("freshness");
    assert!(!cached_freshness.read_through);
    assert!(cached_freshness.synced_at.is_some());
    assert!(strong.freshness.expect("freshness").read_through);
    assert_eq!(cached.arn, strong.arn);

    let bad = gateway
        .repositories()
        .get_repository(alice(pb::GetRepositoryRequest {
            registry: "nope".into(),
            repository: "UPPER".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad");
    let fields: Vec<String> = violations(&bad).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, vec!["registry", "repository"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_without_identity_is_unauthenticated_and_audited() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;

    let status = gateway
        .repositories()
        .list_repositories(tonic::Request::new(pb::ListRepositoriesRequest::default()))
        .await
        .expect_err("no identity");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("x-ecr-gateway-principal"));
    let pool = db.pool().await;
    assert_eq!(
        wait_for_audit_rows(
            &pool,
            "principal = 'anonymous' AND error_code = 'Unauthenticated'",
            1
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_leaves_exactly_one_audit_record() {
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "audit");
    let mut client = gateway.repositories();
    client
        .create_repository(alice(create_request(&name, "audit-1")))
        .await
        .expect("create");
    client
        .create_repository(alice(create_request(&name, "audit-1")))
        .await
        .expect("replay");
    client
        .get_repository(alice(pb::GetRepositoryRequest {
            repository: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("get");
    client
        .list_repositories(alice(pb::ListRepositoriesRequest::default()))
        .await
        .expect("list");
    client
        .create_repository(alice(create_request("BAD", "")))
        .await
        .expect_err("bad");
    client
        .delete_repository(alice(pb::DeleteRepositoryRequest {
            repository: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("delete");

    let pool = db.pool().await;
    assert_eq!(wait_for_audit_rows(&pool, "true", 6).await, 6);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT event_name, status, principal, read_only FROM audit_events ORDER BY event_time",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let summary: Vec<(&str, &str)> = rows.iter().map(|(n, s, _, _)| (n.as_str(), s.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            ("CreateRepository", "succeeded"),
            ("CreateRepository", "succeeded"),
            ("GetRepository", "succeeded"),
            ("ListRepositories", "succeeded"),
            ("CreateRepository", "failed"),
            ("DeleteRepository", "succeeded"),
        ]
    );
    assert!(rows.iter().all(|(_, _, p, _)| p == "alice@example.com"));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE status = 'pending'")
        .fetch_one(&pool)
        .await
        .expect("pending");
    assert_eq!(pending, 0);
    let delete_resources: serde_json::Value =
        sqlx::query_scalar("SELECT resources FROM audit_events WHERE event_name = 'DeleteRepository'")
            .fetch_one(&pool)
            .await
            .expect("resources");
    assert!(
        delete_resources
            .to_string()
            .contains(&format!("repository/{name}"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_cli_sees_every_enforced_setting_of_a_created_repository() {
    let aws = std::env::var_os("ECR_GATEWAY_TEST_AWS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws"));
    assert!(
        aws.exists(),
        "AWS CLI not found at {}: run scripts/test (it installs awscli into .venv) or set ECR_GATEWAY_TEST_AWS",
        aws.display()
    );
    let db = TestDb::create().await;
    let gateway = start(&db).await;
    let name = unique("payments", "cli");
    gateway
        .repositories()
        .create_repository(alice(create_request(&name, "cli-1")))
        .await
        .expect("created");

    let output = tokio::task::spawn_blocking({
        let name = name.clone();
        move || {
            std::process::Command::new(aws)
                .args([
                    "--endpoint-url",
                    Moto::shared(),
                    "--region",
                    common::REGION,
                    "--output",
                    "json",
                ])
                .args(["ecr", "describe-repositories", "--repository-names", &name])
                .output()
                .expect("run aws")
        }
    })
    .await
    .expect("join");

    assert!(
        output.status.success(),
        "aws failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let described: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let repository = &described["repositories"][0];
    assert_eq!(repository["imageTagMutability"], "IMMUTABLE_WITH_EXCLUSION");
    assert_eq!(repository["imageScanningConfiguration"]["scanOnPush"], true);
    assert_eq!(repository["encryptionConfiguration"]["encryptionType"], "AES256");
}
