//! Test harness: real parts only. A real moto server (ECR emulator) started
//! from the venv that `scripts/test` creates, a fresh Postgres database per
//! test, the real gateway on port 0, and generated tonic clients.
#![allow(dead_code)]

pub(crate) mod events;
pub(crate) mod images;
pub(crate) mod process;
pub(crate) mod proxy;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use ecr_gateway::config::Config;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use sqlx::{Connection, PgConnection};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Account of the default test registry (moto's default account).
pub(crate) const ACCOUNT: &str = "123456789012";
/// Account reached by assuming a role (moto maps the role's account).
pub(crate) const OTHER_ACCOUNT: &str = "222222222222";
/// Region of the test registries.
pub(crate) const REGION: &str = "us-east-1";

static ENV: Once = Once::new();

/// Sets the fake AWS credentials moto accepts. Runs before any test starts a
/// thread that reads the environment (every test calls it first).
pub(crate) fn init() {
    ENV.call_once(|| {
        for (key, value) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            if std::env::var_os(key).is_none() {
                // SAFETY: called once, before any test spawns threads that read the environment.
                unsafe { std::env::set_var(key, value) };
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn moto_binary() -> PathBuf {
    let path = std::env::var_os("ECR_GATEWAY_TEST_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/moto_server"));
    assert!(
        path.exists(),
        "moto_server not found at {}: run `scripts/test` (it creates .venv with the pinned moto[server]), \
         or set ECR_GATEWAY_TEST_MOTO",
        path.display()
    );
    path
}

/// Picks a free port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A moto server process; killed on drop.
pub(crate) struct Moto {
    /// Its base URL.
    pub endpoint: String,
    child: Child,
}

impl Moto {
    /// Starts a dedicated moto (for tests that stop it or need a clean state).
    pub(crate) fn start() -> Moto {
        init();
        let port = free_port();
        let mut command = Command::new(moto_binary());
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill moto
        // when the thread that started it ends, so no server outlives the tests.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("spawning moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { endpoint, child }
    }

    /// The moto shared by the tests of this binary. Started from a thread that
    /// lives as long as the process; tests keep their names apart.
    pub(crate) fn shared() -> &'static str {
        static SHARED: OnceLock<String> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Started from a thread that never ends, so the death signal set in
            // `start` fires only when the test process itself exits.
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let moto = Moto::start();
                let _ = sender.send(moto.endpoint.clone());
                loop {
                    std::thread::park();
                }
            });
            receiver.recv().expect("shared moto started")
        })
    }

    /// Stops the server (simulates ECR going away).
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A database of its own for one test; dropped at the end.
pub(crate) struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database (the gateway migrates it at start).
    pub(crate) async fn create() -> TestDb {
        init();
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("ecrgw_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot reach Postgres at {admin_url} ({e}): start it, or set DATABASE_URL; scripts/test does both")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("DATABASE_URL {admin_url} has no database part"),
        };
        TestDb { url, name, admin_url }
    }

    /// A pool on the test database (for assertions).
    pub(crate) async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("connect test db")
    }

    /// A pool on this database, migrated, and the store over it.
    pub(crate) async fn migrated(&self) -> (sqlx::PgPool, ecr_gateway::store::Store) {
        let pool = self.pool().await;
        let store = ecr_gateway::store::Store::from_pool(pool.clone());
        store.migrate().await.expect("migrate");
        (pool, store)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// The demo-like org policy the tests run under.
pub(crate) const POLICY: &str = r#"
[policy.naming]
namespaces = ["payments", "search"]
max_depth = 3
reserved = ["aws", "admin"]

[policy.tags]
required = ["team", "cost-center"]
[policy.tags.defaults]
managed-by = "ecr-gateway"
[policy.tags.allowed]
team = { values = ["payments", "search"] }
cost-center = { pattern = "^cc-[0-9]{4}$" }

[policy.settings]
allowed_tag_mutability = ["IMMUTABLE", "IMMUTABLE_WITH_EXCLUSION"]
default_tag_mutability = "IMMUTABLE"
allowed_exclusion_filters = ["latest", "dev-*"]
require_scan_on_push = true

[policy.settings.encryption]
type = "AES256"

[policy.settings.lifecycle_templates]
default = '''{"rules":[{"rulePriority":1,"description":"expire untagged images after 14 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}'''

[policy.repository_policy]
forbid_wildcard_principal = true
allowed_accounts = ["210987654321"]
"#;

/// A configuration for a gateway on `db` with the main registry at `endpoint`.
pub(crate) fn config(db: &TestDb, endpoint: &str, extra: &str) -> Config {
    Config::from_toml(&config_text(db, endpoint, extra)).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The TOML text of [`config`] (for a gateway run as its own process).
pub(crate) fn config_text(db: &TestDb, endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_seconds = 5
request_timeout_seconds = 20

[database]
url = "{url}"
max_connections = 5
acquire_timeout_seconds = 2

[auth]
mode = "insecure-dev"

[authz]
policies = "{root}/deploy/policies"
entities = "{root}/tests/fixtures/authz-entities.json"

[sync]
interval_seconds = 0
backstop_interval_seconds = 0

[[registries]]
alias = "main"
account_id = "{ACCOUNT}"
region = "{REGION}"
endpoint_url = "{endpoint}"
attempt_timeout_seconds = 3
operation_timeout_seconds = 8
max_attempts = 2

{extra}
{POLICY}
"#,
        url = db.url,
        root = repo_root().display(),
    )
}

/// A gateway running in this test's runtime.
pub(crate) struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A channel to it.
    pub channel: Channel,
    /// Where its admin endpoints listen, when the config has `[admin] listen`
    /// (port 0 gets a free port).
    pub admin: Option<SocketAddr>,
    server: ServerTask,
}

