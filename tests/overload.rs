//! Overload safety against the real server: calls beyond
//! `overload.max_concurrent_calls` are shed with RESOURCE_EXHAUSTED and
//! `RetryInfo` while health checks keep answering; `[rate_limits]` holds each
//! caller to the rate of its group.

mod common;

use std::time::{Duration, Instant};

use common::proxy::FaultProxy;
use common::{Gateway, Moto, TestDb, as_user, config, tagged_repository, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(gateway: &Gateway) -> ServingStatus {
    let response = HealthClient::new(gateway.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check answers")
        .into_inner();
    ServingStatus::try_from(response.status).expect("status")
}

/// A read every authenticated caller may make (the registry's sync status).
async fn sync_status(gateway: &Gateway, principal: &str, groups: &str) -> Result<(), tonic::Status> {
    ImageServiceClient::new(gateway.channel.clone())
        .get_sync_status(as_user(pb::GetSyncStatusRequest::default(), principal, groups))
        .await
        .map(|_| ())
}

fn assert_exhausted(status: &tonic::Status, reason: &str) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().expect("ErrorInfo").reason,
        reason,
        "{status:?}"
    );
    details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo with a delay")
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_beyond_the_limit_are_shed_while_health_checks_answer() {
    let db = TestDb::create().await;
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let gateway = Gateway::start(config(
        &db,
        &proxy.endpoint,
        "[overload]\nmax_concurrent_calls = 2\nretry_after_ms = 300\n",
    ))
    .await;
    // Two creates whose ECR answers are held fill the gateway.
    proxy.hold_answers("CreateRepository", 0);
    let creates: Vec<_> = (0..2)
        .map(|i| {
            let client = gateway.repositories();
            let name = unique("payments", &format!("held-{i}"));
            tokio::spawn(async move {
                let mut client = client;
                client
                    .create_repository(as_user(tagged_repository(&name), "root", "platform-admins"))
                    .await
            })
        })
        .collect();
    wait_for("both creates to reach ECR", || {
        assert!(
            creates.iter().all(|create| !create.is_finished()),
            "a held create ended early"
        );
        proxy.count("CreateRepository") == 2
    })
    .await;

    let started = Instant::now();
    let shed = sync_status(&gateway, "alice@example.com", "payments")
        .await
        .expect_err("a third call is shed");
    let answered_in = started.elapsed();
    let delay = assert_exhausted(&shed, "OVERLOADED");
    assert_eq!(delay, Duration::from_millis(300));
    assert!(
        shed.message().contains("overload.max_concurrent_calls"),
        "{shed:?}"
    );
    assert!(
        answered_in < Duration::from_secs(2),
        "shed at once, took {answered_in:?}"
    );
    for _ in 0..20 {
        assert_eq!(health(&gateway).await, ServingStatus::Serving);
    }

    proxy.heal();
    for create in creates {
        create.await.expect("task").expect("a held create finishes");
    }
    sync_status(&gateway, "alice@example.com", "payments")
        .await
        .expect("served again once the calls in flight ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_caller_is_held_to_the_rate_of_its_most_generous_group() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(
        &db,
        Moto::shared(),
        "[rate_limits]\ndefault = { per_second = 1, burst = 3 }\n\
         [[rate_limits.groups]]\ngroup = \"deployers\"\nper_second = 1\nburst = 8\n",
    ))
    .await;

    async fn admitted(gateway: &Gateway, principal: &str, groups: &str) -> (usize, tonic::Status) {
        for admitted in 0..50 {
            if let Err(status) = sync_status(gateway, principal, groups).await
                && status.code() == Code::ResourceExhausted
            {
                return (admitted, status);
            }
        }
        panic!("{principal} was never limited");
    }

    let (alice, refused) = admitted(&gateway, "alice@example.com", "payments").await;
    let (bob, _) = admitted(&gateway, "bob@example.com", "payments").await;
    let (argo, _) = admitted(&gateway, "argo-cd", "deployers,payments").await;

    // A token comes back every second; a burst of 3 may have gained one meanwhile.
    assert!((3..=4).contains(&alice), "alice got {alice}");
    assert!((3..=4).contains(&bob), "bob has his own bucket, got {bob}");
    assert!((8..=9).contains(&argo), "deployers get their burst, got {argo}");
    let delay = assert_exhausted(&refused, "RATE_LIMITED");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    assert!(refused.message().contains("alice@example.com"), "{refused:?}");
    let quota = refused.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "principal:alice@example.com");
    assert!(quota.violations[0].description.contains("default"), "{quota:?}");
    for _ in 0..20 {
        assert_eq!(
            health(&gateway).await,
            ServingStatus::Serving,
            "health is never limited"
        );
    }

    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    sync_status(&gateway, "alice@example.com", "payments")
        .await
        .expect("served again after the RetryInfo delay");
}
