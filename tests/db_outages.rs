//! The gateway's database refusing it in each way Postgres can, against the
//! real server: the database does not accept connections (55000), the
//! gateway's role may not log in (28000), the role is at its connection limit
//! (53300, which sqlx retries until the pool times out), the database is gone
//! (3D000). Each time every RPC answers UNAVAILABLE with `RetryInfo`,
//! `/readyz` answers 503, and once the condition is lifted the same gateway
//! serves again without a restart. The codes that cannot be produced here
//! (57P03, 28P01 under trust authentication) are covered by the unit test of
//! the classification in `src/store/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Moto, TestDb, as_user, config, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic_types::StatusExt as _;

/// A test database owned by a login role of its own, the role the gateway
/// connects as (superusers ignore connection limits and cannot be made
/// NOLOGIN safely); both are dropped at the end.
struct OwnedDb {
    db: TestDb,
    role: String,
    name: String,
    admin_url: String,
}

impl OwnedDb {
    async fn create() -> OwnedDb {
        let db = TestDb::create().await;
        let name = db.url.rsplit('/').next().expect("database name").to_owned();
        let role = format!("{name}_gw");
        let admin_url = db.url.replace(&format!("/{name}"), "/postgres");
        let mut admin = PgConnection::connect(&admin_url).await.expect("admin connection");
        for statement in [
            format!("CREATE ROLE {role} LOGIN NOSUPERUSER"),
            format!("ALTER DATABASE {name} OWNER TO {role}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .expect("role setup");
        }
        OwnedDb {
            db,
            role,
            name,
            admin_url,
        }
    }

    /// The database URL with the gateway's role as the user.
    fn gateway_url(&self) -> String {
        let (_, rest) = self.db.url.split_once('@').expect("user@host in the URL");
        format!("postgres://{}@{rest}", self.role)
    }

    async fn admin(&self, statements: &[String]) {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("admin connection");
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }

    /// Ends every session of the gateway's role (its pool's connections).
    fn terminate_sessions(&self) -> String {
        format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = '{}'",
            self.role
        )
    }
}