impl Gateway {
    /// Starts the real server on port 0 and connects to it.
    pub(crate) async fn start(config: Config) -> Gateway {
        let (server, addr, admin) = ServerTask::spawn(config).await;
        let channel = connect(addr).await;
        Gateway {
            addr,
            channel,
            admin,
            server,
        }
    }

    /// A RepositoryService client.
    pub(crate) fn repositories(&self) -> RepositoryServiceClient<Channel> {
        RepositoryServiceClient::new(self.channel.clone())
    }

    /// Stops the server and waits until it has drained.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await
    }
}

/// The real server running in this test's runtime, on 127.0.0.1 port 0 (and
/// `[admin] listen` when set); told to shut down when stopped or dropped.
pub(crate) struct ServerTask {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl ServerTask {
    /// Binds, spawns `server::run_with_admin`, and returns the task with the
    /// gRPC address and the admin address.
    pub(crate) async fn spawn(config: Config) -> (ServerTask, SocketAddr, Option<SocketAddr>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin_listener = ecr_gateway::server::bind_admin(&config)
            .await
            .expect("bind admin");
        let admin = admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("admin addr"));
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(ecr_gateway::server::run_with_admin(
            config,
            listener,
            admin_listener,
            async move {
                let _ = signal.await;
            },
        ));
        let server = ServerTask {
            shutdown: Some(shutdown),
            task: Some(task),
        };
        (server, addr, admin)
    }

