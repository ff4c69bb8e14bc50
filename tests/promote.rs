//! ImageService.PromoteImage end to end against moto: a retag keeps the
//! exact manifest bytes and the digest, a promotion into another repository
//! puts the image there, an immutable tag never moves, a mutable one does, a
//! replay changes nothing, validate_only changes nothing, and the deploy gate
//! stops an image it denies. ECR's state is read with the tests' own client;
//! the cache through the gateway's cached reads.

mod common;

use common::images::{digest_of, docker_manifest, push};
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, seed_scan_findings, unique, violations};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::scan_service_client::ScanServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

fn carol<T>(message: T) -> tonic::Request<T> {
    as_user(message, "carol@example.com", "payments")
}

fn images(gateway: &Gateway) -> ImageServiceClient<tonic::transport::Channel> {
    ImageServiceClient::new(gateway.channel.clone())
}

/// A payments repository: tags immutable except `latest` and `dev-*`.
async fn repository(gateway: &Gateway, stem: &str) -> String {
    let name = unique("payments", stem);
    let settings = pb::RepositorySettings {
        tags: common::team_tags(),
        image_tag_mutability: pb::ImageTagMutability::ImmutableWithExclusion as i32,
        image_tag_mutability_exclusion_filters: vec!["latest".into(), "dev-*".into()],
        ..Default::default()
    };
    gateway
        .repositories()
        .create_repository(carol(pb::CreateRepositoryRequest {
            repository: name.clone(),
            settings: Some(settings),
            ..Default::default()
        }))
        .await
        .expect("create repository");
    name
}

fn promotion(repository: &str, tag: &str, target_tag: &str) -> pb::PromoteImageRequest {
    pb::PromoteImageRequest {
        repository: repository.into(),
        tag: tag.into(),
        target_tag: target_tag.into(),
        ..Default::default()
    }
}

async fn promote(
    gateway: &Gateway,
    request: pb::PromoteImageRequest,
) -> Result<pb::PromoteImageResponse, tonic::Status> {
    images(gateway)
        .promote_image(carol(request))
        .await
        .map(|r| r.into_inner())
}

/// What ECR says `repository:tag` is: its digest and exact manifest.
async fn in_ecr(ecr: &aws_sdk_ecr::Client, repository: &str, tag: &str) -> Option<(String, String)> {
    let output = ecr
        .batch_get_image()
        .repository_name(repository)
        .image_ids(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_tag(tag)
                .build(),
        )
        .send()
        .await
        .expect("BatchGetImage");
    output.images().first().map(|image| {
        (
            image
                .image_id()
                .and_then(|i| i.image_digest())
                .unwrap_or_default()
                .to_owned(),
            image.image_manifest().unwrap_or_default().to_owned(),
        )
    })
}

