//! Crash consistency: the real binary is driven with creates, deletes and a
//! cleanup run, killed with SIGKILL again and again — at random moments and
//! right after ECR made a change whose answer had not come back — and
//! restarted. Afterwards ECR's real state (read with the tests' own client)
//! must agree with the audit trail and the inventory: every change in ECR has
//! a succeeded audit record, no record stays pending (recovery re-checks ECR),
//! retries with the same request_id created nothing twice, and the cleanup
//! deleted no image twice and no pinned image at all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::images::push;
use common::process::Process;
use common::proxy::FaultProxy;
use common::{Moto, TestDb, as_user, config_text, digests_in_ecr, ecr_client, tagged_repository, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::cleanup_service_client::CleanupServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Small cleanup batches and a short worker lease.
const EXTRA: &str = r#"
[cleanup]
batch_size = 3
lease_seconds = 2
poll_interval_seconds = 1
"#;

/// Keeps the 4 newest dev builds.
const POLICY: &str = r#"{"rules":[{"rulePriority":1,"description":"keep 4 dev builds","selection":{"tagStatus":"tagged","tagPrefixList":["dev-"],"countType":"imageCountMoreThan","countNumber":4},"action":{"type":"expire"}}]}"#;

fn ops<T>(message: T) -> tonic::Request<T> {
    as_user(message, "platform-ops", "platform")
}

/// One mutating call of the stream, retried with its request_id until it answers.
#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Delete(String),
    Cleanup(String),
}

impl Op {
    fn request_id(&self, n: usize) -> String {
        match self {
            Op::Create(_) => format!("create-{n}"),
            Op::Delete(_) => format!("delete-{n}"),
            Op::Cleanup(_) => format!("cleanup-{n}"),
        }
    }

    async fn send(&self, channel: &Channel, request_id: String) -> Result<Option<String>, tonic::Status> {
        match self {
            Op::Create(name) => {
                let mut request = tagged_repository(name);
                request.request_id = request_id;
                RepositoryServiceClient::new(channel.clone())
                    .create_repository(ops(request))
                    .await
                    .map(|_| None)
            }
            Op::Delete(name) => RepositoryServiceClient::new(channel.clone())
                .delete_repository(ops(pb::DeleteRepositoryRequest {
                    repository: name.clone(),
                    request_id,
                    ..Default::default()
                }))
                .await
                .map(|_| None),
            Op::Cleanup(repository) => CleanupServiceClient::new(channel.clone())
                .run_cleanup(ops(pb::RunCleanupRequest {
                    repository: repository.clone(),
                    policy_text: POLICY.into(),
                    request_id,
                    ..Default::default()
                }))
                .await
                .map(|r| Some(r.into_inner().id)),
        }
    }
}

/// A small deterministic generator (xorshift), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Sends the calls not answered yet, in order, until one cannot be answered
/// now (the process died, or a retry must wait for an interrupted attempt's lease).
async fn drive(channel: &Channel, stream: &[Op], answered: &mut BTreeMap<usize, Option<String>>) {
    for (n, op) in stream.iter().enumerate() {
        if answered.contains_key(&n) {
            continue;
        }
        let call = op.send(channel, op.request_id(n));
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(run)) => {
                answered.insert(n, run);
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::Aborted
                        | Code::Cancelled
                        | Code::Unknown
                        | Code::DeadlineExceeded
                ) =>
            {
                println!(
                    "{} not answered yet: {:?} {}",
                    op.request_id(n),
                    status.code(),
                    status.message()
                );
                return;
            }
            Ok(Err(status)) => panic!("{op:?} ({}): {status:?}", op.request_id(n)),
            Err(_) => {
                println!("{} not answered within 10 s", op.request_id(n));
                return;
            }
        }
    }
}

