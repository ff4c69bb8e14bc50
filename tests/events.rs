//! Event intake against moto's SQS and ECR: the tests change ECR themselves
//! (outside the gateway), post the EventBridge events AWS would send into
//! the queue, and read the inventory in Postgres and the queue afterwards.
//! The gateway's ECR calls go through a counting proxy; its SQS calls go to
//! moto directly.

mod common;

use std::time::Duration;

use common::events::{cloudtrail, envelope, image_action, post, queue_with_dlq, sqs_client, waiting, within};
use common::images::push;
use common::process::Process;
use common::proxy::FaultProxy;
use common::{ACCOUNT, Gateway, Moto, REGION, TestDb, as_user, config, config_text, ecr_client, unique};
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;

/// How long a change may take to show (the issue's 2 s, with room for a loaded CI machine).
const SHOWS_WITHIN: Duration = Duration::from_secs(5);

fn events_extra(queue: &str, sqs_endpoint: &str, more: &str) -> String {
    format!(
        r#"
[registries.events]
queue_url = "{queue}"
endpoint_url = "{sqs_endpoint}"
wait_seconds = 1
workers = 2

[admin]
listen = "127.0.0.1:0"
gauge_refresh_seconds = 1

{more}
"#
    )
}

async fn tags_in_cache(pool: &sqlx::PgPool, repository: &str, digest: &str) -> Option<Vec<String>> {
    sqlx::query_scalar::<_, Vec<String>>(
        "SELECT tags FROM images WHERE account_id = $1 AND region = $2 AND repository = $3 AND digest = $4",
    )
    .bind(ACCOUNT)
    .bind(REGION)
    .bind(repository)
    .bind(digest)
    .fetch_optional(pool)
    .await
    .expect("read the cache")
}

async fn changes_of(pool: &sqlx::PgPool, repository: &str, digest: &str, kind: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM inventory_changes WHERE repository = $1 AND digest = $2 AND kind = $3",
    )
    .bind(repository)
    .bind(digest)
    .bind(kind)
    .fetch_one(pool)
    .await
    .expect("read the change log")
}