    /// Stops the server and waits until it has drained.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            Ok(channel) => return channel,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "gateway did not come up at {addr}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Adds the insecure-dev identity headers to a request.
pub(crate) fn as_user<T>(message: T, principal: &str, groups: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-ecr-gateway-principal", principal.parse().expect("principal"));
    request
        .metadata_mut()
        .insert("x-ecr-gateway-groups", groups.parse().expect("groups"));
    request
}

/// The tests' own ECR client (never the gateway's) against `endpoint`.
pub(crate) async fn ecr_client(endpoint: &str) -> aws_sdk_ecr::Client {
    init();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_ecr::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_ecr::Client::new(&config)
}

/// The tests' own ECR client acting in another account through an assumed role (moto maps the role's account).
pub(crate) async fn ecr_client_assuming(endpoint: &str, role_arn: &str) -> aws_sdk_ecr::Client {
    init();
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_ecr::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await;
    let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
        .session_name("ecr-gateway-tests")
        .configure(&base)
        .build()
        .await;
    let config = aws_sdk_ecr::config::Builder::from(&base)
        .credentials_provider(provider)
        .build();
    aws_sdk_ecr::Client::from_conf(config)
}

/// A name no other test uses: `<namespace>/<stem>-<random>`.
pub(crate) fn unique(namespace: &str, stem: &str) -> String {
    format!(
        "{namespace}/{stem}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Waits (up to 10 s) until the audit table holds `expected` rows matching `filter` (SQL after WHERE).
pub(crate) async fn wait_for_audit_rows(pool: &sqlx::PgPool, filter: &str, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM audit_events WHERE {filter}"
        )))
        .fetch_one(pool)
        .await
        .expect("count audit rows");
        if count >= expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seeds the findings moto returns for one image (its `/moto-api` endpoint):
/// the next DescribeImageScanFindings by that digest answers with them.
pub(crate) async fn seed_scan_findings(
    endpoint: &str,
    repository: &str,
    digest: &str,
    findings: &[(&str, &str)],
) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for (_, severity) in findings {
        *counts.entry(severity).or_default() += 1;
    }
    let result = serde_json::json!({
        "registryId": ACCOUNT,
        "repositoryName": repository,
        "imageId": {"imageDigest": digest},
        "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed successfully."},
        "imageScanFindings": {
            "imageScanCompletedAt": chrono::Utc::now().timestamp(),
            "vulnerabilitySourceUpdatedAt": chrono::Utc::now().timestamp(),
            "findingSeverityCounts": counts,
            "findings": findings.iter().map(|(name, severity)| serde_json::json!({
                "name": name,
                "severity": severity,
                "description": format!("{name} in libexample"),
                "uri": format!("https://nvd.nist.gov/vuln/detail/{name}"),
                "attributes": [
                    {"key": "package_name", "value": "libexample"},
                    {"key": "package_version", "value": "1.2.3"},
                    {"key": "CVSS3_SCORE", "value": "9.8"},
                ],
            })).collect::<Vec<_>>(),
        },
    });
    let body = serde_json::json!({"region": REGION, "account_id": ACCOUNT, "results": [result]});
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(format!("{endpoint}/moto-api/static/ecr/scan-finding-results"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let response = client.request(request).await.expect("seed findings");
    let status = response.status();
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    assert!(
        status.is_success(),
        "moto refused the findings seed: {status} {text:?}"
    );
}

/// The `BadRequest` field violations of an error: (field, reason).
pub(crate) fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.reason))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource tags the tests' org policy requires.
pub(crate) fn team_tags() -> std::collections::BTreeMap<String, String> {
    [("team", "payments"), ("cost-center", "cc-1001")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A CreateRepository request that meets the org policy with its defaults.
pub(crate) fn tagged_repository(name: &str) -> ecr_gateway::pb::CreateRepositoryRequest {
    ecr_gateway::pb::CreateRepositoryRequest {
        repository: name.into(),
        settings: Some(ecr_gateway::pb::RepositorySettings {
            tags: team_tags(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The digests ECR holds in `repository`, through the tests' own client.
pub(crate) async fn digests_in_ecr(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
) -> std::collections::BTreeSet<String> {
    ecr.describe_images()
        .repository_name(repository)
        .send()
        .await
        .expect("describe")
        .image_details()
        .iter()
        .filter_map(|d| d.image_digest().map(str::to_owned))
        .collect()
}

/// A cleanup run as GetCleanupRun answers it (without items), asked as `principal` of `groups`.
pub(crate) async fn cleanup_run(
    channel: &Channel,
    id: &str,
    principal: &str,
    groups: &str,
) -> ecr_gateway::pb::CleanupRun {
    ecr_gateway::pb::cleanup_service_client::CleanupServiceClient::new(channel.clone())
        .get_cleanup_run(as_user(
            ecr_gateway::pb::GetCleanupRunRequest {
                id: id.into(),
                page_size: 1,
                ..Default::default()
            },
            principal,
            groups,
        ))
        .await
        .expect("get cleanup run")
        .into_inner()
        .run
        .expect("the answer carries the run")
}

/// Waits up to `timeout` until cleanup run `id` is in `state`, and returns it;
/// panics (with the run) when it ends in another state or takes too long.
pub(crate) async fn wait_for_run_state(
    channel: &Channel,
    id: &str,
    (principal, groups): (&str, &str),
    state: ecr_gateway::pb::CleanupRunState,
    timeout: Duration,
) -> ecr_gateway::pb::CleanupRun {
    use ecr_gateway::pb::CleanupRunState;
    let deadline = Instant::now() + timeout;
    loop {
        let run = cleanup_run(channel, id, principal, groups).await;
        if run.state == state as i32 {
            return run;
        }
        let ended = [
            CleanupRunState::Succeeded,
            CleanupRunState::Failed,
            CleanupRunState::Cancelled,
        ]
        .iter()
        .any(|s| *s as i32 == run.state);
        assert!(!ended, "run {id} ended before reaching {state:?}: {run:?}");
        assert!(
            Instant::now() < deadline,
            "run {id} is not {state:?} after {timeout:?}: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