impl Drop for OwnedDb {
    fn drop(&mut self) {
        let (admin_url, name, role) = (self.admin_url.clone(), self.name.clone(), self.role.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    for statement in [
                        format!("DROP DATABASE IF EXISTS {name}_away WITH (FORCE)"),
                        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                        format!("DROP ROLE IF EXISTS {role}"),
                    ] {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                            .execute(&mut admin)
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

/// A gateway connected as the database's own role, with an admin port.
async fn gateway_on(owned: &OwnedDb) -> Gateway {
    let mut cfg = config(&owned.db, Moto::shared(), "[admin]\nlisten = \"127.0.0.1:0\"\n");
    cfg.database.url = owned.gateway_url();
    cfg.database.acquire_timeout_seconds = 1;
    Gateway::start(cfg).await
}

async fn readyz(gateway: &Gateway) -> String {
    let admin = gateway.admin.expect("the config sets [admin] listen");
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin port");
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    answer
}

fn alice<T>(message: T) -> tonic::Request<T> {
    as_user(message, "alice@example.com", "payments")
}

/// The outcome of each RPC that needs the database, by name. Every call
/// names a repository not asked about before, so no cached answer hides
/// the database.
async fn call_every_rpc(gateway: &Gateway, round: &str) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let name = unique("payments", round);
    let repositories = || gateway.repositories();
    let mut outcomes = Vec::new();
    outcomes.push((
        "GetRepository",
        repositories()
            .get_repository(alice(pb::GetRepositoryRequest {
                repository: name.clone(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    ));
    outcomes.push((
        "ListRepositories",
        repositories()
            .list_repositories(alice(pb::ListRepositoriesRequest {
                prefix: name.clone(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    ));
    outcomes.push((
        "CreateRepository",
        repositories()
            .create_repository(alice(common::tagged_repository(&name)))
            .await
            .map(|_| ()),
    ));
    outcomes.push((
        "UpdateRepository",
        repositories()
            .update_repository(alice(pb::UpdateRepositoryRequest {
                repository: format!("{name}-other"),
                settings: Some(pb::RepositorySettings {
                    scan_on_push: Some(true),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["scan_on_push".into()],
                }),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    ));
    outcomes.push((
        "DeleteRepository",
        repositories()
            .delete_repository(alice(pb::DeleteRepositoryRequest {
                repository: format!("{name}-gone"),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    ));
    outcomes.push((
        "ResolveImage",
        ImageServiceClient::new(gateway.channel.clone())
            .resolve_image(alice(pb::ResolveImageRequest {
                reference: format!("{name}:v1"),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
    ));
    outcomes
}

/// Runs `refuse` on a serving gateway, checks that every RPC answers
/// UNAVAILABLE with `RetryInfo` (nothing INTERNAL) and `/readyz` 503, then
/// runs `restore` and waits until the same gateway serves again.
async fn refused_then_restored(owned: &OwnedDb, what: &str, refuse: &[String], restore: &[String]) {
    let gateway = gateway_on(owned).await;
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    while !readyz(&gateway).await.starts_with("HTTP/1.1 200") {
        assert!(
            Instant::now() < ready_deadline,
            "{what}: never ready before the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway
        .repositories()
        .list_repositories(alice(pb::ListRepositoriesRequest::default()))
        .await
        .unwrap_or_else(|status| panic!("{what}: served before the outage: {status:?}"));

    owned.admin(refuse).await;
    let outcomes = call_every_rpc(&gateway, "down").await;
    let ready = readyz(&gateway).await;

    for (rpc, outcome) in outcomes {
        let status = outcome.expect_err(&format!("{what}: {rpc} cannot be served"));
        assert_eq!(status.code(), Code::Unavailable, "{what}: {rpc}: {status:?}");
        assert!(
            status.get_details_retry_info().is_some(),
            "{what}: {rpc} carries RetryInfo: {status:?}"
        );
        assert!(
            !status.message().contains("internal"),
            "{what}: {rpc}: {}",
            status.message()
        );
    }
    assert!(ready.starts_with("HTTP/1.1 503"), "{what}: {ready}");
    assert!(ready.contains("postgres unreachable"), "{what}: {ready}");

    owned.admin(restore).await;
    let restored = Instant::now();
    loop {
        let served = call_every_rpc(&gateway, "back").await;
        let unavailable: Vec<String> = served
            .iter()
            .filter_map(|(rpc, outcome)| match outcome {
                Err(status) if status.code() == Code::Unavailable => Some(format!("{rpc}: {status:?}")),
                _ => None,
            })
            .collect();
        if unavailable.is_empty() && readyz(&gateway).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(15),
            "{what}: not serving 15 s after the condition was lifted: {unavailable:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_refuses_connections_is_unavailable_on_every_rpc_until_it_accepts_them_again() {
    let owned = OwnedDb::create().await;
    let name = owned.name.clone();

    refused_then_restored(
        &owned,
        "55000 ALLOW_CONNECTIONS false",
        &[
            format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
            owned.terminate_sessions(),
        ],
        &[format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_may_no_longer_log_in_is_unavailable_on_every_rpc_until_it_may_again() {
    let owned = OwnedDb::create().await;
    let role = owned.role.clone();

    refused_then_restored(
        &owned,
        "28000 NOLOGIN",
        &[format!("ALTER ROLE {role} NOLOGIN"), owned.terminate_sessions()],
        &[format!("ALTER ROLE {role} LOGIN")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_at_its_connection_limit_is_unavailable_on_every_rpc_once_the_pool_times_out() {
    let owned = OwnedDb::create().await;
    let role = owned.role.clone();

    refused_then_restored(
        &owned,
        "53300 CONNECTION LIMIT 0",
        &[
            format!("ALTER ROLE {role} CONNECTION LIMIT 0"),
            owned.terminate_sessions(),
        ],
        &[format!("ALTER ROLE {role} CONNECTION LIMIT -1")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_no_longer_exists_is_unavailable_on_every_rpc_until_it_is_back() {
    let owned = OwnedDb::create().await;
    let name = owned.name.clone();

    refused_then_restored(
        &owned,
        "3D000 database renamed away",
        &[
            format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
            owned.terminate_sessions(),
            format!("ALTER DATABASE {name} RENAME TO {name}_away"),
            format!("ALTER DATABASE {name}_away ALLOW_CONNECTIONS true"),
        ],
        &[format!("ALTER DATABASE {name}_away RENAME TO {name}")],
    )
    .await;
}
