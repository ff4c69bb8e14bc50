//! RegistryAccessService.GetRegistryCredentials against moto through the
//! tests' recording proxy: STS AssumeRole and ECR GetAuthorizationToken are
//! real calls. moto enforces no session policy, so the tests read the requests
//! the gateway sends: AssumeRole must carry exactly the scope's session policy,
//! and GetAuthorizationToken must be signed with the assumed session's key.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::proxy::FaultProxy;
use common::{Gateway, Moto, TestDb, as_user, config, config_text, free_port};
use ecr_gateway::pb;
use ecr_gateway::pb::registry_access_service_client::RegistryAccessServiceClient;
use ecr_gateway::policy::credentials::{Access, CredentialScope, session_policy};
use tonic::Code;

const ROLE: &str = "arn:aws:iam::123456789012:role/ecr-gateway-credentials";

/// The main registry's credentials role (these lines land in its `[[registries]]` table) and `[access]`.
fn access_config(extra: &str) -> String {
    format!("credentials_role_arn = \"{ROLE}\"\n\n[access]\nenabled = true\n{extra}\n")
}

fn request(
    repositories: &[&str],
    prefixes: &[&str],
    access: pb::RegistryAccess,
) -> pb::GetRegistryCredentialsRequest {
    pb::GetRegistryCredentialsRequest {
        registry: String::new(),
        repositories: repositories.iter().map(|s| s.to_string()).collect(),
        repository_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        access: access as i32,
        duration: None,
    }
}

fn scope(repositories: &[&str], prefixes: &[&str], seconds: u64) -> CredentialScope {
    CredentialScope {
        repositories: repositories
            .iter()
            .map(|r| ecr_gateway::domain::RepositoryName::parse(r).expect("name"))
            .collect(),
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        duration: Duration::from_secs(seconds),
    }
}

async fn start(extra: &str) -> (TestDb, FaultProxy, Gateway) {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(Moto::shared()).await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, &access_config(extra))).await;
    (db, proxy, gateway)
}

fn client(gateway: &Gateway) -> RegistryAccessServiceClient<tonic::transport::Channel> {
    RegistryAccessServiceClient::new(gateway.channel.clone())
}