async fn create(gateway: &Gateway, name: &str) {
    let mut repos: RepositoryServiceClient<_> = gateway.repositories();
    repos
        .create_repository(as_user(common::tagged_repository(name), "alice", "payments"))
        .await
        .expect("create through the gateway");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_keep_the_inventory_current_each_with_at_most_two_ecr_calls() {
    let moto = Moto::shared();
    let proxy = FaultProxy::start(moto).await;
    let sqs = sqs_client(moto).await;
    let ecr = ecr_client(moto).await;
    let (queue, _dlq) = queue_with_dlq(&sqs, &format!("events-{}", uuid::Uuid::new_v4().simple()), 3).await;
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, &events_extra(&queue, moto, ""))).await;
    let pool = db.pool().await;
    let name = unique("payments", "events");
    create(&gateway, &name).await;

    // A push made outside the gateway, then its event: in the cache within seconds, at most 2 ECR calls.
    let digest = push(&ecr, &name, "v1", "events-1").await;
    let before = proxy.total();
    post(&sqs, &queue, &image_action("PUSH", &name, &digest, "v1")).await;
    let took = within(SHOWS_WITHIN, || async {
        tags_in_cache(&pool, &name, &digest).await == Some(vec!["v1".to_owned()])
    })
    .await
    .expect("the pushed image reached the cache");
    println!("push event applied in {took:?}");
    within(SHOWS_WITHIN, || async { waiting(&sqs, &queue).await == 0 })
        .await
        .expect("the applied event was deleted");
    let calls = proxy.total() - before;
    assert!((1..=2).contains(&calls), "a push event made {calls} ECR calls");
    assert_eq!(changes_of(&pool, &name, &digest, "pushed").await, 1);

    // The same event again, and again: nothing changes.
    let before = proxy.total();
    for _ in 0..2 {
        post(&sqs, &queue, &image_action("PUSH", &name, &digest, "v1")).await;
    }
    within(SHOWS_WITHIN, || async { waiting(&sqs, &queue).await == 0 })
        .await
        .expect("the replays were taken");
    assert!(
        proxy.total() - before <= 4,
        "two replays made {} ECR calls",
        proxy.total() - before
    );
    assert_eq!(
        changes_of(&pool, &name, &digest, "pushed").await,
        1,
        "a replay changed nothing"
    );

    // A tag moved outside the gateway, events delivered out of order: the re-reads are the truth.
    ecr.put_image_tag_mutability()
        .repository_name(&name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Mutable)
        .send()
        .await
        .expect("tags may move");
    let moved = push(&ecr, &name, "v1", &format!("{name}-moved")).await;
    post(&sqs, &queue, &image_action("PUSH", &name, &moved, "v1")).await;
    post(&sqs, &queue, &image_action("PUSH", &name, &digest, "v1")).await;
    within(SHOWS_WITHIN, || async {
        tags_in_cache(&pool, &name, &moved).await == Some(vec!["v1".to_owned()])
            // ECR leaves the old image untagged; moto removes it.
            && tags_in_cache(&pool, &name, &digest).await.is_none_or(|tags| tags.is_empty())
    })
    .await
    .unwrap_or_else(|| panic!("the tag is not on the image ECR says"));
    assert_eq!(
        changes_of(&pool, &name, &digest, "untagged").await,
        1,
        "the tag left the old image once"
    );

    // A delete, told twice: gone, once.
    ecr.batch_delete_image()
        .repository_name(&name)
        .image_ids(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_digest(&digest)
                .build(),
        )
        .send()
        .await
        .expect("delete in ECR");
    for _ in 0..2 {
        post(&sqs, &queue, &image_action("DELETE", &name, &digest, "")).await;
    }
    within(SHOWS_WITHIN, || async {
        tags_in_cache(&pool, &name, &digest).await.is_none()
    })
    .await
    .expect("the deleted image left the cache");
    within(SHOWS_WITHIN, || async { waiting(&sqs, &queue).await == 0 })
        .await
        .expect("taken");
    assert_eq!(changes_of(&pool, &name, &digest, "deleted").await, 1);

    // Settings changed in ECR: CloudTrail's record brings them, with a drift event in the audit trail.
    ecr.put_image_tag_mutability()
        .repository_name(&name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Mutable)
        .send()
        .await
        .expect("change mutability in ECR");
    let before = proxy.total();
    post(
        &sqs,
        &queue,
        &cloudtrail(
            "PutImageTagMutability",
            serde_json::json!({"repositoryName": name}),
        ),
    )
    .await;
    let mutability = || async {
        sqlx::query_scalar::<_, String>("SELECT tag_mutability FROM repositories WHERE name = $1")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .expect("repository row")
    };
    within(SHOWS_WITHIN, || async { mutability().await == "MUTABLE" })
        .await
        .expect("the mutability change reached the cache");
    assert!(proxy.total() - before <= 2);
    common::wait_for_audit_rows(
        &pool,
        &format!("event_name = 'SyncDetectDrift' AND request_parameters->>'repositoryName' = '{name}'"),
        1,
    )
    .await;

    // Tags changed in ECR.
    let arn = format!("arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}");
    ecr.tag_resource()
        .resource_arn(&arn)
        .tags(
            aws_sdk_ecr::types::Tag::builder()
                .key("tier")
                .value("gold")
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("tag in ECR");
    post(
        &sqs,
        &queue,
        &cloudtrail("TagResource", serde_json::json!({"resourceArn": arn})),
    )
    .await;
    within(SHOWS_WITHIN, || async {
        sqlx::query_scalar::<_, serde_json::Value>("SELECT tags FROM repositories WHERE name = $1")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .expect("repository row")
            .get("tier")
            .is_some_and(|t| t == "gold")
    })
    .await
    .expect("the tag change reached the cache");

    // A repository made outside the gateway, and a push into it.
    let outside = unique("payments", "outside");
    ecr.create_repository()
        .repository_name(&outside)
        .send()
        .await
        .expect("create in ECR");
    post(
        &sqs,
        &queue,
        &cloudtrail("CreateRepository", serde_json::json!({"repositoryName": outside})),
    )
    .await;
    let pushed = push(&ecr, &outside, "latest", "events-3").await;
    post(&sqs, &queue, &image_action("PUSH", &outside, &pushed, "latest")).await;
    within(SHOWS_WITHIN, || async {
        tags_in_cache(&pool, &outside, &pushed).await.is_some()
    })
    .await
    .expect("the new repository's image reached the cache");

    // Deleted in ECR: forgotten.
    ecr.delete_repository()
        .repository_name(&outside)
        .force(true)
        .send()
        .await
        .expect("delete in ECR");
    post(
        &sqs,
        &queue,
        &cloudtrail("DeleteRepository", serde_json::json!({"repositoryName": outside})),
    )
    .await;
    within(SHOWS_WITHIN, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM repositories WHERE name = $1")
            .bind(&outside)
            .fetch_one(&pool)
            .await
            .expect("count")
            == 0
    })
    .await
    .expect("the deleted repository left the cache");

    // Unknown types and shapes are counted and deleted.
    post(&sqs, &queue, "not json at all").await;
    post(
        &sqs,
        &queue,
        &envelope("ECR Something New", serde_json::json!({})),
    )
    .await;
    within(SHOWS_WITHIN, || async { waiting(&sqs, &queue).await == 0 })
        .await
        .expect("unknown events are deleted");
    let admin = gateway.admin.expect("admin listener");
    let text = within(SHOWS_WITHIN, || async {
        metrics(admin)
            .await
            .contains("ecr_gateway_event_queue_messages{registry=\"main\"")
    })
    .await
    .map(|_| ());
    let text = {
        let _ = text;
        metrics(admin).await
    };
    for line in [
        "ecr_gateway_events_total{registry=\"main\",type=\"unknown\",outcome=\"ignored\"} 2",
        "ecr_gateway_events_total{registry=\"main\",type=\"ECR Image Action\",outcome=\"applied\"}",
        "ecr_gateway_event_lag_seconds_count{registry=\"main\",type=\"ECR Image Action\"}",
        "ecr_gateway_event_queue_messages{registry=\"main\",state=\"waiting\"}",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    gateway.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_keeps_failing_is_left_to_the_redrive_policy_and_its_repository_to_the_backstop() {
    let moto = Moto::shared();
    let proxy = FaultProxy::start(moto).await;
    let sqs = sqs_client(moto).await;
    let ecr = ecr_client(moto).await;
    let (queue, dlq) = queue_with_dlq(&sqs, &format!("poison-{}", uuid::Uuid::new_v4().simple()), 2).await;
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, &events_extra(&queue, moto, ""))).await;
    let pool = db.pool().await;
    let name = unique("payments", "poison");
    create(&gateway, &name).await;
    let digest = push(&ecr, &name, "v1", "poison-1").await;

    proxy.fail_action("DescribeImages");
    post(&sqs, &queue, &image_action("PUSH", &name, &digest, "v1")).await;
    // Visibility 2 s, redrive after 2 receives: in the dead-letter queue within seconds, never dropped.
    within(Duration::from_secs(20), || async {
        waiting(&sqs, &dlq).await == 1
    })
    .await
    .expect("the failing message went to the dead-letter queue");
    assert_eq!(tags_in_cache(&pool, &name, &digest).await, None);
    let dirty: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT dirty_since FROM sync_state WHERE repository = $1")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .expect("sync state");
    assert!(dirty.is_some(), "the repository is marked for the backstop");
    let text = metrics(gateway.admin.expect("admin")).await;
    assert!(
        text.contains(
            "ecr_gateway_events_total{registry=\"main\",type=\"ECR Image Action\",outcome=\"failed\"} 2"
        ),
        "{text}"
    );
    proxy.heal();
    gateway.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_queue_and_apply_each_change_once() {
    let moto = Moto::shared();
    let sqs = sqs_client(moto).await;
    let ecr = ecr_client(moto).await;
    let (queue, _dlq) = queue_with_dlq(&sqs, &format!("shared-{}", uuid::Uuid::new_v4().simple()), 5).await;
    let db = TestDb::create().await;
    let extra = events_extra(&queue, moto, "");
    let a = Gateway::start(config(&db, moto, &extra)).await;
    let b = Gateway::start(config(&db, moto, &extra)).await;
    let pool = db.pool().await;
    let name = unique("payments", "shared");
    create(&a, &name).await;
    let mut digests = Vec::new();
    for i in 0..20 {
        let digest = push(&ecr, &name, &format!("v{i}"), &format!("shared-{i}")).await;
        // Each event twice, as SQS may deliver it, to whichever replica receives it.
        post(
            &sqs,
            &queue,
            &image_action("PUSH", &name, &digest, &format!("v{i}")),
        )
        .await;
        post(
            &sqs,
            &queue,
            &image_action("PUSH", &name, &digest, &format!("v{i}")),
        )
        .await;
        digests.push(digest);
    }
    within(Duration::from_secs(20), || async {
        waiting(&sqs, &queue).await == 0
    })
    .await
    .expect("both replicas drained the queue");
    for (i, digest) in digests.iter().enumerate() {
        assert_eq!(
            tags_in_cache(&pool, &name, digest).await,
            Some(vec![format!("v{i}")])
        );
        assert_eq!(
            changes_of(&pool, &name, digest, "pushed").await,
            1,
            "image {i} was pushed once"
        );
    }
    a.stop().await.expect("a stops");
    b.stop().await.expect("b stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_between_receive_and_delete_the_event_is_applied_once_after_restart() {
    let moto = Moto::shared();
    let sqs_proxy = FaultProxy::start(moto).await;
    let sqs = sqs_client(moto).await;
    let ecr = ecr_client(moto).await;
    let (queue, _dlq) = queue_with_dlq(&sqs, &format!("crash-{}", uuid::Uuid::new_v4().simple()), 10).await;
    let db = TestDb::create().await;
    let name = unique("payments", "crash");
    {
        let gateway = Gateway::start(config(&db, moto, "")).await;
        create(&gateway, &name).await;
        gateway.stop().await.expect("stops");
    }
    let digest = push(&ecr, &name, "v1", "crash-1").await;
    // The delete never answers: the event is committed, its message not yet deleted.
    sqs_proxy.fail_action("DeleteMessageBatch");
    let text = config_text(&db, moto, &events_extra(&queue, &sqs_proxy.endpoint, ""));
    let process = Process::start(&text).await;
    post(&sqs, &queue, &image_action("PUSH", &name, &digest, "v1")).await;
    let pool = db.pool().await;
    within(SHOWS_WITHIN, || async {
        tags_in_cache(&pool, &name, &digest).await.is_some()
    })
    .await
    .expect("applied before the kill");
    within(SHOWS_WITHIN, || async {
        sqs_proxy.count("DeleteMessageBatch") >= 1
    })
    .await
    .expect("the delete was sent");
    process.kill();
    sqs_proxy.heal();
    assert_eq!(waiting(&sqs, &queue).await, 1, "the message outlived the kill");

    let restarted = Process::start(&text).await;
    within(Duration::from_secs(20), || async {
        waiting(&sqs, &queue).await == 0
    })
    .await
    .expect("delivered again after the restart, and deleted");
    assert_eq!(
        tags_in_cache(&pool, &name, &digest).await,
        Some(vec!["v1".to_owned()])
    );
    assert_eq!(
        changes_of(&pool, &name, &digest, "pushed").await,
        1,
        "applied once"
    );
    restarted.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_events_the_backstop_reads_only_what_is_dirty_or_new() {
    // A moto of its own: the listing covers every repository of the registry.
    let own = Moto::start();
    let moto = own.endpoint.as_str();
    let proxy = FaultProxy::start(moto).await;
    let sqs = sqs_client(moto).await;
    let ecr = ecr_client(moto).await;
    let (queue, _dlq) = queue_with_dlq(&sqs, &format!("backstop-{}", uuid::Uuid::new_v4().simple()), 3).await;
    let db = TestDb::create().await;
    let prefix = format!("bk{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let names: Vec<String> = (0..6).map(|i| format!("{prefix}/repo-{i}")).collect();
    for name in &names {
        ecr.create_repository()
            .repository_name(name)
            .send()
            .await
            .expect("create in ECR");
    }
    let (_pool, store) = db.migrated().await;
    let registry = ecr_gateway::ecr::Registry::connect(&ecr_gateway::config::RegistryConfig {
        alias: "main".into(),
        account_id: ACCOUNT.into(),
        region: REGION.into(),
        endpoint_url: Some(proxy.endpoint.clone()),
        events: Some(ecr_gateway::config::EventsConfig {
            queue_url: queue.clone(),
            endpoint_url: Some(moto.into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let policy = std::sync::Arc::new(ecr_gateway::policy::PolicyInForce::new(
        ecr_gateway::policy::OrgPolicy::compile(&config(&db, moto, "").policy).expect("policy"),
    ));
    let syncer = ecr_gateway::inventory::Syncer {
        store: store.clone(),
        holder: "test".into(),
        lease: Duration::from_secs(30),
        scans_per_pass: 0,
    };
    let pass = ecr_gateway::inventory::Pass {
        interval: Duration::from_secs(86_400),
        concurrency: 2,
        full_resync: Duration::from_secs(7 * 86_400),
    };
    let (_stop, stop) = tokio::sync::watch::channel(false);
    // First pass: every repository is new, all are read.
    let run = |registry: ecr_gateway::ecr::Registry| {
        let (syncer, policy, stop) = (syncer.clone(), policy.clone(), stop.clone());
        async move { ecr_gateway::inventory::sync_once(&syncer, &policy, &registry, &pass, &stop).await }
    };
    run(registry.clone()).await;
    let synced = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM sync_state WHERE repository LIKE $1 AND last_synced_at IS NOT NULL",
    )
    .bind(format!("{prefix}/%"))
    .fetch_one(store.pool())
    .await
    .expect("count");
    assert_eq!(synced, names.len() as i64);

    // Nothing changed: the pass lists the registry and reads no repository's images or tags.
    let before = (proxy.count("DescribeImages"), proxy.count("ListTagsForResource"));
    run(registry.clone()).await;
    assert_eq!(
        (proxy.count("DescribeImages"), proxy.count("ListTagsForResource")),
        before
    );

    // One repository changed outside the gateway with its event lost: the listing sees the drift
    // and the pass reads that one repository's images.
    ecr.put_image_tag_mutability()
        .repository_name(&names[2])
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .expect("change in ECR");
    let before = proxy.count("DescribeImages");
    run(registry.clone()).await;
    assert_eq!(proxy.count("DescribeImages") - before, 1, "one repository read");
}
