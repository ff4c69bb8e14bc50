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
    /// Promote `repository:source` to `target` (a new immutable tag).
    Promote {
        repository: String,
        source: String,
        target: String,
    },
}

impl Op {
    fn request_id(&self, n: usize) -> String {
        match self {
            Op::Create(_) => format!("create-{n}"),
            Op::Delete(_) => format!("delete-{n}"),
            Op::Cleanup(_) => format!("cleanup-{n}"),
            Op::Promote { .. } => format!("promote-{n}"),
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
            Op::Promote {
                repository,
                source,
                target,
            } => ImageServiceClient::new(channel.clone())
                .promote_image(ops(pb::PromoteImageRequest {
                    repository: repository.clone(),
                    tag: source.clone(),
                    target_tag: target.clone(),
                    request_id,
                    ..Default::default()
                }))
                .await
                .map(|r| Some(r.into_inner().digest)),
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
        // The newest build (the cleanup keeps it) gets release tags.
        if i % 10 == 7 {
            stream.push(Op::Promote {
                repository: images_repo.clone(),
                source: "dev-11".into(),
                target: format!("rel-{i}"),
            });
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

    // Each promotion's tag names the newest build in ECR, with one succeeded record.
    for op in &stream {
        let Op::Promote { target, .. } = op else { continue };
        let output = ecr
            .describe_images()
            .repository_name(&images_repo)
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag(target)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{target} is not in ECR: {e:?}"));
        let digest = output.image_details()[0].image_digest().unwrap_or_default();
        assert_eq!(digest, builds[11], "{target}");
        let records: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE event_name = 'PromoteImage' AND status = 'succeeded' \
             AND request_parameters ->> 'targetImageTag' = $1",
        )
        .bind(target)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(records, 1, "{target}: one succeeded PromoteImage");
    }

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
    interrupted_with(pool, event, serde_json::json!({"repositoryName": repository})).await
}

/// [`interrupted`] with these request parameters.
async fn interrupted_with(pool: &sqlx::PgPool, event: &str, parameters: serde_json::Value) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, principal, \
         principal_type, auth_method, registry_alias, gateway_request_id, request_parameters) \
         VALUES ($1, now() - interval '1 hour', $2, 'ecr-gateway', false, 'pending', 'platform-ops', 'User', \
                 'insecure-dev', 'main', $1, $3)",
    )
    .bind(id)
    .bind(event)
    .bind(parameters)
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
    // PromoteImage: made when the target tag names the source image now.
    let digest = push(&ecr, &existing, "build-1", &format!("{existing}-1")).await;
    let other = push(&ecr, &existing, "build-2", &format!("{existing}-2")).await;
    ecr.put_image()
        .repository_name(&existing)
        .image_manifest(common::images::docker_manifest(&format!("{existing}-1")))
        .image_digest(&digest)
        .image_tag("v1")
        .send()
        .await
        .expect("the promoted tag");
    let promotion = |source: serde_json::Value, target: &str| {
        let mut parameters = serde_json::json!({"repositoryName": existing, "targetRepositoryName": "",
                                                "targetImageTag": target, "imageTag": "", "imageDigest": ""});
        parameters
            .as_object_mut()
            .unwrap()
            .extend(source.as_object().unwrap().clone());
        parameters
    };
    let promotions = [
        (
            promotion(serde_json::json!({"imageDigest": digest}), "v1"),
            "succeeded",
            None,
        ),
        (
            promotion(serde_json::json!({"imageDigest": other}), "v1"),
            "failed",
            Some("does not name the image"),
        ),
        (
            promotion(serde_json::json!({"imageDigest": digest}), "v9"),
            "failed",
            Some("does not name the image"),
        ),
        (
            promotion(serde_json::json!({"imageTag": "build-2"}), "v1"),
            "failed",
            Some("not known"),
        ),
    ];
    let mut promotion_ids = Vec::new();
    for (parameters, _, _) in &promotions {
        promotion_ids.push(interrupted_with(&pool, "PromoteImage", parameters.clone()).await);
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
    for ((parameters, status, message), id) in promotions.iter().zip(&promotion_ids) {
        let (got, text): (String, Option<String>) =
            sqlx::query_as("SELECT status, error_message FROM audit_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(&got, status, "PromoteImage {parameters}: {text:?}");
        if let Some(message) = message {
            assert!(
                text.as_deref().is_some_and(|t| t.contains(message)),
                "{parameters}: {text:?}"
            );
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

/// Sends `requests` (name, request_id) from 8 concurrent callers, each its
/// share in order; returns how many were answered OK. With `until_ok`, each
/// caller retries a call until it answers OK (after the `RetryInfo` delay
/// when there is one) and panics on an answer that retrying cannot change.
async fn send_all(
    channel: &Channel,
    requests: &[(String, String)],
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    until_ok: bool,
) {
    use tonic_types::StatusExt as _;
    let mut callers = Vec::new();
    for caller in 0..8 {
        let share: Vec<(String, String)> = requests.iter().skip(caller).step_by(8).cloned().collect();
        let (channel, answered) = (channel.clone(), answered.clone());
        callers.push(tokio::spawn(async move {
            let mut client = RepositoryServiceClient::new(channel);
            for (name, request_id) in share {
                loop {
                    let mut request = tagged_repository(&name);
                    request.request_id = request_id.clone();
                    match client.create_repository(ops(request)).await {
                        Ok(answer) => {
                            let repository = answer.into_inner().repository.expect("a repository");
                            assert_eq!(repository.repository, name);
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                        Err(_) if !until_ok => return,
                        Err(status) => {
                            assert!(
                                matches!(status.code(), Code::Aborted | Code::Unavailable),
                                "{request_id}: {status:?}"
                            );
                            let delay = status
                                .get_details_retry_info()
                                .and_then(|info| info.retry_delay)
                                .unwrap_or(Duration::from_millis(300));
                            tokio::time::sleep(delay.max(Duration::from_millis(100))).await;
                        }
                    }
                }
            }
        }));
    }
    for caller in callers {
        caller.await.expect("a caller panicked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kills_at_random_points_each_request_id_has_one_succeeded_create_in_the_audit_trail() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let ecr = ecr_client(moto).await;
    // A 3 s request timeout: an interrupted attempt's lease (6 s) ends soon,
    // and recovery comes by every lease, so retries and recovery race for
    // the interrupted operations in both orders.
    let text =
        config_text(&db, moto, "").replace("request_timeout_seconds = 20", "request_timeout_seconds = 3");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill points seed {seed}");
    let mut rng = Rng(seed);
    let pool = db.pool().await;
    let prefix = unique("payments", "once");
    let requests: Vec<(String, String)> = (0..200)
        .map(|i| (format!("{prefix}-{i:03}"), format!("once-{i:03}")))
        .collect();

    // Twice: send every request from 8 callers and SIGKILL the gateway after
    // a random number of answers (and a random moment after that answer).
    let mut process = Process::start(&text).await;
    for round in 0..2 {
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kill_after = 20 + rng.next(160) as usize;
        let channel = process.channel.clone();
        let (sending, counter) = (requests.clone(), answered.clone());
        let senders = tokio::spawn(async move { send_all(&channel, &sending, counter, false).await });
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(std::sync::atomic::Ordering::SeqCst) < kill_after && !senders.is_finished() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the calls do not get answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next(40))).await;
        println!(
            "round {round}: killed after {} answers (aimed at {kill_after})",
            answered.load(std::sync::atomic::Ordering::SeqCst)
        );
        process.kill();
        senders.abort();
        process = Process::start(&text).await;
    }

    // Every request again, with its request_id, until each answers OK.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::time::timeout(
        Duration::from_secs(120),
        send_all(&process.channel, &requests, answered.clone(), true),
    )
    .await
    .expect("every re-send ends OK within 2 minutes");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), requests.len());

    // Recovery resolves every interrupted record.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(
        &pool,
        "SELECT count(*) FROM audit_events WHERE status = 'pending'",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "audit records stay pending");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // ECR has exactly the repositories, and each request_id one succeeded create.
    let names: BTreeSet<String> = requests.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(ecr_repositories(&ecr, &prefix).await, names);
    let succeeded: Vec<(String, i64)> = sqlx::query_as(
        "SELECT client_request_id, count(*) FILTER (WHERE status = 'succeeded' \
                AND response_elements ->> 'replayed' IS DISTINCT FROM 'true') \
         FROM audit_events WHERE event_name = 'CreateRepository' AND client_request_id LIKE 'once-%' \
         GROUP BY client_request_id ORDER BY client_request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(succeeded.len(), requests.len(), "{succeeded:?}");
    let twice: Vec<&(String, i64)> = succeeded.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        twice.is_empty(),
        "request_ids without exactly one succeeded create: {twice:?}"
    );
    // A superseded attempt names the succeeded event of its own operation.
    let superseded: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.client_request_id, e.response_elements ->> 'appliedBy', f.status FROM audit_events e \
         LEFT JOIN audit_events f ON f.event_id::text = e.response_elements ->> 'supersededBy' \
                                  AND f.client_request_id = e.client_request_id \
         WHERE e.event_name = 'CreateRepository' AND e.response_elements ? 'supersededBy'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (request_id, applied, finisher) in &superseded {
        assert_eq!(finisher.as_deref(), Some("succeeded"), "{request_id}");
        assert!(
            ["this attempt", "the finishing attempt", "not known"].contains(&applied.as_str()),
            "{request_id}: {applied}"
        );
    }
    let recovered = scalar(
        &pool,
        "SELECT count(*) FROM audit_events WHERE response_elements ->> 'recovered' = 'true'",
    )
    .await;
    assert!(recovered >= 1, "no kill interrupted a create");
    println!(
        "{recovered} interrupted attempts resolved by recovery, {} of them superseded by a retry",
        superseded.len()
    );
    drop(process);
}

/// Writes an operation row and its attempt's pending record as a crash leaves them.
async fn interrupted_attempt(
    pool: &sqlx::PgPool,
    request: &pb::CreateRepositoryRequest,
    state: &str,
    age_minutes: i32,
) -> uuid::Uuid {
    use prost::Message as _;
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"CreateRepository");
    hasher.update(request.encode_to_vec());
    let hash = hasher.finalize().to_vec();
    sqlx::query(
        "INSERT INTO operations (principal, request_id, method, request_hash, state, lease_until, response) \
         VALUES ('platform-ops', $1, 'CreateRepository', $2, $3, now() - interval '1 minute', \
                 CASE WHEN $3 = 'succeeded' THEN '\\x'::bytea END)",
    )
    .bind(&request.request_id)
    .bind(hash)
    .bind(state)
    .execute(pool)
    .await
    .expect("insert an operation");
    attempt_record(pool, request, "pending", age_minutes, serde_json::Value::Null).await
}

