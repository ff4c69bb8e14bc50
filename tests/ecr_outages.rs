//! ECR throttling and outages, with the fault-injecting proxy between the
//! gateway's SDK and moto: throttled calls are retried by the SDK and reads
//! never call ECR; when ECR is unreachable the registry's circuit breaker
//! opens, writes fail fast with UNAVAILABLE and RetryInfo, cached reads go
//! on, health reports the degraded registry, and a probe closes the breaker
//! once ECR is back.

mod common;

use std::time::{Duration, Instant};

use common::images::push;
use common::proxy::FaultProxy;
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// The health entry of the test's registry.
const MAIN_REGISTRY_HEALTH: &str = "ecrgateway.v1.Registry/main";

fn bob<T>(message: T) -> tonic::Request<T> {
    as_user(message, "bob@example.com", "payments")
}

/// A call with a deadline the caller sets (the gateway honours `grpc-timeout`).
fn bob_within<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = bob(message);
    request.set_timeout(deadline);
    request
}

fn breaker(failure_threshold: u32, open_seconds: u64) -> String {
    format!("[registries.breaker]\nfailure_threshold = {failure_threshold}\nopen_seconds = {open_seconds}\n")
}

async fn health(gateway: &Gateway, service: &str) -> ServingStatus {
    let response = HealthClient::new(gateway.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(response.status).expect("status")
}

/// Health is set by a task that follows the breaker: poll it briefly.
async fn wait_for_health(gateway: &Gateway, service: &str, expected: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = health(gateway, service).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} stayed {status:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole HTTP answer of `/readyz` on the admin port.
async fn readyz(gateway: &Gateway) -> String {
    let admin = gateway.admin.expect("the config sets [admin] listen");
    let mut stream = TcpStream::connect(admin).await.expect("admin port");
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    answer
}

async fn create_repository(gateway: &Gateway, name: &str) -> Result<(), tonic::Status> {
    let request = pb::CreateRepositoryRequest {
        repository: name.to_owned(),
        settings: Some(pb::RepositorySettings {
            tags: common::team_tags(),
            image_tag_mutability: pb::ImageTagMutability::Immutable as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    gateway
        .repositories()
        .create_repository(bob_within(request, Duration::from_secs(15)))
        .await
        .map(|_| ())
}

/// A repository created through the gateway, with one image, synced into the cache.
async fn cached_image(gateway: &Gateway, stem: &str) -> (String, String) {
    let name = unique("payments", stem);
    create_repository(gateway, &name)
        .await
        .expect("create repository");
    let ecr = ecr_client(Moto::shared()).await;
    let digest = push(&ecr, &name, "v1", &format!("{name}-v1")).await;
    images(gateway)
        .refresh_inventory(bob(pb::RefreshInventoryRequest {
            repository: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("refresh");
    (name, digest)
}

fn images(gateway: &Gateway) -> ImageServiceClient<tonic::transport::Channel> {
    ImageServiceClient::new(gateway.channel.clone())
}

async fn resolve(
    gateway: &Gateway,
    reference: &str,
    consistency: pb::Consistency,
) -> Result<pb::ResolveImageResponse, tonic::Status> {
    images(gateway)
        .resolve_image(bob(pb::ResolveImageRequest {
            reference: reference.into(),
            consistency: consistency as i32,
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

/// Every read a portal or deploy system makes from the cache, each checked
/// to carry the time it was synced.
async fn read_everything_cached(gateway: &Gateway, repository: &str, digest: &str) {
    let resolved = resolve(gateway, &format!("{repository}:v1"), pb::Consistency::Cached)
        .await
        .expect("ResolveImage");
    assert_eq!(resolved.digest, digest);
    assert!(
        resolved.freshness.and_then(|f| f.synced_at).is_some(),
        "ResolveImage says how stale it is"
    );
    let image = images(gateway)
        .get_image(bob(pb::GetImageRequest {
            repository: repository.into(),
            tag: "v1".into(),
            ..Default::default()
        }))
        .await
        .expect("GetImage")
        .into_inner();
    assert_eq!(image.digest, digest);
    let listed = images(gateway)
        .list_images(bob(pb::ListImagesRequest {
            repository: repository.into(),
            ..Default::default()
        }))
        .await
        .expect("ListImages")
        .into_inner();
    assert_eq!(listed.images.len(), 1);
    assert!(
        listed.freshness.and_then(|f| f.synced_at).is_some(),
        "ListImages says how stale it is"
    );
    gateway
        .repositories()
        .get_repository(bob(pb::GetRepositoryRequest {
            repository: repository.into(),
            ..Default::default()
        }))
        .await
        .expect("GetRepository");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_thirty_percent_throttling_reads_call_no_ecr_and_writes_succeed_on_retry() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(Moto::shared()).await;
    // A breaker that would open at the first failed operation: throttling must never count.
    let gateway = Gateway::start(config(&db, &proxy.endpoint, &breaker(1, 60))).await;
    let (cached, digest) = cached_image(&gateway, "throttled-read").await;
    proxy.throttle(30);

    let before_reads = proxy.total();
    for _ in 0..5 {
        read_everything_cached(&gateway, &cached, &digest).await;
    }
    let ecr_calls_of_reads = proxy.total() - before_reads;
    let names: Vec<String> = (0..4)
        .map(|i| unique("payments", &format!("throttled-{i}")))
        .collect();
    for name in &names {
        create_repository(&gateway, name)
            .await
            .unwrap_or_else(|status| panic!("CreateRepository {name} within its deadline: {status:?}"));
    }

    assert_eq!(ecr_calls_of_reads, 0, "cached reads never call ECR");
    assert!(
        proxy.throttled() >= 3,
        "the writes met throttling ({} of {} calls throttled)",
        proxy.throttled(),
        proxy.total()
    );
    let ecr = ecr_client(Moto::shared()).await;
    for name in &names {
        let repository = ecr
            .describe_repositories()
            .repository_names(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name} exists in ECR: {e:?}"))
            .repositories
            .unwrap_or_default()
            .remove(0);
        let tags = ecr
            .list_tags_for_resource()
            .resource_arn(repository.repository_arn.expect("arn"))
            .send()
            .await
            .expect("tags")
            .tags
            .unwrap_or_default();
        assert!(
            tags.iter().any(|t| t.key == "team"),
            "{name} got its tags: {tags:?}"
        );
    }
    assert_eq!(
        health(&gateway, MAIN_REGISTRY_HEALTH).await,
        ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn while_ecr_is_unreachable_writes_fail_fast_cached_reads_go_on_and_a_probe_closes_the_breaker() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(Moto::shared()).await;
    let extra = format!("{}\n[admin]\nlisten = \"127.0.0.1:0\"\n", breaker(2, 3));
    let gateway = Gateway::start(config(&db, &proxy.endpoint, &extra)).await;
    let (cached, digest) = cached_image(&gateway, "outage-read").await;
    assert_eq!(
        health(&gateway, MAIN_REGISTRY_HEALTH).await,
        ServingStatus::Serving
    );
    proxy.drop_all();

    // Two writes that find ECR unreachable open the breaker.
    for i in 0..2 {
        let status = create_repository(&gateway, &unique("payments", &format!("down-{i}")))
            .await
            .expect_err("ECR unreachable");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status.get_details_error_info().expect("info").reason,
            "ECR_UNAVAILABLE"
        );
    }
    let calls_before = proxy.total();
    let started = Instant::now();
    let refused = create_repository(&gateway, &unique("payments", "refused"))
        .await
        .expect_err("breaker open");
    let refused_after = started.elapsed();
    let calls_during = proxy.total() - calls_before;
    let strong = resolve(&gateway, &format!("{cached}:v1"), pb::Consistency::Strong)
        .await
        .expect_err("read-through while the breaker is open");

    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().expect("info").reason,
        "ECR_CIRCUIT_OPEN"
    );
    assert!(
        refused.message().contains("`main`"),
        "names the registry: {}",
        refused.message()
    );
    assert!(
        refused.message().contains("in a row failed"),
        "says why: {}",
        refused.message()
    );
    for transport_words in [
        "dispatch failure",
        "io error",
        "tcp connect",
        "Connection refused",
        "os error",
    ] {
        assert!(
            !refused.message().contains(transport_words),
            "the transport's error stays in the log: {}",
            refused.message()
        );
    }
    let retry_delay = refused
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry_delay > Duration::ZERO && retry_delay <= Duration::from_secs(3),
        "retry after the rest of the cool-down: {retry_delay:?}"
    );
    assert_eq!(calls_during, 0, "nothing was sent to ECR");
    assert!(
        refused_after < Duration::from_secs(1),
        "failed fast: {refused_after:?}"
    );
    assert_eq!(strong.code(), Code::Unavailable, "{strong:?}");
    assert_eq!(
        strong.get_details_error_info().expect("info").reason,
        "ECR_CIRCUIT_OPEN"
    );
    read_everything_cached(&gateway, &cached, &digest).await;
    assert_eq!(
        health(&gateway, "").await,
        ServingStatus::Serving,
        "reads are served"
    );
    assert_eq!(
        health(&gateway, "ecrgateway.v1.ImageService").await,
        ServingStatus::Serving
    );
    wait_for_health(&gateway, MAIN_REGISTRY_HEALTH, ServingStatus::NotServing).await;
    let ready = readyz(&gateway).await;
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "still ready for reads: {ready}"
    );
    assert!(
        ready.contains("ECR registry `main` circuit breaker open"),
        "names the degraded registry: {ready}"
    );

    proxy.heal();
    let healed = unique("payments", "healed");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match create_repository(&gateway, &healed).await {
            Ok(()) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "the breaker never closed: {status:?}");
                let wait = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .expect("RetryInfo");
                tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
            }
        }
    }

    wait_for_health(&gateway, MAIN_REGISTRY_HEALTH, ServingStatus::Serving).await;
    assert!(!readyz(&gateway).await.contains("degraded"));
    ecr_client(Moto::shared())
        .await
        .describe_repositories()
        .repository_names(&healed)
        .send()
        .await
        .expect("the write after the outage reached ECR");
    resolve(&gateway, &format!("{cached}:v1"), pb::Consistency::Strong)
        .await
        .expect("read-through works again");
}
