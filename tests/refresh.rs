//! A repository refresh re-reads the repository itself, not only its images:
//! a repository made or changed in ECR directly (through the tests' own ECR
//! client) is seen as ECR holds it after RefreshInventory by name or a
//! CONSISTENCY_STRONG read-through, and the deploy gate never calls a tag
//! immutable on settings older than the image facts it decides on. Reads of
//! a repository the gateway does not know read it through once, then answer
//! NOT_FOUND when ECR does not have it either.

mod common;

use common::images::push;
use common::proxy::FaultProxy;
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, team_tags, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::scan_service_client::ScanServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn bob<T>(message: T) -> tonic::Request<T> {
    as_user(message, "bob@example.com", "payments")
}

fn images(gateway: &Gateway) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(gateway.channel.clone())
}

async fn refresh(gateway: &Gateway, repository: &str) -> pb::RefreshInventoryResponse {
    images(gateway)
        .refresh_inventory(bob(pb::RefreshInventoryRequest {
            repository: repository.into(),
            ..Default::default()
        }))
        .await
        .expect("refresh")
        .into_inner()
}

async fn resolve(
    gateway: &Gateway,
    reference: &str,
    consistency: pb::Consistency,
) -> pb::ResolveImageResponse {
    images(gateway)
        .resolve_image(bob(pb::ResolveImageRequest {
            reference: reference.into(),
            consistency: consistency as i32,
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|status| panic!("ResolveImage {reference}: {status:?}"))
        .into_inner()
}

/// CheckDeployment in `dev`, which takes unscanned images but only digests
/// and immutable tags: (decision, rule ids).
async fn check_dev(gateway: &Gateway, reference: &str) -> (pb::Decision, Vec<String>) {
    let answer = ScanServiceClient::new(gateway.channel.clone())
        .check_deployment(bob(pb::CheckDeploymentRequest {
            reference: reference.into(),
            environment: "dev".into(),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|status| panic!("CheckDeployment {reference}: {status:?}"))
        .into_inner();
    (
        answer.decision(),
        answer.reasons.iter().map(|r| r.rule_id.clone()).collect(),
    )
}

/// Creates an IMMUTABLE repository through the gateway.
async fn immutable_through_the_gateway(gateway: &Gateway, stem: &str) -> String {
    let name = unique("payments", stem);
    gateway
        .repositories()
        .create_repository(bob(pb::CreateRepositoryRequest {
            repository: name.clone(),
            settings: Some(pb::RepositorySettings {
                tags: team_tags(),
                image_tag_mutability: pb::ImageTagMutability::Immutable as i32,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("create repository");
    name
}

/// Switches the repository to MUTABLE in ECR, behind the gateway's back.
async fn make_mutable_in_ecr(ecr: &aws_sdk_ecr::Client, repository: &str) {
    ecr.put_image_tag_mutability()
        .repository_name(repository)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Mutable)
        .send()
        .await
        .expect("PutImageTagMutability");
}

async fn mutability_in_ecr(ecr: &aws_sdk_ecr::Client, repository: &str) -> String {
    ecr.describe_repositories()
        .repository_names(repository)
        .send()
        .await
        .expect("DescribeRepositories")
        .repositories()[0]
        .image_tag_mutability()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_created_in_ecr_and_refreshed_by_name_is_listed_and_its_immutable_tags_pass_the_gate() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let ecr = ecr_client(Moto::shared()).await;
    let name = unique("payments", "made-in-ecr");
    ecr.create_repository()
        .repository_name(&name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .set_tags(Some(
            team_tags()
                .into_iter()
                .map(|(k, v)| {
                    aws_sdk_ecr::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .build()
                        .expect("tag")
                })
                .collect(),
        ))
        .send()
        .await
        .expect("CreateRepository in ECR");
    let digest = push(&ecr, &name, "v1", &format!("{name}-v1")).await;

    let refreshed = refresh(&gateway, &name).await;

    assert_eq!(refreshed.runs.len(), 1, "{refreshed:?}");
    let listed = gateway
        .repositories()
        .list_repositories(bob(pb::ListRepositoriesRequest {
            prefix: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("list repositories")
        .into_inner();
    let found: Vec<&pb::Repository> = listed
        .repositories
        .iter()
        .filter(|r| r.repository == name)
        .collect();
    assert_eq!(found.len(), 1, "the refreshed repository is listed: {listed:?}");
    let settings = found[0].settings.as_ref().expect("settings");
    assert_eq!(
        settings.image_tag_mutability,
        pb::ImageTagMutability::Immutable as i32
    );
    assert_eq!(settings.tags.get("team").map(String::as_str), Some("payments"));
    let resolved = resolve(&gateway, &format!("{name}:v1"), pb::Consistency::Cached).await;
    assert_eq!(resolved.digest, digest);
    assert!(resolved.tag_immutable, "{resolved:?}");
    assert_eq!(
        check_dev(&gateway, &format!("{name}:v1")).await,
        (pb::Decision::Allow, Vec::new())
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_made_mutable_and_moved_in_ecr_is_mutable_after_a_refresh_by_name_and_the_gate_denies_it() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let ecr = ecr_client(Moto::shared()).await;
    let name = immutable_through_the_gateway(&gateway, "switched").await;
    let first = push(&ecr, &name, "v1", &format!("{name}-first")).await;
    refresh(&gateway, &name).await;
    let reference = format!("{name}:v1");
    assert!(
        resolve(&gateway, &reference, pb::Consistency::Cached)
            .await
            .tag_immutable
    );
    // Warms the gate's in-process cache with the IMMUTABLE answer.
    assert_eq!(
        check_dev(&gateway, &reference).await,
        (pb::Decision::Allow, Vec::new())
    );
    make_mutable_in_ecr(&ecr, &name).await;
    let moved = push(&ecr, &name, "v1", &format!("{name}-moved")).await;
    assert_ne!(moved, first);
    assert_eq!(mutability_in_ecr(&ecr, &name).await, "MUTABLE");

    refresh(&gateway, &name).await;

    let cached = resolve(&gateway, &reference, pb::Consistency::Cached).await;
    assert_eq!(
        (cached.digest.as_str(), cached.tag_immutable),
        (moved.as_str(), false)
    );
    let strong = resolve(&gateway, &reference, pb::Consistency::Strong).await;
    assert_eq!(
        (strong.digest.as_str(), strong.tag_immutable),
        (moved.as_str(), false)
    );
    assert_eq!(
        check_dev(&gateway, &reference).await,
        (pb::Decision::Deny, vec!["deploy.reference-mutable".to_owned()])
    );
    let repository = gateway
        .repositories()
        .get_repository(bob(pb::GetRepositoryRequest {
            repository: name.clone(),
            ..Default::default()
        }))
        .await
        .expect("get repository")
        .into_inner();
    assert_eq!(
        repository.settings.expect("settings").image_tag_mutability,
        pb::ImageTagMutability::Mutable as i32,
        "the cached repository row says what ECR says"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_strong_resolve_re_reads_the_repository_settings_and_the_gate_follows() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let ecr = ecr_client(Moto::shared()).await;
    let name = immutable_through_the_gateway(&gateway, "strong").await;
    push(&ecr, &name, "v1", &format!("{name}-first")).await;
    refresh(&gateway, &name).await;
    let reference = format!("{name}:v1");
    assert_eq!(
        check_dev(&gateway, &reference).await,
        (pb::Decision::Allow, Vec::new())
    );
    make_mutable_in_ecr(&ecr, &name).await;
    let moved = push(&ecr, &name, "v1", &format!("{name}-moved")).await;

    let strong = resolve(&gateway, &reference, pb::Consistency::Strong).await;

    assert_eq!(
        (strong.digest.as_str(), strong.tag_immutable),
        (moved.as_str(), false)
    );
    assert!(
        !resolve(&gateway, &reference, pb::Consistency::Cached)
            .await
            .tag_immutable
    );
    assert_eq!(
        check_dev(&gateway, &reference).await,
        (pb::Decision::Deny, vec!["deploy.reference-mutable".to_owned()])
    );
    gateway.stop().await.unwrap();
}

async fn list_images(
    gateway: &Gateway,
    request: tonic::Request<pb::ListImagesRequest>,
) -> Result<pb::ListImagesResponse, tonic::Status> {
    images(gateway).list_images(request).await.map(|r| r.into_inner())
}

fn list_of(repository: &str) -> pb::ListImagesRequest {
    pb::ListImagesRequest {
        repository: repository.into(),
        ..Default::default()
    }
}

/// The ResourceInfo of a NOT_FOUND: (type, name).
fn missing(status: &tonic::Status) -> (String, String) {
    use tonic_types::StatusExt;
    let info = status.get_details_resource_info().expect("ResourceInfo");
    (info.resource_type, info.resource_name)
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_of_an_unknown_repository_read_it_through_once_then_answer_not_found_or_bring_it_in() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(Moto::shared()).await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, "")).await;
    let ecr = ecr_client(Moto::shared()).await;
    let typo = unique("payments", "no-such-repository");

    // A caller who may not read it is denied as before, and ECR is not asked.
    let before = proxy.total();
    let denied = list_images(&gateway, as_user(list_of(&typo), "deploy-bot", "deployers"))
        .await
        .expect_err("deployers do not list images");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(proxy.total(), before, "a denied call reads nothing through");

    let listed = list_images(&gateway, bob(list_of(&typo)))
        .await
        .expect_err("a repository nobody has is not an empty one");
    assert_eq!(listed.code(), Code::NotFound, "{listed:?}");
    assert_eq!(
        missing(&listed),
        ("ecr.repository".to_owned(), format!("main/{typo}"))
    );
    assert_eq!(
        (proxy.total() - before, proxy.count("DescribeRepositories")),
        (1, 1),
        "one read-through"
    );
    let got = images(&gateway)
        .get_image(bob(pb::GetImageRequest {
            repository: typo.clone(),
            tag: "v1".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no such repository");
    assert_eq!(
        (got.code(), missing(&got)),
        (
            Code::NotFound,
            ("ecr.repository".to_owned(), format!("main/{typo}"))
        )
    );

    // A repository ECR has but the gateway does not know comes in on first read.
    let name = unique("payments", "unknown-to-the-gateway");
    ecr.create_repository()
        .repository_name(&name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Immutable)
        .send()
        .await
        .expect("CreateRepository in ECR");
    let digest = push(&ecr, &name, "v1", &format!("{name}-v1")).await;
    let first = list_images(&gateway, bob(list_of(&name)))
        .await
        .expect("brought in");
    assert_eq!(
        first.images.iter().map(|i| i.digest.as_str()).collect::<Vec<_>>(),
        vec![digest.as_str()]
    );
    assert!(
        first.freshness.and_then(|f| f.synced_at).is_some(),
        "says when it was synced"
    );
    let calls = proxy.total();
    let again = list_images(&gateway, bob(list_of(&name))).await.expect("cached");
    assert_eq!(again.images.len(), 1);
    assert_eq!(proxy.total(), calls, "a known repository is read from the cache");
    let resolved = resolve(&gateway, &format!("{name}:v1"), pb::Consistency::Cached).await;
    assert_eq!(
        (resolved.digest.as_str(), resolved.tag_immutable),
        (digest.as_str(), true)
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn while_ecr_is_down_a_read_of_an_unknown_repository_is_unavailable_not_not_found() {
    use tonic_types::StatusExt;
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(Moto::shared()).await;
    let breaker = "[registries.breaker]\nfailure_threshold = 1\nopen_seconds = 60\n";
    let gateway = Gateway::start(config(&db, &proxy.endpoint, breaker)).await;
    let typo = unique("payments", "while-down");
    proxy.drop_all();

    let unreachable = list_images(&gateway, bob(list_of(&typo)))
        .await
        .expect_err("ECR unreachable");
    let open = list_images(&gateway, bob(list_of(&typo)))
        .await
        .expect_err("breaker open");

    assert_eq!(unreachable.code(), Code::Unavailable, "{unreachable:?}");
    assert_eq!(open.code(), Code::Unavailable, "{open:?}");
    assert_eq!(
        open.get_details_error_info().expect("info").reason,
        "ECR_CIRCUIT_OPEN"
    );
    assert!(open.get_details_retry_info().is_some(), "RetryInfo: {open:?}");
    gateway.stop().await.unwrap();
}