/// Writes an attempt's audit record directly.
async fn attempt_record(
    pool: &sqlx::PgPool,
    request: &pb::CreateRepositoryRequest,
    status: &str,
    age_minutes: i32,
    elements: serde_json::Value,
) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audit_events (event_id, event_time, event_name, event_source, read_only, status, principal, \
         principal_type, auth_method, registry_alias, gateway_request_id, client_request_id, request_parameters, \
         response_elements, finalized_at) \
         VALUES ($1, now() - make_interval(mins => $2), 'CreateRepository', 'ecr-gateway', false, $3, 'platform-ops', \
                 'User', 'insecure-dev', 'main', $1, $4, jsonb_build_object('repositoryName', $5::text), \
                 NULLIF($6, 'null'::jsonb), CASE WHEN $3 <> 'pending' THEN now() END)",
    )
    .bind(id)
    .bind(age_minutes)
    .bind(status)
    .bind(&request.request_id)
    .bind(&request.repository)
    .bind(elements)
    .execute(pool)
    .await
    .expect("insert a record");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_records_one_success_per_request_id_whether_a_retry_or_recovery_comes_first() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let ecr = ecr_client(moto).await;
    let (pool, _) = db.migrated().await;
    let request = |stem: &str, request_id: &str| {
        let mut request = tagged_repository(&unique("payments", stem));
        request.request_id = request_id.into();
        request
    };
    let in_ecr = |request: pb::CreateRepositoryRequest| {
        let ecr = ecr.clone();
        async move {
            let mut create = ecr.create_repository().repository_name(&request.repository);
            for (key, value) in common::team_tags() {
                create = create.tags(
                    aws_sdk_ecr::types::Tag::builder()
                        .key(key)
                        .value(value)
                        .build()
                        .unwrap(),
                );
            }
            create.send().await.expect("create in ECR");
        }
    };
    // Recovery first: the crashed attempt made the repository, nobody retried yet.
    let first = request("recovered-first", "recovered-first");
    in_ecr(first.clone()).await;
    let crashed_first = interrupted_attempt(&pool, &first, "pending", 60).await;
    // A retry first, which found the repository the crashed attempt had made.
    let found = request("retry-found", "retry-found");
    in_ecr(found.clone()).await;
    let crashed_found = interrupted_attempt(&pool, &found, "succeeded", 60).await;
    let finisher_found = attempt_record(
        &pool,
        &found,
        "succeeded",
        50,
        serde_json::json!({"alreadyExisted": true}),
    )
    .await;
    // A retry first, which made the repository itself (the crashed attempt never reached ECR).
    let made = request("retry-made", "retry-made");
    in_ecr(made.clone()).await;
    let crashed_made = interrupted_attempt(&pool, &made, "succeeded", 60).await;
    let finisher_made = attempt_record(
        &pool,
        &made,
        "succeeded",
        50,
        serde_json::json!({"repository": "x"}),
    )
    .await;

    // Recovery runs at start-up.
    let gateway = common::Gateway::start(common::config(&db, moto, "")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &pool,
        "SELECT count(*) FROM audit_events WHERE status = 'pending'",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "recovery did not resolve the records");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let record = |id: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, serde_json::Value, Option<String>)>(
                "SELECT status, error_code, response_elements, error_message FROM audit_events WHERE event_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };

    // Recovery came first: its verdict finishes the operation, and the retry replays it.
    let (status, _, elements, _) = record(crashed_first).await;
    assert_eq!(status, "succeeded", "{elements}");
    let replayed = RepositoryServiceClient::new(gateway.channel.clone())
        .create_repository(ops(first.clone()))
        .await
        .expect("the retry")
        .into_inner();
    assert!(replayed.replayed, "the retry replays recovery's verdict");
    assert_eq!(
        replayed.repository.map(|r| r.repository),
        Some(first.repository.clone())
    );

    // A retry came first: the crashed attempt is superseded, never a second success.
    for (crashed, finisher, applied) in [
        (crashed_found, finisher_found, "this attempt"),
        (crashed_made, finisher_made, "the finishing attempt"),
    ] {
        let (status, code, elements, message) = record(crashed).await;
        assert_eq!(status, "failed", "{elements}");
        assert_eq!(code.as_deref(), Some(ecr_gateway::recovery::INTERRUPTED));
        assert_eq!(elements["supersededBy"], serde_json::json!(finisher.to_string()));
        assert_eq!(elements["appliedBy"], serde_json::json!(applied));
        let message = message.unwrap_or_default();
        assert!(
            message.contains(&finisher.to_string()) && message.contains("supersedes"),
            "{message}"
        );
    }

    // Each request_id has one succeeded attempt.
    common::wait_for_audit_rows(
        &pool,
        "client_request_id = 'recovered-first' AND status = 'succeeded'",
        2,
    )
    .await;
    let succeeded: Vec<(String, i64)> = sqlx::query_as(
        "SELECT client_request_id, count(*) FROM audit_events \
         WHERE status = 'succeeded' AND response_elements ->> 'replayed' IS DISTINCT FROM 'true' \
         GROUP BY client_request_id ORDER BY client_request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        succeeded,
        vec![
            ("recovered-first".to_owned(), 1),
            ("retry-found".to_owned(), 1),
            ("retry-made".to_owned(), 1)
        ]
    );
    gateway.stop().await.unwrap();
}
