//! Creation templates and pull-through cache rules over recorded ECR answers
//! (moto has neither API): the gateway's real `Registry` (the real AWS SDK
//! client) talks to a local HTTP server that answers each operation with an
//! answer recorded from ECR's API reference, and keeps every request, so the
//! requests the gateway builds and the answers it parses are both checked.
//! Then the same server answers as moto does (HTTP 500, an HTML page), and
//! the operations come back as "the endpoint does not implement it" without
//! opening the registry's circuit breaker.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ecr_gateway::config::RegistryConfig;
use ecr_gateway::domain::{CreationTemplate, Encryption, TagMutability};
use ecr_gateway::ecr::{CallLog, EcrError, Registry};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const DESCRIBE_TEMPLATES: &str = r#"{
  "registryId": "123456789012",
  "repositoryCreationTemplates": [{
    "prefix": "payments",
    "description": "managed by ecr-gateway",
    "appliedFor": ["REPLICATION", "CREATE_ON_PUSH", "PULL_THROUGH_CACHE"],
    "imageTagMutability": "IMMUTABLE_WITH_EXCLUSION",
    "imageTagMutabilityExclusionFilters": [{"filterType": "WILDCARD", "filter": "latest"}],
    "encryptionConfiguration": {"encryptionType": "KMS", "kmsKey": "arn:aws:kms:us-east-1:123456789012:key/k1"},
    "resourceTags": [{"Key": "managed-by", "Value": "ecr-gateway"}],
    "lifecyclePolicy": "{\"rules\":[]}",
    "createdAt": 1.7e9,
    "updatedAt": 1.7e9
  }, {
    "prefix": "ROOT",
    "appliedFor": ["PULL_THROUGH_CACHE"],
    "imageTagMutability": "MUTABLE"
  }]
}"#;

const DESCRIBE_RULES: &str = r#"{
  "pullThroughCacheRules": [{
    "ecrRepositoryPrefix": "mirror/docker-hub",
    "upstreamRegistryUrl": "registry-1.docker.io",
    "upstreamRegistry": "docker-hub",
    "credentialArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf",
    "registryId": "123456789012",
    "createdAt": 1.7e9
  }]
}"#;

