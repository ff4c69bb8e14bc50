//! The admin listener (`[admin] listen`): liveness, readiness (Postgres and
//! migrations), Prometheus metrics of real gRPC calls, 404 and 405.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{Gateway, Moto, TestDb, as_user, config};
use ecr_gateway::pb;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::Code;
use tonic_types::StatusExt as _;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";
const LIST: &str = "/ecrgateway.v1.RepositoryService/ListRepositories";

/// An admin answer: status, content type and body.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn call(addr: SocketAddr, method: hyper::Method, path: &str) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client.request(request).await.expect("admin answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, hyper::Method::GET, path).await
}

fn admin_of(gateway: &Gateway) -> SocketAddr {
    gateway.admin.expect("the config sets [admin] listen")
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_ok_and_readyz_is_ready_on_a_migrated_database() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), ADMIN)).await;
    let admin = admin_of(&gateway);

    let health = get(admin, "/healthz").await;
    // The listener opens before the migrations run: ready once they are applied.
    let mut ready = get(admin, "/readyz").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ready.status != StatusCode::OK && std::time::Instant::now() < deadline {
        assert!(ready.body.starts_with("migrations pending"), "{}", ready.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ready = get(admin, "/readyz").await;
    }

    assert_eq!((health.status, health.body.trim()), (StatusCode::OK, "ok"));
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_postgres_when_it_is_unreachable_while_healthz_stays_ok() {
    let db = TestDb::create().await;
    let mut cfg = config(&db, Moto::shared(), ADMIN);
    cfg.database.url = format!("postgres://postgres@127.0.0.1:{}/nothing", common::free_port());
    cfg.database.migrate_on_start = false;
    cfg.database.acquire_timeout_seconds = 1;
    let gateway = Gateway::start(cfg).await;
    let admin = admin_of(&gateway);

    let ready = get(admin, "/readyz").await;
    let health = get(admin, "/healthz").await;

    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.body.starts_with("postgres unreachable"), "{}", ready.body);
    assert_eq!(ready.body.lines().count(), 1, "{}", ready.body);
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_counts_the_migrations_an_unmigrated_database_lacks() {
    let db = TestDb::create().await;
    let mut cfg = config(&db, Moto::shared(), ADMIN);
    cfg.database.migrate_on_start = false;
    let gateway = Gateway::start(cfg).await;
    let embedded = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations")
        .count();

    let ready = get(admin_of(&gateway), "/readyz").await;

    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let expected = format!("migrations pending: {embedded} ");
    assert!(
        ready.body.starts_with(&expected),
        "{expected:?} in {}",
        ready.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_calls_by_method_and_grpc_code() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), ADMIN)).await;
    let mut repositories = RepositoryServiceClient::new(gateway.channel.clone());
    repositories
        .list_repositories(as_user(
            pb::ListRepositoriesRequest::default(),
            "frank@example.com",
            "payments",
        ))
        .await
        .expect("a listing succeeds");
    let refused = repositories
        .list_repositories(as_user(
            pb::ListRepositoriesRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            "frank@example.com",
            "payments",
        ))
        .await
        .expect_err("a broken page token is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let metrics = get(admin_of(&gateway), "/metrics").await;

    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    for code in ["OK", "InvalidArgument"] {
        let series =
            format!("ecr_gateway_rpc_duration_seconds_count{{method=\"{LIST}\",code=\"{code}\"}} 1\n");
        assert!(metrics.body.contains(&series), "{series} in\n{}", metrics.body);
    }
    assert!(
        metrics.body.contains("ecr_gateway_rpc_in_flight 0\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("\necr_gateway_audit_events_pending "),
        "{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_are_not_found_and_other_methods_not_allowed() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), ADMIN)).await;
    let admin = admin_of(&gateway);

    let unknown = get(admin, "/nope").await;
    let post = call(admin, hyper::Method::POST, "/healthz").await;

    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_admin_listener_unless_configured() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;

    assert_eq!(gateway.admin, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_unavailable_while_the_gateway_drains() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), ADMIN)).await;
    let admin = admin_of(&gateway);
    // An open stream keeps the gateway draining for its grace period.
    let mut health = tonic_health::pb::health_client::HealthClient::new(gateway.channel.clone());
    let _watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch");

    drop(gateway);
    let mut ready = get(admin, "/readyz").await;
    for _ in 0..50 {
        if ready.status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ready = get(admin, "/readyz").await;
    }

    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.body.starts_with("draining"), "{}", ready.body);
}

/// Postgres goes away under a running gateway and comes back: reads fail fast
/// with UNAVAILABLE, `/readyz` says so, health turns NOT_SERVING; once it is
/// back the gateway serves again (calls, `/readyz` and health) within 5 s
/// without a restart, and the audit events of the calls refused meanwhile are
/// not lost.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_recovers_from_a_postgres_outage_within_five_seconds() {
    use std::time::{Duration, Instant};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let db = TestDb::create().await;
    let postgres = db
        .url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the test database URL")
        .to_owned();
    let proxy = common::proxy::TcpProxy::start(&postgres).await;
    let mut cfg = config(&db, Moto::shared(), ADMIN);
    cfg.database.url = db.url.replace(&postgres, &proxy.addr);
    cfg.database.acquire_timeout_seconds = 1;
    let gateway = Gateway::start(cfg).await;
    let admin = admin_of(&gateway);
    let list = || {
        let mut client = RepositoryServiceClient::new(gateway.channel.clone());
        async move {
            client
                .list_repositories(as_user(
                    pb::ListRepositoriesRequest::default(),
                    "outage@example.com",
                    "payments",
                ))
                .await
        }
    };
    let health_of = |service: &'static str| {
        let mut client = HealthClient::new(gateway.channel.clone());
        async move {
            let status = client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health answers")
                .into_inner()
                .status;
            ServingStatus::try_from(status).expect("status")
        }
    };
    list().await.expect("served before the outage");
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);

    proxy.cut();
    let started = Instant::now();
    let refused = list().await.expect_err("no database");
    let refused_in = started.elapsed();
    let second = list().await.expect_err("still no database");
    let ready = get(admin, "/readyz").await;

    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(second.code(), Code::Unavailable, "{second:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
    assert!(
        refused_in < Duration::from_secs(3),
        "fails fast, took {refused_in:?}"
    );
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.body.starts_with("postgres unreachable"), "{}", ready.body);
    while health_of("").await != ServingStatus::NotServing {
        assert!(started.elapsed() < Duration::from_secs(5), "health still SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        health_of("liveness").await,
        ServingStatus::Serving,
        "the liveness entry never follows Postgres"
    );

    proxy.restore();
    let restored = Instant::now();
    while list().await.is_err()
        || get(admin, "/readyz").await.status != StatusCode::OK
        || health_of("").await != ServingStatus::Serving
    {
        assert!(
            restored.elapsed() < Duration::from_secs(5),
            "not serving again 5 s after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = db.pool().await;
    let refused_calls = common::wait_for_audit_rows(
        &pool,
        "principal = 'outage@example.com' AND error_code IS NOT NULL",
        2,
    )
    .await;
    assert!(refused_calls >= 2, "the refused calls' audit events are kept");
}
