//! gRPC-Web for browser portals (`[server.grpc_web]`), end to end: a real
//! connect-web client in Node against the running gateway, and the CORS
//! answers as a browser would get them over HTTP/1.1 (plaintext and TLS).

#[path = "common/authn.rs"]
mod authn_support;
mod common;
#[path = "common/web.rs"]
mod web_support;

use std::sync::Arc;

use authn_support::{TestCa, TlsGateway, write};
use bytes::Bytes;
use common::images::push;
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, team_tags, unique, wait_for_audit_rows};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use http::header::{self, HeaderMap};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use serde_json::{Value, json};
use web_support::{WebFrames, grpc_web_frame, http1_exchange, run_web_client};

/// The portal the tests' gateways allow.
const PORTAL: &str = "https://portal.example.com";
const LIST: &str = "/ecrgateway.v1.RepositoryService/ListRepositories";

/// gRPC-Web on, the portal allowed, and the admin listener for /metrics.
fn web_settings() -> String {
    format!(
        "[server.grpc_web]\nenabled = true\nallowed_origins = [\"{PORTAL}\", \"http://localhost:3000\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    )
}

async fn web_gateway(db: &TestDb) -> Gateway {
    Gateway::start(config(db, Moto::shared(), &web_settings())).await
}

/// A CORS preflight for a call from `origin`.
fn preflight(addr: std::net::SocketAddr, origin: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::options(format!("http://{addr}{LIST}"))
        .header(header::HOST, addr.to_string())
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,\
             x-ecr-gateway-principal,x-ecr-gateway-groups,traceparent",
        )
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// A gRPC-Web ListRepositories call as bob of payments, from `origin` if given.
fn web_list_call(authority: &str, scheme: &str, origin: Option<&str>) -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::post(format!("{scheme}://{authority}{LIST}"))
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("x-ecr-gateway-principal", "bob@example.com")
        .header("x-ecr-gateway-groups", "payments");
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request
        .body(Full::new(grpc_web_frame(&pb::ListRepositoriesRequest::default())))
        .expect("request")
}

async fn send(request: hyper::Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("the gateway answers");
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.expect("body").to_bytes())
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

/// A comma-separated header's entries, lowercased.
fn listed(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or_default().split(','))
        .map(|entry| entry.trim().to_ascii_lowercase())
        .collect()
}