/// One recorded answer: status, content type, body.
type Answer = (u16, &'static str, String);

/// What the server answers per operation, and every request seen.
#[derive(Clone, Default)]
struct Recorded {
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    requests: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Recorded {
    fn answer(&self, operation: &str, status: u16, content_type: &'static str, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(operation.to_owned(), (status, content_type, body.to_owned()));
    }

    fn requests_of(&self, operation: &str) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(op, _)| op == operation)
            .map(|(_, body)| body.clone())
            .collect()
    }

    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let recorded = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let recorded = recorded.clone();
                        async move { Ok::<_, Infallible>(recorded.respond(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn respond(&self, request: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or_default()
            .to_owned();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        self.requests.lock().unwrap().push((operation.clone(), json));
        let (status, content_type, body) = self.answers.lock().unwrap().get(&operation).cloned().unwrap_or((
            400,
            "application/x-amz-json-1.1",
            r#"{"__type":"UnknownOperationException"}"#.into(),
        ));
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-amzn-requestid", format!("recorded-{operation}"))
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    }
}

async fn registry(addr: SocketAddr) -> Registry {
    common::init();
    Registry::connect(&RegistryConfig {
        alias: "main".into(),
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
        endpoint_url: Some(format!("http://{addr}")),
        max_attempts: Some(1),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_and_pull_through_rules_are_read_and_written_as_ecr_documents_them() {
    let recorded = Recorded::default();
    recorded.answer(
        "DescribeRepositoryCreationTemplates",
        200,
        "application/x-amz-json-1.1",
        DESCRIBE_TEMPLATES,
    );
    recorded.answer(
        "DescribePullThroughCacheRules",
        200,
        "application/x-amz-json-1.1",
        DESCRIBE_RULES,
    );
    recorded.answer(
        "CreateRepositoryCreationTemplate",
        200,
        "application/x-amz-json-1.1",
        r#"{"registryId":"123456789012"}"#,
    );
    recorded.answer(
        "UpdateRepositoryCreationTemplate",
        200,
        "application/x-amz-json-1.1",
        r#"{"registryId":"123456789012"}"#,
    );
    let registry = registry(recorded.serve().await).await;
    let log = CallLog::default();

    let templates = registry
        .describe_creation_templates(&log)
        .await
        .expect("templates");

    assert_eq!(templates.len(), 2);
    let payments = &templates[0];
    assert_eq!(payments.prefix, "payments");
    assert_eq!(
        payments.applied_for,
        ["CREATE_ON_PUSH", "PULL_THROUGH_CACHE", "REPLICATION"],
        "sorted"
    );
    assert_eq!(payments.tag_mutability, TagMutability::ImmutableWithExclusion);
    assert_eq!(payments.exclusion_filters, ["latest"]);
    assert_eq!(
        payments.encryption,
        Encryption::Kms {
            key: Some("arn:aws:kms:us-east-1:123456789012:key/k1".into())
        }
    );
    assert_eq!(
        payments.tags.get("managed-by").map(String::as_str),
        Some("ecr-gateway")
    );
    assert_eq!(payments.lifecycle_policy.as_deref(), Some(r#"{"rules":[]}"#));
    assert_eq!(
        templates[1].encryption,
        Encryption::Aes256,
        "no encryption configuration: AES256"
    );
    assert_eq!(log.ids(), ["recorded-DescribeRepositoryCreationTemplates"]);

    let rules = registry.describe_pull_through_rules(&log).await.expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].namespace(), "mirror");
    assert_eq!(rules[0].upstream_registry, "docker-hub");
    assert!(rules[0].credential_arn.starts_with("arn:aws:secretsmanager:"));
    assert_eq!(
        recorded.requests_of("DescribePullThroughCacheRules")[0]["registryId"],
        "123456789012"
    );

    // Writing: a new prefix is created, an existing one updated, with every setting.
    let template = CreationTemplate {
        prefix: "search".into(),
        description: "managed by ecr-gateway".into(),
        applied_for: vec![
            "CREATE_ON_PUSH".into(),
            "PULL_THROUGH_CACHE".into(),
            "REPLICATION".into(),
        ],
        tag_mutability: TagMutability::Immutable,
        exclusion_filters: Vec::new(),
        encryption: Encryption::Aes256,
        tags: BTreeMap::from([("managed-by".to_owned(), "ecr-gateway".to_owned())]),
        lifecycle_policy: Some(r#"{"rules":[]}"#.into()),
        repository_policy: None,
    };
    registry
        .put_creation_template(&log, &template, false)
        .await
        .expect("create");
    registry
        .put_creation_template(
            &log,
            &CreationTemplate {
                prefix: "payments".into(),
                ..template.clone()
            },
            true,
        )
        .await
        .expect("update");
    let created = &recorded.requests_of("CreateRepositoryCreationTemplate")[0];
    assert_eq!(created["prefix"], "search");
    assert_eq!(created["imageTagMutability"], "IMMUTABLE");
    assert_eq!(
        created["appliedFor"],
        serde_json::json!(["CREATE_ON_PUSH", "PULL_THROUGH_CACHE", "REPLICATION"])
    );
    assert_eq!(created["encryptionConfiguration"]["encryptionType"], "AES256");
    assert_eq!(
        created["resourceTags"],
        serde_json::json!([{"Key": "managed-by", "Value": "ecr-gateway"}])
    );
    assert_eq!(created["lifecyclePolicy"], r#"{"rules":[]}"#);
    assert!(created.get("repositoryPolicy").is_none(), "{created}");
    let updated = &recorded.requests_of("UpdateRepositoryCreationTemplate")[0];
    assert_eq!(updated["prefix"], "payments");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_without_the_apis_is_unsupported_and_the_breaker_stays_closed() {
    let recorded = Recorded::default();
    let moto_page = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n";
    for operation in [
        "DescribeRepositoryCreationTemplates",
        "CreateRepositoryCreationTemplate",
        "DescribePullThroughCacheRules",
    ] {
        recorded.answer(operation, 500, "text/html", moto_page);
    }
    recorded.answer(
        "DescribeRepositories",
        500,
        "application/x-amz-json-1.1",
        r#"{"__type":"ServerException","message":"internal"}"#,
    );
    let registry = registry(recorded.serve().await).await;
    let log = CallLog::default();

    // Many times over: an unsupported operation is no sign of an outage.
    for _ in 0..10 {
        let error = registry
            .describe_creation_templates(&log)
            .await
            .expect_err("unsupported");
        assert!(
            matches!(
                error,
                EcrError::Unsupported {
                    operation: "DescribeRepositoryCreationTemplates"
                }
            ),
            "{error:?}"
        );
        let error = registry
            .describe_pull_through_rules(&log)
            .await
            .expect_err("unsupported");
        assert!(matches!(error, EcrError::Unsupported { .. }), "{error:?}");
    }
    assert_eq!(registry.breaker().status().phase, ecr_gateway::ecr::Phase::Closed);
    // A real ECR failure (a JSON error document) is still an outage, not "unsupported".
    let name = ecr_gateway::domain::RepositoryName::parse("payments/api").unwrap();
    let error = registry
        .fetch_repository(&log, &name)
        .await
        .expect_err("a server error");
    assert!(!matches!(error, EcrError::Unsupported { .. }), "{error:?}");
}
