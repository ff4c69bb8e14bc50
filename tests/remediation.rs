//! RemediateRepositories against moto and Postgres: repositories made in ECR
//! directly break the tests' org policy; a dry run plans each change from
//! the cache; a run mends them in ECR (checked with the tests' own client),
//! audits each change with the rules it mends, and a second run changes
//! nothing. Killed with SIGKILL in the middle of a run over 50 repositories,
//! the gateway finishes the run after a restart, each change audited once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ecr::types::ImageTagMutability;
use common::process::Process;
use common::{Gateway, Moto, TestDb, as_user, config, config_text, ecr_client, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::compliance_service_client::ComplianceServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const WORKER: &str = "[cleanup]\nlease_seconds = 2\npoll_interval_seconds = 1\n";

fn alice<T>(message: T) -> tonic::Request<T> {
    as_user(message, "alice@example.com", "payments")
}

fn sam<T>(message: T) -> tonic::Request<T> {
    as_user(message, "sam@example.com", "search")
}

fn team_values() -> BTreeMap<String, String> {
    [("team", "payments"), ("cost-center", "cc-1001")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Makes `name` in ECR as the AWS CLI would: mutable tags, no scan on push, no tags.
async fn made_by_cli(ecr: &aws_sdk_ecr::Client, name: &str) {
    ecr.create_repository()
        .repository_name(name)
        .image_tag_mutability(ImageTagMutability::Mutable)
        .send()
        .await
        .expect("create in moto");
}

/// Brings ECR's repositories into the cache (a registry-wide refresh).
async fn refresh(channel: &Channel) {
    ImageServiceClient::new(channel.clone())
        .refresh_inventory(as_user(
            pb::RefreshInventoryRequest::default(),
            "root@example.com",
            "platform-admins",
        ))
        .await
        .expect("refresh");
}

async fn wait_for_run(channel: &Channel, id: &str, within: Duration) -> pb::RemediationRun {
    let deadline = Instant::now() + within;
    loop {
        let run = ComplianceServiceClient::new(channel.clone())
            .get_remediation_run(alice(pb::GetRemediationRunRequest { id: id.into() }))
            .await
            .expect("get run")
            .into_inner();
        let ended = [
            pb::RemediationRunState::Succeeded,
            pb::RemediationRunState::Failed,
            pb::RemediationRunState::Cancelled,
        ]
        .map(|s| s as i32);
        if ended.contains(&run.state) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct InEcr {
    mutability: String,
    scan_on_push: bool,
    tags: BTreeMap<String, String>,
    lifecycle: Option<String>,
}

async fn in_ecr(ecr: &aws_sdk_ecr::Client, name: &str) -> InEcr {
    let described = ecr
        .describe_repositories()
        .repository_names(name)
        .send()
        .await
        .expect("describe");
    let repository = described.repositories()[0].clone();
    let tags = ecr
        .list_tags_for_resource()
        .resource_arn(repository.repository_arn().unwrap_or_default())
        .send()
        .await
        .expect("tags")
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    let lifecycle = ecr
        .get_lifecycle_policy()
        .repository_name(name)
        .send()
        .await
        .ok()
        .and_then(|p| p.lifecycle_policy_text().map(str::to_owned));
    InEcr {
        mutability: repository
            .image_tag_mutability()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
        scan_on_push: repository
            .image_scanning_configuration()
            .is_some_and(|c| c.scan_on_push()),
        tags,
        lifecycle,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_plans_a_run_mends_in_ecr_and_a_second_run_changes_nothing() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let prefix = unique("payments", "mend");
    let names: Vec<String> = ["a", "b"].iter().map(|s| format!("{prefix}-{s}")).collect();
    for name in &names {
        made_by_cli(&ecr, name).await;
    }
    let gateway = Gateway::start(config(&db, Moto::shared(), WORKER)).await;
    refresh(&gateway.channel).await;
    let mut client = ComplianceServiceClient::new(gateway.channel.clone());

    // The plan, from the cache: nothing changes in ECR.
    let plan = client
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            prefix: prefix.clone(),
            tags: team_values(),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(plan.plans.len(), 2, "{plan:#?}");
    assert!(plan.run.is_none());
    let fields: Vec<&str> = plan.plans[0].changes.iter().map(|c| c.field.as_str()).collect();
    for field in [
        "settings.image_tag_mutability",
        "settings.scan_on_push",
        "settings.tags[\"team\"]",
        "settings.tags[\"cost-center\"]",
        "settings.tags[\"managed-by\"]",
    ] {
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
    assert_eq!(
        in_ecr(&ecr, &names[0]).await.mutability,
        "MUTABLE",
        "a dry run changes nothing"
    );

    // Another team may not remediate payments' repositories.
    let denied = client
        .remediate_repositories(sam(pb::RemediateRepositoriesRequest {
            prefix: prefix.clone(),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect_err("sam may not update payments repositories");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // For real.
    let started = client
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            prefix: prefix.clone(),
            tags: team_values(),
            request_id: format!("{}-1", prefix.replace('/', "-")),
            ..Default::default()
        }))
        .await
        .expect("run")
        .into_inner();
    let id = started.run.expect("a run").id;
    let run = wait_for_run(&gateway.channel, &id, Duration::from_secs(30)).await;
    assert_eq!(run.state, pb::RemediationRunState::Succeeded as i32, "{run:#?}");
    assert!(
        run.repositories
            .iter()
            .all(|r| r.outcome == pb::RemediationOutcome::Mended as i32),
        "{run:#?}"
    );
    for name in &names {
        let state = in_ecr(&ecr, name).await;
        assert_eq!(state.mutability, "IMMUTABLE");
        assert!(state.scan_on_push);
        assert_eq!(state.tags.get("team").map(String::as_str), Some("payments"));
        assert_eq!(
            state.tags.get("managed-by").map(String::as_str),
            Some("ecr-gateway")
        );
        assert!(
            state
                .lifecycle
                .is_some_and(|l| l.contains("expire untagged images after 14 days"))
        );
    }
    // Each change is audited once, naming the rules it mends.
    let pool = db.pool().await;
    let events: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT request_parameters->>'repositoryName', status, request_parameters->'rules' FROM audit_events
         WHERE event_name = 'RemediateRepository' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|(_, status, _)| status == "succeeded"));
    let rules = events[0].2.to_string();
    for rule in [
        "settings.tag-mutability",
        "settings.scan-on-push",
        "tags.required",
        "tags.default",
    ] {
        assert!(rules.contains(rule), "{rule} in {rules}");
    }

    // The same request_id answers the first run.
    let replay = client
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            prefix: prefix.clone(),
            tags: team_values(),
            request_id: format!("{}-1", prefix.replace('/', "-")),
            ..Default::default()
        }))
        .await
        .expect("replay")
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.run.map(|r| r.id), Some(id.clone()));

    // A second run finds nothing to change.
    let again = client
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            repositories: names.clone(),
            tags: team_values(),
            request_id: format!("{}-2", prefix.replace('/', "-")),
            ..Default::default()
        }))
        .await
        .expect("second run")
        .into_inner();
    let second = wait_for_run(
        &gateway.channel,
        &again.run.expect("run").id,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        second
            .repositories
            .iter()
            .all(|r| r.outcome == pb::RemediationOutcome::Unchanged as i32),
        "{second:#?}"
    );
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE event_name = 'RemediateRepository'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(count, 2, "a run that changes nothing writes no change event");

    // The runs are listed, newest first; an ended run cannot be cancelled.
    let listed = client
        .list_remediation_runs(alice(pb::ListRemediationRunsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), id.as_str()]);
    let progress = listed.runs[1].counts.expect("counts");
    assert_eq!((progress.mended, progress.pending), (2, 0), "{progress:?}");
    assert_eq!(listed.runs[0].counts.map(|c| c.unchanged), Some(2));
    let cancel = client
        .cancel_remediation_run(alice(pb::CancelRemediationRunRequest { id: id.clone() }))
        .await
        .expect_err("ended");
    assert_eq!(cancel.code(), Code::FailedPrecondition);
    // Another team neither sees nor reads alice's runs.
    let theirs = client
        .list_remediation_runs(sam(pb::ListRemediationRunsRequest::default()))
        .await
        .expect("sam lists")
        .into_inner();
    assert_eq!(theirs.runs, Vec::new());
    let read = client
        .get_remediation_run(sam(pb::GetRemediationRunRequest { id }))
        .await
        .expect_err("not sam's");
    assert_eq!(read.code(), Code::PermissionDenied);
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_required_tag_without_a_value_is_left_and_encryption_is_never_touched() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let name = unique("payments", "untagged");
    made_by_cli(&ecr, &name).await;
    let gateway = Gateway::start(config(&db, Moto::shared(), WORKER)).await;
    refresh(&gateway.channel).await;

    let plan = ComplianceServiceClient::new(gateway.channel.clone())
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            repositories: vec![name.clone()],
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("dry run")
        .into_inner();

    let left: Vec<&str> = plan.plans[0].left.iter().map(|v| v.rule.as_str()).collect();
    assert_eq!(left, ["tags.required", "tags.required"], "{plan:#?}");
    assert!(
        plan.plans[0]
            .changes
            .iter()
            .all(|c| c.field != "settings.encryption")
    );
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_the_field() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), WORKER)).await;
    let mut client = ComplianceServiceClient::new(gateway.channel.clone());
    for (request, field) in [
        (pb::RemediateRepositoriesRequest::default(), "prefix"),
        (
            pb::RemediateRepositoriesRequest {
                prefix: "payments/".into(),
                repositories: vec!["payments/a".into()],
                ..Default::default()
            },
            "repositories",
        ),
        (
            pb::RemediateRepositoriesRequest {
                repositories: vec!["Payments/A".into()],
                ..Default::default()
            },
            "repositories[0]",
        ),
        (
            pb::RemediateRepositoriesRequest {
                prefix: "payments/".into(),
                rules: vec!["nope".into()],
                ..Default::default()
            },
            "rules[0]",
        ),
    ] {
        let status = client
            .remediate_repositories(alice(request.clone()))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
        let fields: Vec<String> = common::violations(&status).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, [field], "{request:?}: {status:?}");
    }
    let missing = client
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            repositories: vec!["payments/never-made".into()],
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect_err("not cached");
    assert_eq!(missing.code(), Code::NotFound);
    let bad_id = client
        .get_remediation_run(alice(pb::GetRemediationRunRequest { id: "x".into() }))
        .await
        .expect_err("not a uuid");
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    gateway.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_over_50_repositories_killed_midway_finishes_after_a_restart() {
    let db = TestDb::create().await;
    let ecr = ecr_client(Moto::shared()).await;
    let prefix = unique("payments", "crash");
    let names: Vec<String> = (0..50).map(|i| format!("{prefix}-{i:02}")).collect();
    for name in &names {
        made_by_cli(&ecr, name).await;
    }
    let text = config_text(&db, Moto::shared(), WORKER);
    let first = Process::start(&text).await;
    refresh(&first.channel).await;
    let started = ComplianceServiceClient::new(first.channel.clone())
        .remediate_repositories(alice(pb::RemediateRepositoriesRequest {
            prefix: prefix.clone(),
            tags: team_values(),
            request_id: format!("{}-run", prefix.replace('/', "-")),
            ..Default::default()
        }))
        .await
        .expect("run")
        .into_inner();
    let id = started.run.expect("a run").id;
    // Kill it once some, not all, repositories are mended.
    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM remediation_items WHERE outcome <> 'pending' AND run_id::text = $1",
        )
        .bind(&id)
        .fetch_one(&pool)
        .await
        .expect("count");
        if mended >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM remediation_items WHERE outcome <> 'pending' AND run_id::text = $1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert!(
        done < 50,
        "the kill came after the run had finished: nothing was resumed"
    );

    let second = Process::start(&text).await;
    let run = wait_for_run(&second.channel, &id, Duration::from_secs(120)).await;
    assert_eq!(run.state, pb::RemediationRunState::Succeeded as i32, "{run:#?}");
    assert_eq!(run.repositories.len(), 50);
    assert!(
        run.repositories
            .iter()
            .all(|r| r.outcome == pb::RemediationOutcome::Mended as i32),
        "{run:#?}"
    );
    for name in &names {
        let state = in_ecr(&ecr, name).await;
        assert!(state.mutability == "IMMUTABLE" && state.scan_on_push, "{name}");
        assert_eq!(
            state.tags.get("team").map(String::as_str),
            Some("payments"),
            "{name}"
        );
    }
    // One succeeded change event per repository, none left pending.
    let events: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM audit_events WHERE event_name = 'RemediateRepository'
         AND request_parameters->>'repositoryName' LIKE $1 GROUP BY status",
    )
    .bind(format!("{prefix}-%"))
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(events, [("succeeded".to_owned(), 50)]);
    second.terminate(Duration::from_secs(20));
}