async fn scalar(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

async fn ecr_repositories(ecr: &aws_sdk_ecr::Client, prefix: &str) -> BTreeSet<String> {
    ecr.describe_repositories()
        .send()
        .await
        .expect("describe repositories")
        .repositories()
        .iter()
        .filter_map(|r| r.repository_name())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_again_and_again_the_gateway_loses_nothing_and_does_nothing_twice() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let proxy = FaultProxy::start(moto).await;
    let ecr = ecr_client(moto).await;
    // A 3 s request timeout: an interrupted call's lease (twice that) ends soon,
    // so retries take over and recovery resolves its record within seconds.
    let text = config_text(&db, &proxy.endpoint, EXTRA)
        .replace("request_timeout_seconds = 20", "request_timeout_seconds = 3");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let pool = db.pool().await;

    // A repository of 12 dev builds; the policy keeps the 4 newest; 2 of the
    // 8 it selects are pinned.
    let prefix = unique("payments", "crash");
    let images_repo = format!("{prefix}-images");
    let mut process = Process::start(&text).await;
    Op::Create(images_repo.clone())
        .send(&process.channel, "setup".into())
        .await
        .expect("create the images repository");
    let mut builds = Vec::new();
    for i in 0..12 {
        builds.push(
            push(
                &ecr,
                &images_repo,
                &format!("dev-{i}"),
                &format!("{images_repo}-{i}"),
            )
            .await,
        );
    }
    ImageServiceClient::new(process.channel.clone())
        .refresh_inventory(ops(pb::RefreshInventoryRequest {
            repository: images_repo.clone(),
            ..Default::default()
        }))
        .await
        .expect("refresh");
    for (i, digest) in builds.iter().enumerate() {
        sqlx::query("UPDATE images SET pushed_at = now() - make_interval(days => $1) WHERE digest = $2")
            .bind((builds.len() - i) as i32)
            .bind(digest)
            .execute(&pool)
            .await
            .unwrap();
    }
    let pinned = [builds[1].clone(), builds[5].clone()];
    for digest in &pinned {
        CleanupServiceClient::new(process.channel.clone())
            .pin_image(ops(pb::PinImageRequest {
                repository: images_repo.clone(),
                digest: digest.clone(),
                holder: "deploy/prod".into(),
                ..Default::default()
            }))
            .await
            .expect("pin");
    }
    let expected_deleted: BTreeSet<String> = builds[..8]
        .iter()
        .filter(|d| !pinned.contains(d))
        .cloned()
        .collect();

    // The stream: 40 creates, every third repository deleted again, and a cleanup run.
    let mut stream = Vec::new();
    for i in 0..40 {
        stream.push(Op::Create(format!("{prefix}-r{i:02}")));
        if i % 3 == 2 {
            stream.push(Op::Delete(format!("{prefix}-r{:02}", i - 1)));
        }
        if i == 4 {
            stream.push(Op::Cleanup(images_repo.clone()));
        }
    }
    let mut answered = BTreeMap::new();

    // Six kills: even rounds right after moto applied a CreateRepository whose
    // answer is held back; odd rounds at a random moment.
    let mut kills = 0;
    for round in 0..6 {
        if round % 2 == 0 {
            let before = proxy.count("CreateRepository");
            proxy.hold_answers("CreateRepository", before);
            let channel = process.channel.clone();
            let mut progress = answered.clone();
            let stream_copy = stream.clone();
            // Retries until the held create is sent: the first call may be a
            // retry that must wait for an interrupted attempt's lease.
            let driver = tokio::spawn(async move {
                loop {
                    drive(&channel, &stream_copy, &mut progress).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            while proxy.count("CreateRepository") == before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                proxy.count("CreateRepository") > before,
                "round {round}: no CreateRepository reached ECR"
            );
            tokio::time::sleep(Duration::from_millis(200)).await; // moto applies it
            process.kill();
            driver.abort();
            proxy.heal();
        } else {
            let channel = process.channel.clone();
            let stream_copy = stream.clone();
            let mut progress = answered.clone();
            let driver = tokio::spawn(async move {
                drive(&channel, &stream_copy, &mut progress).await;
                progress
            });
            tokio::time::sleep(Duration::from_millis(100 + rng.next(700))).await;
            process.kill();
            if let Ok(Ok(progress)) = tokio::time::timeout(Duration::from_secs(1), driver).await {
                answered = progress;
            }
        }
        kills += 1;
        process = Process::start(&text).await;
        // Answers that were lost with the process are learned by retrying.
    }
    assert_eq!(kills, 6);

    // The last process finishes the stream: retries with the same request_ids.
    let deadline = Instant::now() + Duration::from_secs(90);
    while answered.len() < stream.len() {
        assert!(
            Instant::now() < deadline,
            "the stream did not finish: {answered:?}"
        );
        drive(&process.channel, &stream, &mut answered).await;
        if answered.len() < stream.len() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let run_id = stream
        .iter()
        .enumerate()
        .find_map(|(n, op)| matches!(op, Op::Cleanup(_)).then(|| answered[&n].clone().expect("a run id")))
        .unwrap();
    common::wait_for_run_state(
        &process.channel,
        &run_id,
        ("platform-ops", "platform"),
        pb::CleanupRunState::Succeeded,
        Duration::from_secs(60),
    )
    .await;

    // Recovery resolves every pending record (their leases are over by now).
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(
        &pool,
        "SELECT count(*) FROM audit_events WHERE status = 'pending'",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "audit records stay pending");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ECR has exactly the repositories the stream leaves: each created once.
    let deleted: BTreeSet<String> = stream
        .iter()
        .filter_map(|op| match op {
            Op::Delete(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut expected: BTreeSet<String> = stream
        .iter()
        .filter_map(|op| match op {
            Op::Create(name) if !deleted.contains(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    expected.insert(images_repo.clone());
    assert_eq!(ecr_repositories(&ecr, &prefix).await, expected);
    // Every request_id is one operation, succeeded.
    let operations: Vec<(String, String)> = sqlx::query_as(
        "SELECT request_id, state FROM operations WHERE request_id <> 'setup' ORDER BY request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(operations.len(), stream.len(), "{operations:?}");
    assert!(
        operations.iter().all(|(_, state)| state == "succeeded"),
        "{operations:?}"
    );

    // Every change in ECR has a succeeded audit record.
    let succeeded = |event: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT request_parameters ->> 'repositoryName' FROM audit_events \
                 WHERE event_name = $1 AND status = 'succeeded'",
            )
            .bind(event)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<String>>()
        }
    };
    let created = succeeded("CreateRepository").await;
    for name in expected.iter().chain(&deleted) {
        assert!(
            created.contains(name),
            "{name} is in ECR's history with no succeeded CreateRepository record"
        );
    }
    let removed = succeeded("DeleteRepository").await;
    assert!(deleted.is_subset(&removed), "{deleted:?} vs {removed:?}");
    // The kills in the window between ECR's change and its answer left
    // records that recovery resolved against ECR.
    let recovered = scalar(
        &pool,
        "SELECT count(*) FROM audit_events WHERE response_elements ->> 'recovered' = 'true'",
    )
    .await;
    assert!(recovered >= 1, "no interrupted call was resolved by recovery");

    // The cleanup deleted exactly the unpinned selection, each image once.
    let left: BTreeSet<String> = digests_in_ecr(&ecr, &images_repo).await.into_iter().collect();
    for digest in &pinned {
        assert!(left.contains(digest), "a pinned image was deleted");
    }
    let gone: BTreeSet<String> = builds.iter().filter(|d| !left.contains(*d)).cloned().collect();
    assert_eq!(gone, expected_deleted);
    let deletions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT digest, count(*) FROM cleanup_run_items WHERE outcome = 'deleted' GROUP BY digest",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(deletions.len(), expected_deleted.len(), "{deletions:?}");
    assert!(deletions.iter().all(|(_, n)| *n == 1), "{deletions:?}");
    let reported: Vec<String> = sqlx::query_scalar(
        "SELECT d ->> 'imageDigest' FROM audit_events, jsonb_array_elements(response_elements -> 'imageIds') d \
         WHERE event_name = 'BatchDeleteImage' AND status = 'succeeded'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let reported_once: BTreeSet<&String> = reported.iter().collect();
    assert_eq!(
        reported_once.len(),
        reported.len(),
        "an image's deletion was recorded twice: {reported:?}"
    );
    assert_eq!(
        reported_once.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected_deleted,
        "the audit trail's deletions differ from ECR's"
    );
    drop(process);
}

/// Writes a pending record as an interrupted call leaves it, an hour old.
async fn interrupted(pool: &sqlx::PgPool, event: &str, repository: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, principal, \
         principal_type, auth_method, registry_alias, gateway_request_id, request_parameters) \
         VALUES ($1, now() - interval '1 hour', $2, 'ecr-gateway', false, 'pending', 'platform-ops', 'User', \
                 'insecure-dev', 'main', $1, jsonb_build_object('repositoryName', $3::text))",
    )
    .bind(id)
    .bind(event)
    .bind(repository)
    .execute(pool)
    .await
    .expect("insert a pending record");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_resolves_each_kind_of_interrupted_call_against_ecr() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let ecr = ecr_client(moto).await;
    let (pool, _) = db.migrated().await;
    let existing = unique("payments", "recover-present");
    let missing = unique("payments", "recover-absent");
    ecr.create_repository()
        .repository_name(&existing)
        .send()
        .await
        .expect("create in ECR");
    let cases = [
        ("CreateRepository", existing.as_str(), "succeeded", None),
        (
            "CreateRepository",
            missing.as_str(),
            "failed",
            Some("ECR has no such repository"),
        ),
        (
            "DeleteRepository",
            existing.as_str(),
            "failed",
            Some("ECR still has the repository"),
        ),
        ("DeleteRepository", missing.as_str(), "succeeded", None),
        (
            "PinImage",
            existing.as_str(),
            "failed",
            Some("changes only the gateway's database"),
        ),
        (
            "SetLifecyclePolicy",
            existing.as_str(),
            "failed",
            Some("not known"),
        ),
    ];
    let mut ids = Vec::new();
    for (event, repository, _, _) in &cases {
        ids.push(interrupted(&pool, event, repository).await);
    }
    // A fresh call's pending record (its call may still be running) is left alone.
    let fresh = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, principal, \
         principal_type, auth_method, gateway_request_id) \
         VALUES ($1, now(), 'CreateRepository', 'ecr-gateway', false, 'pending', 'p', 'User', 'insecure-dev', $1)",
    )
    .bind(fresh)
    .execute(&pool)
    .await
    .unwrap();

    // Recovery runs at start-up.
    let gateway = common::Gateway::start(common::config(&db, moto, "")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &pool,
        "SELECT count(*) FROM audit_events WHERE status = 'pending'",
    )
    .await
        > 1
    {
        assert!(Instant::now() < deadline, "recovery did not resolve the records");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for ((event, repository, status, message), id) in cases.iter().zip(&ids) {
        let (got, code, text, recovered): (String, Option<String>, Option<String>, Option<String>) =
            sqlx::query_as(
                "SELECT status, error_code, error_message, response_elements ->> 'recovered' \
                 FROM audit_events WHERE event_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(&got, status, "{event} {repository}: {text:?}");
        assert_eq!(recovered.as_deref(), Some("true"));
        match message {
            Some(message) => {
                assert_eq!(code.as_deref(), Some(ecr_gateway::recovery::INTERRUPTED));
                assert!(
                    text.as_deref().is_some_and(|t| t.contains(message)),
                    "{event}: {text:?}"
                );
            }
            None => assert_eq!(code, None),
        }
    }
    let fresh_status: String = sqlx::query_scalar("SELECT status FROM audit_events WHERE event_id = $1")
        .bind(fresh)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(fresh_status, "pending");
    // The inventory now has what ECR has.
    let cached: i64 = sqlx::query_scalar("SELECT count(*) FROM repositories WHERE name = $1")
        .bind(&existing)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(cached, 1);
    gateway.stop().await.unwrap();
}
