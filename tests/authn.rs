//! Authentication against the real server: OIDC bearer tokens (RS256 and
//! ES256, keys from a JWKS file and from a JWKS URL served by the test, key
//! rotation, every refusal with its reason) and mTLS (a test CA's client
//! certificates over a real TLS connection). The audit row of a call records
//! the identity that was established.

#[path = "common/authn.rs"]
mod authn_support;
mod common;

use std::time::Duration;

use authn_support::{
    AUDIENCE, ISSUER, JwksServer, SigningKey, TestCa, TlsGateway, claims, config_with_auth, jwks,
    oidc_section, with, with_token, write,
};
use common::{Gateway, Moto, TestDb, wait_for_audit_rows};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

fn sync_status() -> pb::GetSyncStatusRequest {
    pb::GetSyncStatusRequest {
        registry: "main".into(),
        ..Default::default()
    }
}

/// Calls GetSyncStatus with `token`; the status's message when refused.
async fn call_with_token(channel: &Channel, token: &str) -> Result<(), String> {
    match ImageServiceClient::new(channel.clone())
        .get_sync_status(with_token(sync_status(), token))
        .await
    {
        Ok(_) => Ok(()),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            Err(status.message().to_owned())
        }
    }
}

/// Principal, type, groups and method of the audit rows of GetSyncStatus by `principal`.
async fn audited_identity(db: &TestDb, principal: &str) -> (String, String, Vec<String>, String) {
    let pool = db.pool().await;
    let filter = format!("event_name = 'GetSyncStatus' AND principal = '{principal}'");
    assert_eq!(
        wait_for_audit_rows(&pool, &filter, 1).await,
        1,
        "{principal} audited once"
    );
    sqlx::query_as(
        "SELECT principal, principal_type, groups, auth_method FROM audit_events \
         WHERE event_name = 'GetSyncStatus' AND principal = $1",
    )
    .bind(principal)
    .fetch_one(&pool)
    .await
    .expect("audit row")
}

fn oidc_auth(source: &str) -> String {
    format!("[auth]\nmodes = [\"oidc\"]\n{}", oidc_section(source))
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_and_es256_tokens_from_a_jwks_file_identify_the_caller_in_the_audit_trail() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (rsa, ec) = (SigningKey::rs256("rsa-1"), SigningKey::es256("ec-1"));
    let file = write(dir.path(), "jwks.json", &jwks(&[&rsa, &ec]).to_string());
    let auth = oidc_auth(&format!("jwks_file = \"{}\"", file.display()));
    let gateway = Gateway::start(config_with_auth(&db, Moto::shared(), &auth, "")).await;

    let user = rsa.mint(&claims("alice@example.com", &["payments", "search"]));
    let service = ec.mint(&claims("svc:deployer", &["deploy"]));

    assert_eq!(call_with_token(&gateway.channel, &user).await, Ok(()));
    assert_eq!(call_with_token(&gateway.channel, &service).await, Ok(()));
    assert_eq!(
        audited_identity(&db, "alice@example.com").await,
        (
            "alice@example.com".into(),
            "User".into(),
            vec!["payments".into(), "search".into()],
            "oidc".into()
        )
    );
    assert_eq!(
        audited_identity(&db, "svc:deployer").await,
        (
            "svc:deployer".into(),
            "Service".into(),
            vec!["deploy".into()],
            "oidc".into()
        )
    );
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_unauthenticated_with_its_reason() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = SigningKey::es256("ec-1");
    let file = write(dir.path(), "jwks.json", &jwks(&[&key]).to_string());
    let auth = oidc_auth(&format!("jwks_file = \"{}\"", file.display()));
    let gateway = Gateway::start(config_with_auth(&db, Moto::shared(), &auth, "")).await;
    let now = chrono::Utc::now().timestamp();
    let good = claims("mallory@example.com", &[]);
    let b64 = |value: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };

    let cases = [
        (
            "forged",
            SigningKey::es256("ec-1").mint(&good),
            "bad signature".to_string(),
        ),
        (
            "expired",
            key.mint(&with(good.clone(), "exp", json!(now - 3600))),
            "bearer token expired".into(),
        ),
        (
            "not yet valid",
            key.mint(&with(good.clone(), "nbf", json!(now + 3600))),
            "bearer token not yet valid (nbf is in the future)".into(),
        ),
        (
            "wrong issuer",
            key.mint(&with(good.clone(), "iss", json!("https://evil.example.com/"))),
            format!("issuer is not {ISSUER}"),
        ),
        (
            "wrong audience",
            key.mint(&with(good.clone(), "aud", json!("someone-else"))),
            format!("audience is not one of {AUDIENCE}"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": "ec-1"})),
                b64(good.clone())
            ),
            "algorithm none not allowed".into(),
        ),
        (
            "unknown kid",
            key.mint_as("ec-9", &good),
            "signed with unknown key id".into(),
        ),
        (
            "malformed",
            "not-a-jwt".into(),
            "malformed token (expected a JWT: three base64url parts joined by dots)".into(),
        ),
    ];
    for (what, token, reason) in cases {
        assert_eq!(
            call_with_token(&gateway.channel, &token).await,
            Err(reason),
            "{what}"
        );
    }

    let oversized = "a".repeat(17 * 1024);
    let refused = call_with_token(&gateway.channel, &oversized)
        .await
        .expect_err("oversized");
    assert!(refused.contains("at most 16384"), "{refused}");

    let anonymous = ImageServiceClient::new(gateway.channel.clone())
        .get_sync_status(sync_status())
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert!(
        anonymous.message().contains("bearer token"),
        "{}",
        anonymous.message()
    );

    let pool = db.pool().await;
    let refused_rows =
        wait_for_audit_rows(&pool, "event_name = 'GetSyncStatus' AND status = 'failed'", 10).await;
    assert_eq!(refused_rows, 10, "every refused call is audited as anonymous");
    gateway.stop().await.expect("clean stop");
}

