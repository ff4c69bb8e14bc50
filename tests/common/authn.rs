//! Authentication test helpers, real parts only: signing keys (RS256, ES256)
//! whose JWKS a test writes to a file or serves from an in-test HTTP server,
//! tokens minted with them, a test CA issuing server and client certificates
//! (rcgen), and a gateway served over TLS with clients that present a
//! certificate.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ecr_gateway::config::Config;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{ServerTask, TestDb, config_text};

/// The issuer the tests' tokens name.
pub(crate) const ISSUER: &str = "https://login.test.example/";
/// The audience the gateway is configured with.
pub(crate) const AUDIENCE: &str = "ecr-gateway";

/// A key that signs tokens, with its public half as a JWK.
pub(crate) struct SigningKey {
    /// Its key id.
    pub kid: String,
    /// RS256 or ES256.
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWK.
    pub jwk: Value,
}

impl SigningKey {
    /// A fresh P-256 key.
    pub(crate) fn es256(kid: &str) -> SigningKey {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let point = pair.public_key_raw(); // 0x04 || x || y
        SigningKey {
            kid: kid.into(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// A fresh 2048-bit RSA key.
    pub(crate) fn rs256(kid: &str) -> SigningKey {
        let pair = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        // PKCS#8 PrivateKeyInfo { version, algorithm, privateKey OCTET STRING (PKCS#1) }.
        let pkcs8 = pair.serialize_der();
        let info = der_children(der_element(&pkcs8).1);
        let pkcs1 = info[2];
        // The raw public key is PKCS#1 RSAPublicKey { modulus, publicExponent }.
        let public = der_children(der_element(pair.public_key_raw()).1);
        let unsigned = |int: &[u8]| {
            let trimmed = match int {
                [0, rest @ ..] => rest,
                all => all,
            };
            URL_SAFE_NO_PAD.encode(trimmed)
        };
        SigningKey {
            kid: kid.into(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(pkcs1),
            jwk: json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": unsigned(public[0]), "e": unsigned(public[1]),
            }),
        }
    }

    /// A token with `claims`, signed by this key and naming its kid.
    pub(crate) fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }

    /// A token signed by this key that names `kid` instead of its own.
    pub(crate) fn mint_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

/// (tag, content, rest) of the DER element at the start of `input` (tests' own keys only).
fn der_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (length, header) = match input[1] {
        short if short < 0x80 => (short as usize, 2),
        long => {
            let bytes = (long & 0x7f) as usize;
            let length = input[2..2 + bytes]
                .iter()
                .fold(0usize, |n, b| (n << 8) | *b as usize);
            (length, 2 + bytes)
        }
    };
    (tag, &input[header..header + length], &input[header + length..])
}

/// The contents of the elements inside a DER SEQUENCE's content.
fn der_children(mut content: &[u8]) -> Vec<&[u8]> {
    let mut children = Vec::new();
    while !content.is_empty() {
        let (_, child, rest) = der_element(content);
        children.push(child);
        content = rest;
    }
    children
}

/// A JWKS document holding `keys`.
pub(crate) fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

/// Claims the gateway accepts: its issuer and audience, valid for ten minutes.
pub(crate) fn claims(subject: &str, groups: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "groups": groups,
        "iat": now,
        "exp": now + 600,
    })
}

/// `claims` with `key` set to `value`.
pub(crate) fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A request carrying `authorization: Bearer <token>`.
pub(crate) fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("authorization value"),
    );
    request
}

/// Writes `text` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// The test configuration with `auth` (TOML: `[auth]` and its sub-tables)
/// instead of insecure-dev, and `extra` appended.
pub(crate) fn config_with_auth(db: &TestDb, endpoint: &str, auth: &str, extra: &str) -> Config {
    let text = config_text(db, endpoint, extra);
    let default_auth = "[auth]\nmode = \"insecure-dev\"\n";
    assert!(
        text.contains(default_auth),
        "the harness's [auth] section changed"
    );
    let text = text.replace(default_auth, auth);
    Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// `[auth.oidc]` for the tests' issuer with the keys at `source` (`jwks_file = "…"` or `jwks_url = "…"`).
pub(crate) fn oidc_section(source: &str) -> String {
    format!(
        "[auth.oidc]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\n{source}\n\
         jwks_min_refresh_interval_seconds = 1\nservice_subject_pattern = \"^svc:\"\n"
    )
}

/// Serves a JWKS document over HTTP on 127.0.0.1 and counts the fetches.
pub(crate) struct JwksServer {
    /// `http://127.0.0.1:<port>/jwks.json`
    pub url: String,
    document: Arc<Mutex<Bytes>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `document` on a free port.
    pub(crate) async fn start(document: &Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, document)
    }

    /// Serves `document` on `port` (which a gateway may already be trying).
    pub(crate) async fn start_on(port: u16, document: &Value) -> JwksServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        Self::serve(listener, document)
    }

    fn serve(listener: TcpListener, document: &Value) -> JwksServer {
        let port = listener.local_addr().expect("addr").port();
        let document = Arc::new(Mutex::new(Bytes::from(document.to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let body = served.lock().expect("document").clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            url: format!("http://127.0.0.1:{port}/jwks.json"),
            document,
            hits,
            task,
        }
    }

    /// Serves `document` from now on (key rotation).
    pub(crate) fn set(&self, document: &Value) {
        *self.document.lock().expect("document") = Bytes::from(document.to_string());
    }

    /// How many times the document was fetched.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A certificate authority for tests.
pub(crate) struct TestCa {
    /// Its certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub(crate) struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A fresh self-signed CA named `name`.
    pub(crate) fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub(crate) fn server(&self) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with common name `cn` and, if given, a SPIFFE URI SAN.
    pub(crate) fn client(&self, cn: &str, spiffe_id: Option<&str>) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(id) = spiffe_id {
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().expect("URI SAN")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A gateway serving TLS in this test's runtime (the harness's `Gateway` speaks plaintext).
pub(crate) struct TlsGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    server: ServerTask,
}

impl TlsGateway {
    /// Starts the real server on port 0; `config` has `[server.tls]`.
    pub(crate) async fn start(config: Config) -> TlsGateway {
        let (server, addr, _) = ServerTask::spawn(config).await;
        TlsGateway { addr, server }
    }

    /// A TLS channel trusting `server_ca`, presenting `client` when given.
    pub(crate) async fn channel(&self, server_ca: &TestCa, client: Option<&Issued>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&server_ca.cert_pem))
            .domain_name("localhost");
        if let Some(client) = client {
            tls = tls.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        }
        let endpoint = Channel::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls config");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "TLS gateway did not come up at {}: {error:?}",
                        self.addr
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Stops the server and waits until it has drained.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await
    }
}