fn assume_role_calls(proxy: &FaultProxy) -> Vec<common::proxy::RecordedRequest> {
    proxy
        .recorded()
        .into_iter()
        .filter(|r| r.action == "AssumeRole")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_credential_assumes_the_role_with_exactly_the_scope_and_logs_in_as_the_session() {
    let (_db, proxy, gateway) = start("").await;

    let answer = client(&gateway)
        .get_registry_credentials(as_user(
            request(&["payments/api"], &["payments/batch-"], pb::RegistryAccess::Push),
            "alice@example.com",
            "payments",
        ))
        .await
        .expect("credentials")
        .into_inner();

    assert_eq!(answer.username, "AWS");
    assert_eq!(
        answer.password, "123456789012-auth-token",
        "moto's token, decoded"
    );
    assert_eq!(
        answer.proxy_endpoint,
        "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
    );
    assert_eq!(answer.repositories, ["payments/api"]);
    assert_eq!(answer.repository_prefixes, ["payments/batch-"]);
    assert_eq!(answer.access, pb::RegistryAccess::Push as i32);
    assert!(!answer.cached);
    let expires = answer.expire_time.expect("expire_time").seconds;
    let in_an_hour = chrono::Utc::now().timestamp() + 3600;
    assert!(
        (in_an_hour - 60..=in_an_hour + 5).contains(&expires),
        "the session's end: {expires}"
    );

    let assumed = assume_role_calls(&proxy);
    assert_eq!(assumed.len(), 1, "one AssumeRole");
    let call = &assumed[0];
    assert_eq!(call.form("RoleArn").as_deref(), Some(ROLE));
    assert_eq!(call.form("RoleSessionName").as_deref(), Some("alice@example.com"));
    assert_eq!(call.form("SourceIdentity").as_deref(), Some("alice@example.com"));
    assert_eq!(call.form("DurationSeconds").as_deref(), Some("3600"));
    let expected_policy = session_policy(
        "123456789012",
        "us-east-1",
        &scope(&["payments/api"], &["payments/batch-"], 3600),
        Access::Push,
    );
    assert_eq!(call.form("Policy"), Some(expected_policy));
    assert_eq!(
        call.access_key(),
        Some("testing"),
        "the gateway's own key assumes the role"
    );

    let recorded = proxy.recorded();
    let login = recorded
        .iter()
        .find(|r| r.action == "GetAuthorizationToken")
        .expect("a GetAuthorizationToken call");
    let key = login.access_key().expect("signed");
    assert_ne!(
        key, "testing",
        "signed with the assumed session's key, not the gateway's"
    );
    assert!(key.starts_with("ASIA"), "a temporary (session) key: {key}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_credential_allows_only_the_pull_actions_and_a_deployer_may_get_one() {
    let (_db, proxy, gateway) = start("").await;

    let answer = client(&gateway)
        .get_registry_credentials(as_user(
            request(&[], &["payments/"], pb::RegistryAccess::Unspecified),
            "deploy-bot",
            "deployers",
        ))
        .await
        .expect("pull credentials")
        .into_inner();

    assert_eq!(
        answer.access,
        pb::RegistryAccess::Pull as i32,
        "unspecified is pull"
    );
    let policy: serde_json::Value =
        serde_json::from_str(&assume_role_calls(&proxy)[0].form("Policy").expect("policy")).expect("json");
    assert_eq!(
        policy["Statement"][1]["Action"],
        serde_json::json!([
            "ecr:BatchGetImage",
            "ecr:GetDownloadUrlForLayer",
            "ecr:BatchCheckLayerAvailability"
        ])
    );
    assert_eq!(
        policy["Statement"][1]["Resource"],
        serde_json::json!(["arn:aws:ecr:us-east-1:123456789012:repository/payments/*"])
    );
    assert_eq!(
        assume_role_calls(&proxy)[0].form("RoleSessionName").as_deref(),
        Some("deploy-bot")
    );

    // A deployer may not push.
    let refused = client(&gateway)
        .get_registry_credentials(as_user(
            request(&[], &["payments/"], pb::RegistryAccess::Push),
            "deploy-bot",
            "deployers",
        ))
        .await
        .expect_err("no push for deployers");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("PushImages"), "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_request_is_answered_from_the_cache_and_another_one_is_not() {
    let (_db, proxy, gateway) = start("").await;
    let ask = |access| {
        as_user(
            request(&["payments/api"], &[], access),
            "alice@example.com",
            "payments",
        )
    };

    let first = client(&gateway)
        .get_registry_credentials(ask(pb::RegistryAccess::Pull))
        .await
        .expect("first")
        .into_inner();
    let second = client(&gateway)
        .get_registry_credentials(ask(pb::RegistryAccess::Pull))
        .await
        .expect("second")
        .into_inner();
    assert!(!first.cached && second.cached);
    assert_eq!(first.expire_time, second.expire_time);
    assert_eq!(
        assume_role_calls(&proxy).len(),
        1,
        "the second answer made no STS call"
    );

    let push = client(&gateway)
        .get_registry_credentials(ask(pb::RegistryAccess::Push))
        .await
        .expect("push")
        .into_inner();
    assert!(!push.cached);
    let other_caller = client(&gateway)
        .get_registry_credentials(as_user(
            request(&["payments/api"], &[], pb::RegistryAccess::Pull),
            "bob@example.com",
            "payments",
        ))
        .await
        .expect("bob")
        .into_inner();
    assert!(
        !other_caller.cached,
        "another caller never gets alice's credential"
    );
    assert_eq!(assume_role_calls(&proxy).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scope_with_anything_the_caller_may_not_use_is_refused_whole_before_sts() {
    let (_db, proxy, gateway) = start("").await;

    let refused = client(&gateway)
        .get_registry_credentials(as_user(
            request(
                &["payments/api", "search/indexer"],
                &["search/"],
                pb::RegistryAccess::Pull,
            ),
            "alice@example.com",
            "payments",
        ))
        .await
        .expect_err("search is not alice's");

    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("repository main/search/indexer"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("namespace main/search"),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains("payments/api"),
        "only what was refused: {}",
        refused.message()
    );
    assert!(
        assume_role_calls(&proxy).is_empty(),
        "no STS call for a refused request"
    );

    let anonymous = client(&gateway)
        .get_registry_credentials(tonic::Request::new(request(
            &["payments/api"],
            &[],
            pb::RegistryAccess::Pull,
        )))
        .await
        .expect_err("no identity");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_every_field_and_rule_and_call_nothing() {
    let (_db, proxy, gateway) = start("").await;
    let mut bad = request(
        &["Payments/API"],
        &["pay", "payments/*"],
        pb::RegistryAccess::Push,
    );
    bad.registry = "nope".into();
    bad.access = 7;
    bad.duration = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });

    let status = client(&gateway)
        .get_registry_credentials(as_user(bad, "alice@example.com", "payments"))
        .await
        .expect_err("invalid");

    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = common::violations(&status);
    let fields: Vec<&str> = violations.iter().map(|(field, _)| field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "registry",
            "access",
            "repositories[0]",
            "repository_prefixes[0]",
            "repository_prefixes[1]",
            "duration"
        ],
        "{violations:?}"
    );

    for (message, field) in [
        (request(&[], &[], pb::RegistryAccess::Pull), "repositories"),
        (
            pb::GetRegistryCredentialsRequest {
                duration: Some(prost_types::Duration {
                    seconds: 13 * 3600,
                    nanos: 0,
                }),
                ..request(&["payments/api"], &[], pb::RegistryAccess::Pull)
            },
            "duration",
        ),
        (
            request(&[], &["other/"], pb::RegistryAccess::Pull),
            "repository_prefixes[0]",
        ),
    ] {
        let status = client(&gateway)
            .get_registry_credentials(as_user(message, "alice@example.com", "payments"))
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(common::violations(&status)[0].0, field, "{}", status.message());
    }

    let many: Vec<String> = (0..40)
        .map(|i| format!("payments/service-number-{i:03}"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let status = client(&gateway)
        .get_registry_credentials(as_user(
            request(&many, &[], pb::RegistryAccess::Push),
            "alice@example.com",
            "payments",
        ))
        .await
        .expect_err("too large for STS");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("prefix"),
        "says to use a prefix: {}",
        status.message()
    );
    assert!(assume_role_calls(&proxy).is_empty(), "nothing reached STS");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_caller_is_held_to_its_credential_rate() {
    let (_db, _proxy, gateway) = start("per_caller_per_minute = 2").await;
    let ask = || {
        as_user(
            request(&["payments/api"], &[], pb::RegistryAccess::Pull),
            "alice@example.com",
            "payments",
        )
    };
    client(&gateway).get_registry_credentials(ask()).await.expect("1");
    client(&gateway).get_registry_credentials(ask()).await.expect("2");

    let limited = client(&gateway)
        .get_registry_credentials(ask())
        .await
        .expect_err("third within the minute");

    assert_eq!(limited.code(), Code::ResourceExhausted);
    let details = tonic_types::StatusExt::get_error_details(&limited);
    assert!(details.retry_info().is_some(), "RetryInfo says when");
    assert!(details.quota_failure().is_some(), "QuotaFailure names the caller");
    client(&gateway)
        .get_registry_credentials(as_user(
            request(&["payments/api"], &[], pb::RegistryAccess::Pull),
            "bob@example.com",
            "payments",
        ))
        .await
        .expect("another caller has its own rate");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_access_enabled_the_rpc_says_what_to_configure() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;

    let status = client(&gateway)
        .get_registry_credentials(as_user(
            request(&["payments/api"], &[], pb::RegistryAccess::Pull),
            "alice@example.com",
            "payments",
        ))
        .await
        .expect_err("off");

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("[access] enabled = false"),
        "{}",
        status.message()
    );
}

#[test]
fn access_enabled_without_a_credentials_role_refuses_to_start_naming_the_key() {
    let text = "[[registries]]\nalias = \"main\"\naccount_id = \"123456789012\"\nregion = \"us-east-1\"\n\n[access]\nenabled = true\n";
    let error = ecr_gateway::config::Config::from_toml(text).expect_err("refused");
    assert!(
        error.to_string().contains("registries[0].credentials_role_arn"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_reaches_no_log_audit_record_sink_or_metric() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(Moto::shared()).await;
    let dir = tempfile::tempdir().expect("dir");
    let jsonl = dir.path().join("audit.jsonl");
    let admin_port = free_port();
    let extra = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[audit]\njsonl = \"{}\"\n",
        access_config(""),
        jsonl.display()
    );
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let gateway = common::process::Process::start_with(
        &config_text(&db, &proxy.endpoint, &extra),
        &[
            ("RUST_LOG", "trace"),
            ("ECR_GATEWAY__TELEMETRY__LOG_FORMAT", "json"),
        ],
        Stdio::from(log),
    )
    .await;

    let mut access = RegistryAccessServiceClient::new(gateway.channel.clone());
    let mut passwords = Vec::new();
    for _ in 0..2 {
        let answer = access
            .get_registry_credentials(as_user(
                request(&["payments/api"], &[], pb::RegistryAccess::Push),
                "alice@example.com",
                "payments",
            ))
            .await
            .expect("credentials")
            .into_inner();
        passwords.push(answer.password);
    }
    let password = passwords[0].clone();
    assert!(!password.is_empty());
    let token = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"))
    };

    let pool = db.pool().await;
    common::wait_for_audit_rows(&pool, "event_name = 'GetRegistryCredentials'", 2).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM audit_events t")
        .fetch_all(&pool)
        .await
        .expect("audit rows");
    let metrics = reqwest_metrics(admin_port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    gateway.terminate(Duration::from_secs(15));
    let logs = std::fs::read_to_string(&log_path).expect("log");
    let sink = std::fs::read_to_string(&jsonl).unwrap_or_default();

    assert!(
        rows.iter().any(|r| r.contains("GetRegistryCredentials")),
        "the calls were audited"
    );
    assert!(
        rows.iter().any(|r| r.contains("expireTime")),
        "the audit event records the expiry"
    );
    assert!(sink.contains("GetRegistryCredentials"), "the sink shipped them");
    assert!(logs.len() > 1000, "trace logging was on");
    for (place, text) in [
        ("audit_events", rows.join("\n")),
        ("the JSONL sink", sink),
        ("/metrics", metrics),
        ("the log", logs),
    ] {
        for secret in [password.as_str(), token.as_str()] {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .map(|l| &l[..l.len().min(600)])
                .collect();
            assert!(
                lines.is_empty(),
                "a credential secret reached {place}: {lines:#?}"
            );
        }
    }
}

/// `/metrics` of the admin listener, by plain HTTP/1.1.
async fn reqwest_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("answer");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}
