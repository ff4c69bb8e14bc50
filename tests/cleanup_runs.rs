//! Cleanup runs end to end against moto and Postgres: a run deletes what its
//! policy selects in batches, never what is pinned or protected (pins are
//! re-checked before each batch), survives its worker being killed mid-batch
//! without deleting anything twice, and can be cancelled. ECR's state is
//! checked with the tests' own client.
//!
//! moto stamps pushes made within a second alike, so the tests set the ages
//! the policy ranks by in the gateway's cache (the run plans from the cache).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::images::{push, push_untagged};
use common::process::Process;
use common::proxy::FaultProxy;
use common::{
    Moto, TestDb, as_user, config, config_text, digests_in_ecr, ecr_client, tagged_repository, unique,
    violations,
};
use ecr_gateway::pb;
use ecr_gateway::pb::cleanup_service_client::CleanupServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Small batches and a short lease, so that a run has several batches and a
/// dead worker's run is taken over quickly; `release-*` is protected.
const RUNS: &str = r#"
[cleanup]
batch_size = 10
lease_seconds = 2
poll_interval_seconds = 1

[policy.cleanup]
protected_tags = ["release-*"]
"#;

/// Keeps 5 dev builds and 2 release builds; expires untagged images after a week.
const POLICY: &str = r#"{"rules":[
 {"rulePriority":1,"description":"keep 5 dev builds","selection":{"tagStatus":"tagged","tagPrefixList":["dev-"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
 {"rulePriority":2,"description":"keep 2 release builds","selection":{"tagStatus":"tagged","tagPatternList":["release-*"],"countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}},
 {"rulePriority":3,"description":"expire untagged images after a week","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}}]}"#;

fn ops<T>(message: T) -> tonic::Request<T> {
    as_user(message, "platform-ops", "platform")
}

async fn create_repository(channel: &Channel, name: &str) {
    RepositoryServiceClient::new(channel.clone())
        .create_repository(ops(tagged_repository(name)))
        .await
        .expect("create repository");
}

async fn refresh(channel: &Channel, repository: &str) {
    ImageServiceClient::new(channel.clone())
        .refresh_inventory(ops(pb::RefreshInventoryRequest {
            repository: repository.into(),
            ..Default::default()
        }))
        .await
        .expect("refresh");
}

/// Ages the cached images: the i-th of `digests` (push order) is `digests.len() - i` days old.
async fn age(pool: &sqlx::PgPool, digests: &[String]) {
    for (i, digest) in digests.iter().enumerate() {
        sqlx::query("UPDATE images SET pushed_at = now() - make_interval(days => $1) WHERE digest = $2")
            .bind((digests.len() - i) as i32)
            .bind(digest)
            .execute(pool)
            .await
            .expect("age");
    }
}

async fn get_run(channel: &Channel, id: &str) -> pb::CleanupRun {
    common::cleanup_run(channel, id, "platform-ops", "platform").await
}

/// Every item of a run with `outcome`, paging through.
async fn items(channel: &Channel, id: &str, outcome: pb::CleanupItemOutcome) -> Vec<pb::CleanupRunItem> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = CleanupServiceClient::new(channel.clone())
            .get_cleanup_run(ops(pb::GetCleanupRunRequest {
                id: id.into(),
                outcome: outcome as i32,
                page_size: 4,
                page_token,
            }))
            .await
            .expect("items")
            .into_inner();
        all.extend(page.items);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_state(channel: &Channel, id: &str, state: pb::CleanupRunState) -> pb::CleanupRun {
    common::wait_for_run_state(
        channel,
        id,
        ("platform-ops", "platform"),
        state,
        Duration::from_secs(60),
    )
    .await
}

async fn pin(
    channel: &Channel,
    repository: &str,
    digest: &str,
    holder: &str,
) -> Result<pb::Pin, tonic::Status> {
    CleanupServiceClient::new(channel.clone())
        .pin_image(ops(pb::PinImageRequest {
            repository: repository.into(),
            digest: digest.into(),
            holder: holder.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_deletes_in_batches_spares_pins_and_protection_and_resumes_after_its_worker_is_killed() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let proxy = FaultProxy::start(moto).await;
    let ecr = ecr_client(moto).await;
    let first = Process::start(&config_text(&db, &proxy.endpoint, RUNS)).await;
    let repo = unique("payments", "runs");
    create_repository(&first.channel, &repo).await;

    // 50 images in push order: 20 dev builds, 14 untagged, 5 releases, 5 versions, 6 features.
    let mut all = Vec::new();
    let mut dev = Vec::new();
    for i in 0..20 {
        dev.push(push(&ecr, &repo, &format!("dev-{i}"), &format!("{repo}-dev-{i}")).await);
    }
    let mut untagged = Vec::new();
    for i in 0..14 {
        untagged.push(push_untagged(&ecr, &repo, &format!("{repo}-untagged-{i}")).await);
    }
    let mut releases = Vec::new();
    for i in 0..5 {
        releases.push(
            push(
                &ecr,
                &repo,
                &format!("release-{i}"),
                &format!("{repo}-release-{i}"),
            )
            .await,
        );
    }
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(push(&ecr, &repo, &format!("v1.{i}"), &format!("{repo}-v1-{i}")).await);
    }
    for i in 0..6 {
        others.push(
            push(
                &ecr,
                &repo,
                &format!("feature-{i}"),
                &format!("{repo}-feature-{i}"),
            )
            .await,
        );
    }
    all.extend(
        dev.iter()
            .chain(&untagged)
            .chain(&releases)
            .chain(&others)
            .cloned(),
    );
    assert_eq!(all.len(), 50);
    refresh(&first.channel, &repo).await;
    let pool = db.pool().await;
    age(&pool, &all).await;
    pin(&first.channel, &repo, &dev[0], "deploy/prod/payments-api")
        .await
        .expect("pin dev-0");
    pin(&first.channel, &repo, &untagged[0], "deploy/prod/payments-worker")
        .await
        .expect("pin an untagged image");

    // Expected: dev-0..14 (dev-0 pinned), the 14 untagged (one pinned); release-0..2 protected.
    let expected_deleted: BTreeSet<String> = dev[1..15].iter().chain(&untagged[1..]).cloned().collect();
    assert_eq!(expected_deleted.len(), 27);

    // The preview agrees, with no ECR call.
    let preview = CleanupServiceClient::new(first.channel.clone())
        .preview_cleanup(ops(pb::PreviewCleanupRequest {
            repository: repo.clone(),
            policy_text: POLICY.into(),
            ..Default::default()
        }))
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(
        (preview.evaluated, preview.expire_count, preview.saved_count),
        (50, 27, 5)
    );

    // The first batch is answered; the second reaches moto (which deletes its
    // images) but its answer is held back, and the worker is killed meanwhile.
    proxy.hold_answers("BatchDeleteImage", 1);
    let started = CleanupServiceClient::new(first.channel.clone())
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository: repo.clone(),
            policy_text: POLICY.into(),
            request_id: format!("run-{repo}").replace('/', "-"),
            ..Default::default()
        }))
        .await
        .expect("run cleanup")
        .into_inner();
    assert_eq!(started.state, pb::CleanupRunState::Pending as i32);
    assert_eq!(started.created_by, "platform-ops");
    let id = started.id.clone();
    wait_for("the second batch to be in flight", async || {
        proxy.count("BatchDeleteImage") == 2
            && get_run(&first.channel, &id)
                .await
                .counts
                .is_some_and(|c| c.submitted == 10)
    })
    .await;
    let in_flight = items(&first.channel, &id, pb::CleanupItemOutcome::Submitted).await;
    assert!(in_flight.iter().all(|i| i.batch == 2), "{in_flight:?}");
    first.kill();
    wait_for("moto to finish the second batch", async || {
        digests_in_ecr(&ecr, &repo).await.len() == 30
    })
    .await;
    proxy.heal();

    // Another replica takes the run over once the dead worker's lease runs out.
    let second = common::Gateway::start(config(&db, &proxy.endpoint, RUNS)).await;
    let run = wait_for_state(&second.channel, &id, pb::CleanupRunState::Succeeded).await;
    let counts = run.counts.expect("counts");
    assert_eq!(
        (
            counts.selected,
            counts.deleted,
            counts.saved_by_pin,
            counts.saved_by_protection
        ),
        (32, 27, 2, 3),
        "{counts:?}; failed: {:?}",
        items(&second.channel, &id, pb::CleanupItemOutcome::Failed).await
    );
    assert_eq!(
        (counts.pending, counts.submitted, counts.failed),
        (0, 0, 0),
        "{counts:?}"
    );
    assert_eq!(run.attempts, 2, "taken up twice: it resumed");
    assert_eq!(run.batches, 3);
    assert_eq!(
        proxy.count("BatchDeleteImage"),
        3,
        "the batch whose answer was lost was settled by asking ECR, not sent again"
    );
    let deleted = items(&second.channel, &id, pb::CleanupItemOutcome::Deleted).await;
    let settled: Vec<&pb::CleanupRunItem> = deleted.iter().filter(|i| i.batch == 2).collect();
    assert_eq!(settled.len(), 10);
    assert!(
        settled.iter().all(|i| i.message.contains("the answer was lost")),
        "{settled:?}"
    );
    assert_eq!(
        deleted.iter().map(|i| i.digest.clone()).collect::<BTreeSet<_>>(),
        expected_deleted
    );

    // ECR, through our own client: exactly the 27 are gone.
    let left = digests_in_ecr(&ecr, &repo).await;
    let expected_left: BTreeSet<String> = all
        .iter()
        .filter(|d| !expected_deleted.contains(*d))
        .cloned()
        .collect();
    assert_eq!(left, expected_left);
    assert!(
        left.contains(&dev[0]) && left.contains(&untagged[0]),
        "pinned images stay"
    );
    assert!(releases.iter().all(|r| left.contains(r)), "protected images stay");
    let saved = items(&second.channel, &id, pb::CleanupItemOutcome::SavedByProtection).await;
    assert!(saved.iter().all(|i| i.message.contains("release-*")), "{saved:?}");

    // The inventory dropped them; each batch has one finalised audit record.
    let cached: i64 = sqlx::query_scalar("SELECT count(*) FROM images WHERE repository = $1")
        .bind(&repo)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(cached, 23);
    let audit: Vec<(String, String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT status, principal, response_elements FROM audit_events \
         WHERE event_name = 'BatchDeleteImage' AND request_parameters->>'cleanupRunId' = $1 ORDER BY event_time",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|(status, principal, _)| status == "succeeded" && principal == "platform-ops")
    );
    assert_eq!(
        audit
            .iter()
            .filter(|(_, _, e)| e.as_ref().is_some_and(|e| e["settledAfterLostAnswer"] == true))
            .count(),
        1
    );

    // A retry of RunCleanup with the same request_id returns the same run.
    let again = CleanupServiceClient::new(second.channel.clone())
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository: repo.clone(),
            policy_text: POLICY.into(),
            request_id: format!("run-{repo}").replace('/', "-"),
            ..Default::default()
        }))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!((again.id.as_str(), again.replayed), (id.as_str(), true));
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_taken_during_a_run_are_honoured_and_a_cancelled_run_stops_before_its_next_batch() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let proxy = FaultProxy::start(moto).await;
    let ecr = ecr_client(moto).await;
    let extra = RUNS.replace("batch_size = 10", "batch_size = 3");
    let gateway = common::Gateway::start(config(&db, &proxy.endpoint, &extra)).await;
    let channel = gateway.channel.clone();
    let repo = unique("payments", "cancel");
    create_repository(&channel, &repo).await;
    let mut dev = Vec::new();
    for i in 0..14 {
        dev.push(push(&ecr, &repo, &format!("dev-{i}"), &format!("{repo}-dev-{i}")).await);
    }
    refresh(&channel, &repo).await;
    age(&db.pool().await, &dev).await;
    let keep_one = POLICY.replace(r#""countNumber":5"#, r#""countNumber":1"#);

    // Batches of 3, oldest first: [0 1 2] [3 4 5] [6 7 8] [9 10 11] [12].
    proxy.hold_answers("BatchDeleteImage", 0);
    let run = CleanupServiceClient::new(channel.clone())
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository: repo.clone(),
            policy_text: keep_one,
            ..Default::default()
        }))
        .await
        .expect("run")
        .into_inner();
    wait_for("the first batch", async || proxy.count("BatchDeleteImage") == 1).await;

    // A pin of an image in the second batch waits while the first batch is
    // between its pin check and ECR's answer, then counts for the second.
    let pinning = tokio::spawn({
        let (channel, repo, digest) = (channel.clone(), repo.clone(), dev[4].clone());
        async move { pin(&channel, &repo, &digest, "deploy/prod/payments-api").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!pinning.is_finished(), "PinImage waits for the batch in flight");
    proxy.hold_answers("BatchDeleteImage", 2);
    pinning.await.unwrap().expect("pin");
    wait_for("the third batch", async || proxy.count("BatchDeleteImage") == 3).await;

    let cancelled = CleanupServiceClient::new(channel.clone())
        .cancel_cleanup_run(ops(pb::CancelCleanupRunRequest { id: run.id.clone() }))
        .await
        .expect("cancel")
        .into_inner();
    assert!(cancelled.cancel_requested);
    assert_eq!(cancelled.state, pb::CleanupRunState::Running as i32);
    proxy.heal();
    let done = wait_for_state(&channel, &run.id, pb::CleanupRunState::Cancelled).await;
    let counts = done.counts.expect("counts");
    assert_eq!(
        (
            counts.deleted,
            counts.saved_by_pin,
            counts.cancelled,
            counts.pending
        ),
        (8, 1, 4, 0),
        "{counts:?}"
    );
    let pinned = items(&channel, &run.id, pb::CleanupItemOutcome::SavedByPin).await;
    assert_eq!(pinned.len(), 1);
    assert_eq!(pinned[0].digest, dev[4]);
    assert!(
        pinned[0].message.contains("before its batch"),
        "{}",
        pinned[0].message
    );
    let left = digests_in_ecr(&ecr, &repo).await;
    let expected: BTreeSet<String> = std::iter::once(dev[4].clone())
        .chain(dev[9..].iter().cloned())
        .collect();
    assert_eq!(left, expected, "the pinned image and the cancelled batches stay");

    // Cancelling again returns the cancelled run; a finished run cannot be cancelled.
    let again = CleanupServiceClient::new(channel.clone())
        .cancel_cleanup_run(ops(pb::CancelCleanupRunRequest { id: run.id.clone() }))
        .await
        .expect("cancel again")
        .into_inner();
    assert_eq!(again.state, pb::CleanupRunState::Cancelled as i32);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_over_a_prefix_plans_without_deleting_and_bad_requests_name_the_field() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let ecr = ecr_client(moto).await;
    let gateway = common::Gateway::start(config(&db, moto, RUNS)).await;
    let channel = gateway.channel.clone();
    let prefix = format!("{}-", unique("payments", "dry"));
    let (with_policy, without) = (format!("{prefix}a"), format!("{prefix}b"));
    create_repository(&channel, &with_policy).await;
    create_repository(&channel, &without).await;
    let mut client = CleanupServiceClient::new(channel.clone());
    client
        .delete_lifecycle_policy(ops(pb::DeleteLifecyclePolicyRequest {
            repository: without.clone(),
            ..Default::default()
        }))
        .await
        .expect("remove b's policy");
    // The org template (untagged images expire after 14 days) applies to a.
    let mut images = Vec::new();
    for i in 0..3 {
        images.push(push_untagged(&ecr, &with_policy, &format!("{with_policy}-{i}")).await);
    }
    images.push(push(&ecr, &with_policy, "v1", &format!("{with_policy}-v1")).await);
    refresh(&channel, &with_policy).await;
    sqlx::query("UPDATE images SET pushed_at = now() - interval '20 days' WHERE repository = $1")
        .bind(&with_policy)
        .execute(&db.pool().await)
        .await
        .unwrap();

    let run = client
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository_prefix: prefix.clone(),
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("dry run")
        .into_inner();
    let done = wait_for_state(&channel, &run.id, pb::CleanupRunState::Succeeded).await;
    let counts = done.counts.expect("counts");
    assert_eq!(
        (counts.would_expire, counts.deleted, done.batches),
        (3, 0, 0),
        "{counts:?}"
    );
    assert_eq!(done.skipped_repositories.len(), 1);
    assert_eq!(done.skipped_repositories[0].repository, without);
    assert!(
        done.skipped_repositories[0]
            .reason
            .contains("no lifecycle policy")
    );
    assert_eq!(
        digests_in_ecr(&ecr, &with_policy).await.len(),
        4,
        "a dry run deletes nothing"
    );

    // Listed under a repository its prefix covers, and by state.
    let listed = client
        .list_cleanup_runs(ops(pb::ListCleanupRunsRequest {
            repository: with_policy.clone(),
            state: pb::CleanupRunState::Succeeded as i32,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.runs.len(), 1);
    assert_eq!(listed.runs[0].id, run.id);
    let none = client
        .list_cleanup_runs(ops(pb::ListCleanupRunsRequest {
            repository: with_policy.clone(),
            state: pb::CleanupRunState::Running as i32,
            ..Default::default()
        }))
        .await
        .expect("list running")
        .into_inner();
    assert!(none.runs.is_empty());

    // Bad requests name the field and the rule; nothing is recorded.
    let cases: Vec<(pb::RunCleanupRequest, &str, &str)> = vec![
        (pb::RunCleanupRequest::default(), "repository", "CLEANUP_TARGET"),
        (
            pb::RunCleanupRequest {
                repository: with_policy.clone(),
                repository_prefix: prefix.clone(),
                ..Default::default()
            },
            "repository_prefix",
            "CLEANUP_TARGET",
        ),
        (
            pb::RunCleanupRequest {
                repository_prefix: "Payments/*".into(),
                ..Default::default()
            },
            "repository_prefix",
            "REPOSITORY_PREFIX_FORMAT",
        ),
        (
            pb::RunCleanupRequest {
                repository: with_policy.clone(),
                policy_text: r#"{"rules":[]}"#.into(),
                ..Default::default()
            },
            "policy_text",
            "",
        ),
        (
            pb::RunCleanupRequest {
                repository: with_policy.clone(),
                request_id: "not ok!".into(),
                ..Default::default()
            },
            "request_id",
            "REQUEST_ID_FORMAT",
        ),
    ];
    for (request, field, rule) in cases {
        let error = client
            .run_cleanup(ops(request.clone()))
            .await
            .expect_err("invalid");
        assert_eq!(error.code(), Code::InvalidArgument, "{request:?}");
        let got = violations(&error);
        assert!(
            got.iter()
                .any(|(f, r)| f == field && (rule.is_empty() || r == rule)),
            "{request:?}: {got:?}"
        );
    }
    let missing = client
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository: format!("{prefix}nope"),
            ..Default::default()
        }))
        .await
        .expect_err("unknown repository");
    assert_eq!(missing.code(), Code::NotFound);
    let missing = client
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository_prefix: "search/no-such-prefix-".into(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown prefix");
    assert_eq!(missing.code(), Code::NotFound);
    let no_policy = client
        .run_cleanup(ops(pb::RunCleanupRequest {
            repository: without.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("no policy");
    assert_eq!(no_policy.code(), Code::FailedPrecondition);
    assert!(no_policy.message().contains("no lifecycle policy"));
    let bad_id = client
        .get_cleanup_run(ops(pb::GetCleanupRunRequest {
            id: "run-1".into(),
            page_size: 5000,
            ..Default::default()
        }))
        .await
        .expect_err("bad id");
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&bad_id).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, vec!["id", "page_size"]);
    let unknown = client
        .get_cleanup_run(ops(pb::GetCleanupRunRequest {
            id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown run");
    assert_eq!(unknown.code(), Code::NotFound);
    let finished = client
        .cancel_cleanup_run(ops(pb::CancelCleanupRunRequest { id: run.id.clone() }))
        .await
        .expect_err("finished");
    assert_eq!(finished.code(), Code::FailedPrecondition);
    assert!(finished.message().contains("already ended"));
    gateway.stop().await.unwrap();
}