async fn metrics(gateway: &Gateway) -> String {
    let admin = gateway.admin.expect("the config sets [admin] listen");
    let request = hyper::Request::get(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    String::from_utf8_lossy(&send(request).await.1).into_owned()
}

fn series(method: &str, code: &str) -> String {
    format!(
        "ecr_gateway_rpc_duration_seconds_count{{method=\"/ecrgateway.v1.{method}\",code=\"{code}\"}} 1\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_portal_calls_the_gateway_through_grpc_web_from_node_with_connect_web() {
    let db = TestDb::create().await;
    let gateway = web_gateway(&db).await;
    let existing = unique("payments", "web-existing");
    gateway
        .repositories()
        .create_repository(as_user(
            common::tagged_repository(&existing),
            "bob@example.com",
            "payments",
        ))
        .await
        .expect("create over plain gRPC");
    let ecr = ecr_client(Moto::shared()).await;
    let digest = push(&ecr, &existing, "v1", &format!("{existing}-v1")).await;
    ImageServiceClient::new(gateway.channel.clone())
        .refresh_inventory(as_user(
            pb::RefreshInventoryRequest {
                repository: existing.clone(),
                ..Default::default()
            },
            "bob@example.com",
            "payments",
        ))
        .await
        .expect("refresh");
    let created = unique("payments", "web-created");

    let result = run_web_client(&json!({
        "url": format!("http://{}", gateway.addr),
        "origin": PORTAL,
        "principal": "web-alice@example.com",
        "groups": "payments",
        "create": created,
        "tags": team_tags(),
        "prefix": "payments/",
        "resolve": format!("{existing}:v1"),
        "invalid": "payments/Not Valid",
    }))
    .await;

    assert_eq!(result["create"]["ok"], true, "{result:#}");
    assert_eq!(result["create"]["repository"], created.as_str(), "{result:#}");
    let in_ecr = ecr
        .describe_repositories()
        .repository_names(&created)
        .send()
        .await
        .expect("the repository the portal created is in ECR");
    assert_eq!(in_ecr.repositories().len(), 1);
    let names: Vec<&str> = result["list"]["repositories"]
        .as_array()
        .unwrap_or_else(|| panic!("a listing: {result:#}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        names.contains(&existing.as_str()) && names.contains(&created.as_str()),
        "{result:#}"
    );
    assert_eq!(result["resolve"]["digest"], digest.as_str(), "{result:#}");

    let invalid = &result["invalid"];
    assert_eq!(invalid["ok"], false, "{result:#}");
    assert_eq!(invalid["codeName"], "InvalidArgument", "{result:#}");
    assert_eq!(invalid["code"], 3, "{result:#}");
    assert!(
        invalid["message"]
            .as_str()
            .is_some_and(|m| m.contains("repository")),
        "{result:#}"
    );
    assert!(
        invalid["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t == "google.rpc.BadRequest")),
        "grpc-status-details-bin reaches the page: {result:#}"
    );
    assert_eq!(result["anonymous"]["codeName"], "Unauthenticated", "{result:#}");

    // The gRPC layers saw each call as the gRPC call it stands for.
    let pool = db.pool().await;
    let filter = format!(
        "event_name = 'CreateRepository' AND status = 'succeeded' AND principal = 'web-alice@example.com' \
         AND request_parameters->>'repositoryName' = '{created}'"
    );
    let audited = wait_for_audit_rows(&pool, &filter, 1).await;
    let metrics = metrics(&gateway).await;
    for expected in [
        series("RepositoryService/CreateRepository", "InvalidArgument"),
        series("ImageService/ResolveImage", "OK"),
        series("RepositoryService/ListRepositories", "Unauthenticated"),
    ] {
        assert!(metrics.contains(&expected), "{expected} in\n{metrics}");
    }
    assert_eq!(audited, 1, "the audit trail names the page's principal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_from_an_allowed_origin_gets_what_grpc_web_needs() {
    let db = TestDb::create().await;
    let gateway = web_gateway(&db).await;

    let (answer, _) = send(preflight(gateway.addr, PORTAL)).await;

    assert!(answer.status.is_success(), "{answer:?}");
    let headers = &answer.headers;
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PORTAL);
    assert!(listed(headers, header::ACCESS_CONTROL_ALLOW_METHODS).contains(&"post".into()));
    let allowed = listed(headers, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for needed in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
        "x-ecr-gateway-principal",
        "x-ecr-gateway-groups",
        "traceparent",
    ] {
        assert!(allowed.contains(&needed.to_owned()), "{needed} in {allowed:?}");
    }
    assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "600");
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_the_wildcard_origin_reach_the_cors_answers_when_configured() {
    let db = TestDb::create().await;
    let with_credentials = Gateway::start(config(
        &db,
        Moto::shared(),
        &format!(
            "[server.grpc_web]\nenabled = true\nallowed_origins = [\"{PORTAL}\"]\nallow_credentials = true\n"
        ),
    ))
    .await;
    let any_origin = Gateway::start(config(
        &db,
        Moto::shared(),
        "[server.grpc_web]\nenabled = true\nallowed_origins = [\"*\"]\n",
    ))
    .await;

    let (credentialed, _) = send(preflight(with_credentials.addr, PORTAL)).await;
    let (anyone, _) = send(preflight(any_origin.addr, "https://anyone.example")).await;

    assert_eq!(credentialed.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PORTAL);
    assert_eq!(
        credentialed.headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
        "true"
    );
    assert_eq!(anyone.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(
        anyone
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_from_an_origin_not_allowed_gets_no_cors_headers() {
    let db = TestDb::create().await;
    let gateway = web_gateway(&db).await;

    let (answer, _) = send(preflight(gateway.addr, "https://evil.example")).await;
    let (near_miss, _) = send(preflight(gateway.addr, "https://portal.example.com:8443")).await;

    for answer in [answer, near_miss] {
        assert_eq!(answer.status, http::StatusCode::FORBIDDEN, "{answer:?}");
        assert_eq!(cors_headers(&answer.headers), Vec::<String>::new(), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_web_call_from_an_allowed_origin_carries_the_cors_headers_and_the_answer() {
    let db = TestDb::create().await;
    let gateway = web_gateway(&db).await;
    let authority = gateway.addr.to_string();

    let (answer, body) = send(web_list_call(&authority, "http", Some(PORTAL))).await;

    assert_eq!(answer.status, http::StatusCode::OK, "{answer:?}");
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/grpc-web+proto");
    assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PORTAL);
    let exposed = listed(&answer.headers, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for needed in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(&needed.to_owned()), "{needed} in {exposed:?}");
    }
    let frames = WebFrames::parse(body);
    assert_eq!(frames.trailer("grpc-status"), Some("0"), "{frames:?}");
    assert_eq!(frames.messages.len(), 1, "{frames:?}");
    pb::ListRepositoriesResponse::decode(frames.messages[0].clone()).expect("a ListRepositoriesResponse");
    assert!(
        metrics(&gateway)
            .await
            .contains(&series("RepositoryService/ListRepositories", "OK"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_web_call_from_an_origin_not_allowed_is_permission_denied_without_cors_headers() {
    let db = TestDb::create().await;
    let gateway = web_gateway(&db).await;

    let (answer, body) = send(web_list_call(
        &gateway.addr.to_string(),
        "http",
        Some("https://evil.example"),
    ))
    .await;

    assert_eq!(answer.headers["grpc-status"], "7", "{answer:?}");
    let message = answer.headers["grpc-message"].to_str().expect("ascii");
    assert!(message.contains("server.grpc_web.allowed_origins"), "{message}");
    assert_eq!(cors_headers(&answer.headers), Vec::<String>::new());
    assert!(body.is_empty());
    let metrics = metrics(&gateway).await;
    assert!(!metrics.contains(LIST), "no handler ran: {metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_grpc_gets_no_cors_headers_and_http1_without_grpc_web_is_refused() {
    let db = TestDb::create().await;
    let gateway = web_gateway(&db).await;
    let mut request = as_user(
        pb::ListRepositoriesRequest::default(),
        "bob@example.com",
        "payments",
    );
    request
        .metadata_mut()
        .insert("origin", PORTAL.parse().expect("origin"));

    let answer = gateway
        .repositories()
        .list_repositories(request)
        .await
        .expect("plain gRPC");
    let plain_http1 = hyper::Request::post(format!("http://{}{LIST}", gateway.addr))
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(grpc_web_frame(&pb::ListRepositoriesRequest::default())))
        .expect("request");
    let (refused, _) = send(plain_http1).await;

    let headers = answer.metadata().clone().into_headers();
    assert_eq!(cors_headers(&headers), Vec::<String>::new());
    assert!(headers.get(header::VARY).is_none(), "{headers:?}");
    assert_eq!(refused.status, http::StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_a_browser_may_pick_http1_by_alpn_and_grpc_clients_keep_h2() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = TestCa::new("server CA");
    let server = server_ca.server();
    let tls = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}",
        write(dir.path(), "server.pem", &server.cert_pem).display(),
        write(dir.path(), "server.key", &server.key_pem).display(),
        web_settings()
    );
    let gateway = TlsGateway::start(config(&db, Moto::shared(), &tls)).await;
    let channel = gateway.channel(&server_ca, None).await;

    let stream = tls_connect(gateway.addr, &server_ca, b"http/1.1").await;
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (answer, body) = http1_exchange(stream, web_list_call("localhost", "https", Some(PORTAL))).await;
    let over_h2 = ecr_gateway::pb::repository_service_client::RepositoryServiceClient::new(channel)
        .list_repositories(as_user(
            pb::ListRepositoriesRequest::default(),
            "bob@example.com",
            "payments",
        ))
        .await;

    assert_eq!(negotiated.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        PORTAL,
        "{answer:?}"
    );
    assert_eq!(WebFrames::parse(body).trailer("grpc-status"), Some("0"));
    assert!(over_h2.is_ok(), "{over_h2:?}");
    gateway.stop().await.expect("clean stop");
}

/// A TLS connection to `addr` trusting `ca`, offering only `alpn`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &TestCa,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("CA PEM"))
        .expect("CA certificate");
    let mut client = rustls::ClientConfig::builder_with_provider(ecr_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake offering only http/1.1")
}