/// The cached image (no ECR read) by tag.
async fn cached(gateway: &Gateway, repository: &str, tag: &str) -> Result<pb::Image, tonic::Status> {
    images(gateway)
        .get_image(carol(pb::GetImageRequest {
            repository: repository.into(),
            tag: tag.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

fn precondition_kinds(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .map(|p| p.violations.into_iter().map(|v| v.r#type).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retag_puts_the_exact_manifest_bytes_under_the_new_tag_and_keeps_the_digest() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway, "retag").await;
    let seed = format!("{repo}-build-7");
    let digest = push(&ecr, &repo, "build-7", &seed).await;
    assert_eq!(digest, digest_of(docker_manifest(&seed).as_bytes()));

    let answer = promote(&gateway, promotion(&repo, "build-7", "v1.4.2"))
        .await
        .expect("promote");
    assert!(
        answer.changed && !answer.replayed && !answer.validate_only,
        "{answer:?}"
    );
    assert_eq!(answer.digest, digest);
    assert!(
        answer.pinned_uri.ends_with(&format!("/{repo}@{digest}")),
        "{}",
        answer.pinned_uri
    );
    assert_eq!(answer.previous_digest, "");
    let image = answer.image.expect("the image");
    assert_eq!(image.repository, repo);
    assert!(image.tags.contains(&"v1.4.2".to_owned()) && image.tags.contains(&"build-7".to_owned()));

    // ECR has the new tag on the same image, with the very bytes pushed.
    let (ecr_digest, manifest) = in_ecr(&ecr, &repo, "v1.4.2").await.expect("the new tag in ECR");
    assert_eq!(ecr_digest, digest);
    assert_eq!(
        manifest,
        docker_manifest(&seed),
        "the manifest bytes are unchanged"
    );
    assert_eq!(
        in_ecr(&ecr, &repo, "build-7").await.map(|(d, _)| d),
        Some(digest.clone())
    );

    // Written through: the cached read knows the tag without a refresh.
    let cached = cached(&gateway, &repo, "v1.4.2").await.expect("cached image");
    assert_eq!(cached.digest, digest);

    // Again: the immutable tag already names this image, so it is OK and nothing changes.
    let again = promote(&gateway, promotion(&repo, "build-7", "v1.4.2"))
        .await
        .expect("idempotent");
    assert!(!again.changed, "{again:?}");
    assert_eq!(again.digest, digest);
    // By digest too.
    let by_digest = promote(
        &gateway,
        pb::PromoteImageRequest {
            tag: String::new(),
            digest: digest.clone(),
            ..promotion(&repo, "", "v1.4.2")
        },
    )
    .await
    .expect("by digest");
    assert!(!by_digest.changed);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_tag_never_moves_and_a_mutable_one_moves_from_its_image() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway, "moves").await;
    let first = push(&ecr, &repo, "build-1", &format!("{repo}-1")).await;
    let second = push(&ecr, &repo, "build-2", &format!("{repo}-2")).await;
    promote(&gateway, promotion(&repo, "build-1", "v1"))
        .await
        .expect("v1");

    let refused = promote(&gateway, promotion(&repo, "build-2", "v1"))
        .await
        .expect_err("an immutable tag on another image");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(precondition_kinds(&refused), vec!["TAG_IMMUTABLE".to_owned()]);
    assert!(
        refused.message().contains(&first) && refused.message().contains(&format!("{repo}:v1")),
        "names the tag and the image it names: {}",
        refused.message()
    );
    assert_eq!(
        in_ecr(&ecr, &repo, "v1").await.map(|(d, _)| d),
        Some(first.clone())
    );

    // `latest` is excluded from immutability: it moves, and says from where.
    promote(&gateway, promotion(&repo, "build-1", "latest"))
        .await
        .expect("latest on 1");
    let moved = promote(&gateway, promotion(&repo, "build-2", "latest"))
        .await
        .expect("latest on 2");
    assert!(moved.changed);
    assert_eq!(moved.previous_digest, first);
    assert_eq!(
        in_ecr(&ecr, &repo, "latest").await.map(|(d, _)| d),
        Some(second.clone())
    );
    assert_eq!(
        cached(&gateway, &repo, "latest").await.expect("cached").digest,
        second
    );
    let old = images(&gateway)
        .get_image(carol(pb::GetImageRequest {
            repository: repo.clone(),
            digest: first.clone(),
            ..Default::default()
        }))
        .await
        .expect("the first image")
        .into_inner();
    assert!(
        !old.tags.contains(&"latest".to_owned()),
        "the tag left the first image: {:?}",
        old.tags
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_into_another_repository_puts_the_image_there() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let staging = repository(&gateway, "staging").await;
    let prod = repository(&gateway, "prod").await;
    let seed = format!("{staging}-rc");
    let digest = push(&ecr, &staging, "rc-3", &seed).await;

    let answer = promote(
        &gateway,
        pb::PromoteImageRequest {
            target_repository: prod.clone(),
            ..promotion(&staging, "rc-3", "v3")
        },
    )
    .await
    .expect("promote across repositories");
    assert!(answer.changed);
    assert_eq!(answer.digest, digest);
    assert!(
        answer.pinned_uri.ends_with(&format!("/{prod}@{digest}")),
        "{}",
        answer.pinned_uri
    );
    assert_eq!(
        answer.image.as_ref().map(|i| i.repository.as_str()),
        Some(prod.as_str())
    );
    let (ecr_digest, manifest) = in_ecr(&ecr, &prod, "v3").await.expect("in the target");
    assert_eq!((ecr_digest, manifest), (digest.clone(), docker_manifest(&seed)));
    assert_eq!(
        in_ecr(&ecr, &staging, "v3").await,
        None,
        "the source repository is untouched"
    );
    let cached = cached(&gateway, &prod, "v3")
        .await
        .expect("written through to the target");
    assert_eq!(cached.digest, digest);
    assert_eq!(
        cached.kind(),
        pb::ManifestKind::Image,
        "what the manifest says is cached too"
    );

    // A target repository that does not exist is NOT_FOUND, and nothing is created.
    let missing = promote(
        &gateway,
        pb::PromoteImageRequest {
            target_repository: format!("{prod}-missing"),
            ..promotion(&staging, "rc-3", "v3")
        },
    )
    .await
    .expect_err("no target");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_only_changes_nothing_and_a_request_id_replays_the_first_answer() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway, "replay").await;
    let digest = push(&ecr, &repo, "build-9", &format!("{repo}-9")).await;

    let dry = promote(
        &gateway,
        pb::PromoteImageRequest {
            validate_only: true,
            ..promotion(&repo, "build-9", "v9")
        },
    )
    .await
    .expect("validate");
    assert!(dry.validate_only && dry.changed, "{dry:?}");
    assert_eq!(dry.digest, digest);
    assert_eq!(in_ecr(&ecr, &repo, "v9").await, None, "validate_only changed ECR");

    let request = pb::PromoteImageRequest {
        request_id: "promote-v9-1".into(),
        ..promotion(&repo, "build-9", "v9")
    };
    let first = promote(&gateway, request.clone()).await.expect("promote");
    assert!(first.changed && !first.replayed);
    let replay = promote(&gateway, request.clone()).await.expect("replay");
    assert!(
        replay.replayed && replay.changed,
        "the first answer, replayed: {replay:?}"
    );
    assert_eq!(replay.digest, digest);
    // The same id for a different promotion is refused.
    let reused = promote(
        &gateway,
        pb::PromoteImageRequest {
            target_tag: "v10".into(),
            ..request
        },
    )
    .await
    .expect_err("a reused request_id");
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");

    // The audit trail: one succeeded PromoteImage for the id, naming the image, and the dry run read-only.
    let pool = db.pool().await;
    common::wait_for_audit_rows(&pool, "event_name = 'PromoteImage'", 4).await;
    let (succeeded, digest_recorded): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), max(response_elements->>'imageDigest') FROM audit_events \
         WHERE event_name = 'PromoteImage' AND client_request_id = 'promote-v9-1' AND status = 'succeeded' \
         AND NOT coalesce((response_elements->>'replayed')::boolean, false)",
    )
    .fetch_one(&pool)
    .await
    .expect("audit rows");
    assert_eq!((succeeded, digest_recorded), (1, Some(digest)));
    let read_only: bool = sqlx::query_scalar(
        "SELECT read_only FROM audit_events WHERE event_name = 'PromoteImage' \
         AND request_parameters->>'validateOnly' = 'true'",
    )
    .fetch_one(&pool)
    .await
    .expect("the dry run's event");
    assert!(read_only);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_gate_promotes_only_what_it_would_allow() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway, "gated").await;
    let critical = push(&ecr, &repo, "build-c", &format!("{repo}-c")).await;
    let low = push(&ecr, &repo, "build-l", &format!("{repo}-l")).await;
    push(&ecr, &repo, "build-u", &format!("{repo}-u")).await;
    seed_scan_findings(moto, &repo, &critical, &[("CVE-2024-3094", "CRITICAL")]).await;
    seed_scan_findings(moto, &repo, &low, &[("CVE-2022-0001", "LOW")]).await;
    for digest in [&critical, &low] {
        ScanServiceClient::new(gateway.channel.clone())
            .start_image_scan(carol(pb::StartImageScanRequest {
                repository: repo.clone(),
                digest: digest.clone(),
                ..Default::default()
            }))
            .await
            .expect("scan");
    }
    let gated = |tag: &str, target: &str| pb::PromoteImageRequest {
        environment: "prod".into(),
        ..promotion(&repo, tag, target)
    };

    let denied = promote(&gateway, gated("build-c", "prod-c"))
        .await
        .expect_err("critical");
    assert_eq!(denied.code(), Code::FailedPrecondition, "{denied:?}");
    assert_eq!(
        precondition_kinds(&denied),
        vec!["deploy.severity-threshold".to_owned()]
    );
    assert!(denied.message().contains("prod"), "{}", denied.message());
    assert_eq!(in_ecr(&ecr, &repo, "prod-c").await, None);
    let unscanned = promote(&gateway, gated("build-u", "prod-u"))
        .await
        .expect_err("unscanned");
    assert_eq!(
        precondition_kinds(&unscanned),
        vec!["deploy.scan-missing".to_owned()]
    );

    let allowed = promote(&gateway, gated("build-l", "prod-l"))
        .await
        .expect("low is allowed in prod");
    let gate = allowed.gate.expect("the gate's decision");
    assert_eq!(gate.decision(), pb::Decision::Allow);
    assert_eq!(gate.digest, low);
    assert_eq!(in_ecr(&ecr, &repo, "prod-l").await.map(|(d, _)| d), Some(low));

    // An unknown environment is the caller's mistake.
    let unknown = promote(
        &gateway,
        pb::PromoteImageRequest {
            environment: "moon".into(),
            ..promotion(&repo, "build-l", "x")
        },
    )
    .await
    .expect_err("unknown environment");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&unknown),
        vec![("environment".to_owned(), "DEPLOY_ENVIRONMENT_UNKNOWN".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn promoting_needs_pull_on_the_source_and_push_on_the_target() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway, "authz").await;
    push(&ecr, &repo, "build-1", &format!("{repo}-1")).await;
    let search = unique("search", "authz");
    gateway
        .repositories()
        .create_repository(as_user(
            pb::CreateRepositoryRequest {
                repository: search.clone(),
                settings: Some(pb::RepositorySettings {
                    tags: [("team", "search"), ("cost-center", "cc-2002")]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "sam@example.com",
            "search",
        ))
        .await
        .expect("a search repository");

    // carol owns payments, not search: no PushImages there.
    let refused = promote(
        &gateway,
        pb::PromoteImageRequest {
            target_repository: search.clone(),
            ..promotion(&repo, "build-1", "v1")
        },
    )
    .await
    .expect_err("push into search");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("PushImages") && refused.message().contains(&search),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains("PullImages"),
        "the source was allowed: {}",
        refused.message()
    );
    assert_eq!(in_ecr(&ecr, &search, "v1").await, None);
    // sam (search) may not even pull from payments.
    let sam = images(&gateway)
        .promote_image(as_user(
            promotion(&repo, "build-1", "v1"),
            "sam@example.com",
            "search",
        ))
        .await
        .expect_err("sam pulls payments");
    assert_eq!(sam.code(), Code::PermissionDenied);
    assert!(sam.message().contains("PullImages"), "{}", sam.message());

    // A missing source is NOT_FOUND, after the authorization.
    let missing = promote(&gateway, promotion(&repo, "no-such-tag", "v1"))
        .await
        .expect_err("no source");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(
        missing.message().contains(":no-such-tag"),
        "{}",
        missing.message()
    );
}