/// GetSyncStatus with every `(name, value)` entry appended as metadata, in order.
async fn call_with_entries(channel: &Channel, entries: &[(&'static str, &str)]) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(sync_status());
    for (name, value) in entries {
        request
            .metadata_mut()
            .append(*name, value.parse().expect("metadata value"));
    }
    ImageServiceClient::new(channel.clone())
        .get_sync_status(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_authorization_entries_are_unauthenticated_even_when_both_tokens_are_valid() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = SigningKey::es256("ec-1");
    let file = write(dir.path(), "jwks.json", &jwks(&[&key]).to_string());
    let auth = oidc_auth(&format!("jwks_file = \"{}\"", file.display()));
    let gateway = Gateway::start(config_with_auth(&db, Moto::shared(), &auth, "")).await;
    let alice = format!("Bearer {}", key.mint(&claims("alice@example.com", &["payments"])));
    let admin = format!(
        "Bearer {}",
        key.mint(&claims("root@example.com", &["platform-admins"]))
    );

    let refused = call_with_entries(
        &gateway.channel,
        &[("authorization", &alice), ("authorization", &admin)],
    )
    .await
    .expect_err("two authorization entries");
    let single = call_with_entries(&gateway.channel, &[("authorization", &alice)]).await;

    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("`authorization` metadata appears 2 times: send it once"),
        "{}",
        refused.message()
    );
    single.expect("one entry of the same token is accepted");
    let pool = db.pool().await;
    assert_eq!(
        wait_for_audit_rows(
            &pool,
            "event_name = 'GetSyncStatus' AND status = 'failed' AND principal = 'anonymous'",
            1
        )
        .await,
        1,
        "the refused call is audited as anonymous"
    );
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_authorization_or_insecure_dev_headers_are_unauthenticated_in_insecure_dev_mode() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(common::config(&db, Moto::shared(), "")).await;
    let principal = ecr_gateway::auth::PRINCIPAL_HEADER;
    let groups = ecr_gateway::auth::GROUPS_HEADER;
    let cases: [(&str, Vec<(&'static str, &str)>); 3] = [
        (
            principal,
            vec![(principal, "alice@example.com"), (principal, "root@example.com")],
        ),
        (
            groups,
            vec![
                (principal, "alice@example.com"),
                (groups, "payments"),
                (groups, "platform-admins"),
            ],
        ),
        (
            "authorization",
            vec![
                (principal, "alice@example.com"),
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b"),
            ],
        ),
    ];

    for (header, entries) in cases {
        let refused = call_with_entries(&gateway.channel, &entries)
            .await
            .expect_err("a repeated identity header");
        assert_eq!(refused.code(), Code::Unauthenticated, "{header}: {refused:?}");
        assert!(
            refused
                .message()
                .starts_with(&format!("`{header}` metadata appears 2 times")),
            "{header}: {}",
            refused.message()
        );
    }
    call_with_entries(
        &gateway.channel,
        &[(principal, "alice@example.com"), (groups, "payments")],
    )
    .await
    .expect("each header once is accepted");
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_url_is_fetched_and_a_token_with_a_new_kid_makes_the_gateway_refetch() {
    let db = TestDb::create().await;
    let (old, new) = (SigningKey::rs256("2026-01"), SigningKey::es256("2026-02"));
    let server = JwksServer::start(&jwks(&[&old])).await;
    let auth = oidc_auth(&format!("jwks_url = \"{}\"", server.url));
    let gateway = Gateway::start(config_with_auth(&db, Moto::shared(), &auth, "")).await;

    assert_eq!(
        call_with_token(&gateway.channel, &old.mint(&claims("a@example.com", &[]))).await,
        Ok(())
    );
    assert_eq!(
        server.hits(),
        1,
        "fetched once at start; a known kid needs no fetch"
    );

    // The issuer rotates: the new key is published, tokens start naming it.
    server.set(&jwks(&[&old, &new]));
    tokio::time::sleep(Duration::from_millis(1100)).await; // past jwks_min_refresh_interval_seconds
    assert_eq!(
        call_with_token(&gateway.channel, &new.mint(&claims("b@example.com", &[]))).await,
        Ok(())
    );
    assert_eq!(server.hits(), 2, "the unknown kid made the gateway refetch");

    // Unknown kids do not make the gateway fetch more than once per interval.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(
            call_with_token(
                &gateway.channel,
                &new.mint_as("nobody", &claims("c@example.com", &[]))
            )
            .await,
            Err("signed with unknown key id".into())
        );
    }
    assert_eq!(server.hits(), 3, "five unknown-kid tokens, one fetch");
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_jwks_url_at_start_refuses_tokens_saying_why_until_it_answers() {
    let db = TestDb::create().await;
    let key = SigningKey::es256("k1");
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let auth = oidc_auth(&format!("jwks_url = \"{url}\""));
    let gateway = Gateway::start(config_with_auth(&db, Moto::shared(), &auth, "")).await;
    let token = key.mint(&claims("early@example.com", &[]));

    let refused = call_with_token(&gateway.channel, &token)
        .await
        .expect_err("no keys yet");
    assert!(
        refused.contains("signing keys are not available yet"),
        "{refused}"
    );
    assert!(refused.contains(&url), "{refused}");
    assert!(!refused.contains(&token), "the token is echoed: {refused}");

    let _server = JwksServer::start_on(port, &jwks(&[&key])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call_with_token(&gateway.channel, &token).await, Ok(()));
    gateway.stop().await.expect("clean stop");
}

/// `[server.tls]` with a certificate from `server_ca`, and `auth`.
fn tls_config(
    db: &TestDb,
    dir: &std::path::Path,
    server_ca: &TestCa,
    auth: &str,
) -> ecr_gateway::config::Config {
    let server = server_ca.server();
    let cert = write(dir, "server.pem", &server.cert_pem);
    let key = write(dir, "server.key", &server.key_pem);
    let tls = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    config_with_auth(db, Moto::shared(), auth, &tls)
}

fn mtls_auth(dir: &std::path::Path, client_ca: &TestCa, modes: &str, more: &str) -> String {
    let ca_file = write(dir, "client-ca.pem", &client_ca.cert_pem);
    format!(
        "[auth]\nmodes = {modes}\n[auth.mtls]\nca_file = \"{}\"\ntrust_domains = [\"prod.test.example\"]\n{more}",
        ca_file.display()
    )
}

async fn call_over(channel: &Channel) -> Result<(), tonic::Status> {
    ImageServiceClient::new(channel.clone())
        .get_sync_status(sync_status())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_from_the_ca_identifies_the_caller_by_its_spiffe_id() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca) = (TestCa::new("server CA"), TestCa::new("client CA"));
    let auth = mtls_auth(dir.path(), &client_ca, "[\"mtls\"]", "");
    let gateway = TlsGateway::start(tls_config(&db, dir.path(), &server_ca, &auth)).await;
    let spiffe_id = "spiffe://prod.test.example/ns/deploy/sa/pipeline";
    let client = client_ca.client("pipeline", Some(spiffe_id));

    call_over(&gateway.channel(&server_ca, Some(&client)).await)
        .await
        .expect("a certificate from the CA is accepted");

    assert_eq!(
        audited_identity(&db, spiffe_id).await,
        (spiffe_id.into(), "Service".into(), Vec::new(), "mtls".into())
    );
    let pool = db.pool().await;
    let source_ip: Option<String> =
        sqlx::query_scalar("SELECT source_ip FROM audit_events WHERE principal = $1")
            .bind(spiffe_id)
            .fetch_one(&pool)
            .await
            .expect("source ip");
    assert_eq!(
        source_ip.as_deref(),
        Some("127.0.0.1"),
        "remote_addr works over TLS"
    );

    let outsider = client_ca.client("outsider", Some("spiffe://evil.test.example/x"));
    let refused = call_over(&gateway.channel(&server_ca, Some(&outsider)).await)
        .await
        .expect_err("foreign trust domain");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("evil.test.example"),
        "{}",
        refused.message()
    );
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_from_another_ca_is_unauthenticated_not_a_handshake_failure() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca, other_ca) = (
        TestCa::new("server CA"),
        TestCa::new("client CA"),
        TestCa::new("someone else's CA"),
    );
    let auth = mtls_auth(dir.path(), &client_ca, "[\"mtls\"]", "");
    let gateway = TlsGateway::start(tls_config(&db, dir.path(), &server_ca, &auth)).await;
    let stranger = other_ca.client("stranger", Some("spiffe://prod.test.example/stranger"));

    let refused = call_over(&gateway.channel(&server_ca, Some(&stranger)).await)
        .await
        .expect_err("another CA");

    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "client certificate is not signed by a CA in auth.mtls.ca_file"
    );
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_client_certificate_while_only_mtls_is_configured_is_unauthenticated() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca) = (TestCa::new("server CA"), TestCa::new("client CA"));
    let auth = mtls_auth(dir.path(), &client_ca, "[\"mtls\"]", "");
    let gateway = TlsGateway::start(tls_config(&db, dir.path(), &server_ca, &auth)).await;

    let refused = call_over(&gateway.channel(&server_ca, None).await)
        .await
        .expect_err("no certificate");

    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "no credentials: this gateway accepts a client certificate over TLS (mtls)"
    );
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_oidc_and_mtls_a_bearer_token_is_judged_by_oidc_alone() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca) = (TestCa::new("server CA"), TestCa::new("client CA"));
    let key = SigningKey::es256("k1");
    let jwks_file = write(dir.path(), "jwks.json", &jwks(&[&key]).to_string());
    let oidc = oidc_section(&format!("jwks_file = \"{}\"", jwks_file.display()));
    let auth = mtls_auth(dir.path(), &client_ca, "[\"oidc\", \"mtls\"]", &oidc);
    let gateway = TlsGateway::start(tls_config(&db, dir.path(), &server_ca, &auth)).await;
    let client = client_ca.client("pipeline", Some("spiffe://prod.test.example/pipeline"));
    let channel = gateway.channel(&server_ca, Some(&client)).await;

    // A valid certificate does not rescue a bad token.
    let expired = key.mint(&with(
        claims("carol@example.com", &[]),
        "exp",
        json!(chrono::Utc::now().timestamp() - 3600),
    ));
    assert_eq!(
        call_with_token(&channel, &expired).await,
        Err("bearer token expired".into())
    );
    // A good token over the same connection is the caller.
    assert_eq!(
        call_with_token(&channel, &key.mint(&claims("carol@example.com", &["search"]))).await,
        Ok(())
    );
    assert_eq!(audited_identity(&db, "carol@example.com").await.3, "oidc");
    // Without a token, the certificate is.
    call_over(&channel).await.expect("certificate");
    assert_eq!(
        audited_identity(&db, "spiffe://prod.test.example/pipeline")
            .await
            .3,
        "mtls"
    );
    gateway.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_stalled_in_the_tls_handshake_do_not_hold_up_others() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca) = (TestCa::new("server CA"), TestCa::new("client CA"));
    let auth = mtls_auth(dir.path(), &client_ca, "[\"mtls\"]", "");
    let gateway = TlsGateway::start(tls_config(&db, dir.path(), &server_ca, &auth)).await;
    let client = client_ca.client("pipeline", Some("spiffe://prod.test.example/pipeline"));
    call_over(&gateway.channel(&server_ca, Some(&client)).await)
        .await
        .expect("the gateway serves");

    // Connections that never send a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        stalled.push(
            tokio::net::TcpStream::connect(gateway.addr)
                .await
                .expect("connect"),
        );
    }
    let started = std::time::Instant::now();
    call_over(&gateway.channel(&server_ca, Some(&client)).await)
        .await
        .expect("a new client is served meanwhile");

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a new connection waited {:?} behind stalled handshakes",
        started.elapsed()
    );
    drop(stalled);
    gateway.stop().await.expect("clean stop");
}
