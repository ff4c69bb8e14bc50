//! ImageService and the inventory sync, end to end: images pushed into moto
//! with real manifests (digest = sha256 of the exact bytes), synced into
//! Postgres, read back through the gateway.

mod common;

use common::images::{digest_of, oci_index, oci_manifest, push, push_manifest};
use common::{Gateway, Moto, TestDb, as_user, config, ecr_client, unique};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn bob<T>(message: T) -> tonic::Request<T> {
    as_user(message, "bob@example.com", "payments")
}

fn images(gateway: &Gateway) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(gateway.channel.clone())
}

/// Creates a repository through the gateway (so it is managed and cached),
/// IMMUTABLE with `latest` excluded. (moto cannot push an untagged manifest
/// into a repository with exclusion filters: use [`immutable_repository`] then.)
async fn managed_repository(gateway: &Gateway, stem: &str) -> String {
    create_repository(gateway, stem, true).await
}

/// Creates a repository with plain IMMUTABLE tags.
async fn immutable_repository(gateway: &Gateway, stem: &str) -> String {
    create_repository(gateway, stem, false).await
}

async fn create_repository(gateway: &Gateway, stem: &str, exclude_latest: bool) -> String {
    let name = unique("payments", stem);
    let request = pb::CreateRepositoryRequest {
        repository: name.clone(),
        settings: Some(pb::RepositorySettings {
            tags: common::team_tags(),
            image_tag_mutability: if exclude_latest {
                pb::ImageTagMutability::ImmutableWithExclusion as i32
            } else {
                pb::ImageTagMutability::Immutable as i32
            },
            image_tag_mutability_exclusion_filters: if exclude_latest {
                vec!["latest".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    gateway
        .repositories()
        .create_repository(bob(request))
        .await
        .expect("create repository");
    name
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

async fn get(
    gateway: &Gateway,
    repository: &str,
    tag: &str,
    digest: &str,
) -> Result<pb::Image, tonic::Status> {
    images(gateway)
        .get_image(bob(pb::GetImageRequest {
            repository: repository.into(),
            tag: tag.into(),
            digest: digest.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn resolve(
    gateway: &Gateway,
    reference: &str,
    strong: bool,
) -> Result<pb::ResolveImageResponse, tonic::Status> {
    let consistency = if strong {
        pb::Consistency::Strong
    } else {
        pb::Consistency::Cached
    };
    images(gateway)
        .resolve_image(bob(pb::ResolveImageRequest {
            reference: reference.into(),
            consistency: consistency as i32,
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_records_images_indexes_and_referrers_with_every_field() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = immutable_repository(&gateway, "inv").await;
    let ecr = ecr_client(Moto::shared()).await;
    let amd = oci_manifest("amd64", None, None);
    let arm = oci_manifest("arm64", None, None);
    let amd_digest = push_manifest(&ecr, &repository, &amd, OCI_MANIFEST, None).await;
    let arm_digest = push_manifest(&ecr, &repository, &arm, OCI_MANIFEST, None).await;
    let index = oci_index(&[
        (amd_digest.clone(), amd.len(), "amd64", None),
        (arm_digest.clone(), arm.len(), "arm64", Some("v8")),
    ]);
    let index_digest = push_manifest(&ecr, &repository, &index, OCI_INDEX, Some("v1.0.0")).await;
    let sbom = oci_manifest(
        "sbom",
        Some("application/vnd.cyclonedx+json"),
        Some((&index_digest, index.len())),
    );
    let sbom_digest = push_manifest(&ecr, &repository, &sbom, OCI_MANIFEST, Some("sbom-v1.0.0")).await;
    let plain_digest = push(&ecr, &repository, "stable", &repository).await;

    let refreshed = refresh(&gateway, &repository).await;

    assert_eq!(refreshed.runs.len(), 1);
    let run = &refreshed.runs[0];
    assert_eq!(
        (run.status.as_str(), run.images_seen, run.images_added),
        ("succeeded", 5, 5),
        "{run:?}"
    );
    let image = get(&gateway, &repository, "v1.0.0", "")
        .await
        .expect("index by tag");
    assert_eq!(image.digest, index_digest);
    assert_eq!(image.digest, digest_of(index.as_bytes()));
    assert_eq!(image.kind, pb::ManifestKind::Index as i32);
    assert_eq!(image.manifest_media_type, OCI_INDEX);
    assert_eq!(image.status, pb::ImageStatus::Active as i32);
    assert!(image.pushed_at.is_some());
    assert!(
        image
            .pinned_uri
            .ends_with(&format!("/{repository}@{index_digest}")),
        "{}",
        image.pinned_uri
    );
    let platforms: Vec<(String, String, String)> = image
        .children
        .iter()
        .map(|c| {
            let p = c.platform.clone().expect("platform");
            (c.digest.clone(), p.architecture, p.variant)
        })
        .collect();
    assert_eq!(
        platforms,
        vec![
            (amd_digest.clone(), "amd64".into(), String::new()),
            (arm_digest, "arm64".into(), "v8".into())
        ]
    );
    assert_eq!(image.referrers.len(), 1);
    assert_eq!(image.referrers[0].digest, sbom_digest);
    assert_eq!(image.referrers[0].artifact_type, "application/vnd.cyclonedx+json");
    let artifact = get(&gateway, &repository, "", &sbom_digest).await.expect("sbom");
    assert_eq!(artifact.kind, pb::ManifestKind::Artifact as i32);
    assert_eq!(artifact.subject_digest, index_digest);
    let child = get(&gateway, &repository, "", &amd_digest)
        .await
        .expect("untagged child");
    assert!(child.tags.is_empty());
    assert_eq!(child.kind, pb::ManifestKind::Image as i32);
    let plain = get(&gateway, &repository, "stable", "")
        .await
        .expect("docker image");
    assert_eq!(plain.digest, plain_digest);
    assert_eq!(
        plain.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let again = refresh(&gateway, &repository).await;
    let run = &again.runs[0];
    assert_eq!(
        (run.images_added, run.images_changed, run.images_removed),
        (0, 0, 0),
        "an unchanged repository writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_image_accepts_tags_digests_and_full_ecr_uris() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = managed_repository(&gateway, "resolve").await;
    let ecr = ecr_client(Moto::shared()).await;
    let digest = push(&ecr, &repository, "v2.1.0", &format!("{repository}-v2")).await;
    push(&ecr, &repository, "latest", &format!("{repository}-latest")).await;
    refresh(&gateway, &repository).await;

    let by_tag = resolve(&gateway, &format!("{repository}:v2.1.0"), false)
        .await
        .expect("by tag");
    let by_digest = resolve(&gateway, &format!("{repository}@{digest}"), false)
        .await
        .expect("by digest");
    let by_uri = resolve(
        &gateway,
        &format!(
            "{}.dkr.ecr.{}.amazonaws.com/{repository}:v2.1.0",
            common::ACCOUNT,
            common::REGION
        ),
        false,
    )
    .await
    .expect("by uri");
    let latest = resolve(&gateway, &format!("{repository}:latest"), false)
        .await
        .expect("latest");

    for answer in [&by_tag, &by_digest, &by_uri] {
        assert_eq!(answer.digest, digest);
        assert_eq!(
            answer.pinned_uri,
            format!(
                "{}.dkr.ecr.{}.amazonaws.com/{repository}@{digest}",
                common::ACCOUNT,
                common::REGION
            )
        );
        assert!(
            answer
                .freshness
                .as_ref()
                .and_then(|f| f.synced_at.as_ref())
                .is_some()
        );
    }
    assert!(
        by_tag.tag_immutable,
        "v2.1.0 is not excluded from IMMUTABLE_WITH_EXCLUSION"
    );
    assert!(!latest.tag_immutable, "latest is excluded");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_references_name_the_field_and_missing_images_are_not_found() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = managed_repository(&gateway, "bad").await;

    for reference in [
        "",
        "payments/api",
        "Payments/API:v1",
        "payments/api:bad tag",
        "payments/api@sha256:abc",
        "docker.io/library/nginx:1",
    ] {
        let status = resolve(&gateway, reference, false).await.expect_err(reference);
        assert_eq!(status.code(), Code::InvalidArgument, "{reference}: {status:?}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("bad request")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(fields.iter().all(|f| f == "reference"), "{reference}: {fields:?}");
    }
    let other_account = resolve(
        &gateway,
        "999999999999.dkr.ecr.us-east-1.amazonaws.com/payments/api:v1",
        false,
    )
    .await
    .expect_err("unmanaged");
    assert_eq!(other_account.code(), Code::InvalidArgument);
    let missing = resolve(&gateway, &format!("{repository}:nope"), false)
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("CONSISTENCY_STRONG"),
        "{}",
        missing.message()
    );
    let unknown_registry = images(&gateway)
        .resolve_image(bob(pb::ResolveImageRequest {
            registry: "nope".into(),
            reference: format!("{repository}:v1"),
            ..Default::default()
        }))
        .await
        .expect_err("registry");
    assert_eq!(unknown_registry.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_and_retags_in_ecr_reach_the_cache_on_the_next_reconcile() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = managed_repository(&gateway, "churn").await;
    let ecr = ecr_client(Moto::shared()).await;
    let old = push(&ecr, &repository, "latest", &format!("{repository}-old")).await;
    let doomed = push(&ecr, &repository, "v1", &format!("{repository}-doomed")).await;
    refresh(&gateway, &repository).await;
    assert_eq!(
        resolve(&gateway, &format!("{repository}:latest"), false)
            .await
            .expect("old")
            .digest,
        old
    );

    let new = push(&ecr, &repository, "latest", &format!("{repository}-new")).await;
    ecr.batch_delete_image()
        .repository_name(&repository)
        .image_ids(
            aws_sdk_ecr::types::ImageIdentifier::builder()
                .image_digest(&doomed)
                .build(),
        )
        .send()
        .await
        .expect("delete in ECR");
    refresh(&gateway, &repository).await;

    assert_eq!(
        resolve(&gateway, &format!("{repository}:latest"), false)
            .await
            .expect("moved")
            .digest,
        new
    );
    assert_eq!(
        get(&gateway, &repository, "", &doomed)
            .await
            .expect_err("gone")
            .code(),
        Code::NotFound
    );
    // The cache holds exactly what ECR holds (moto drops an image whose last tag moved
    // away; ECR keeps it untagged: either way the cache follows ECR).
    let in_ecr = common::digests_in_ecr(&ecr, &repository).await;
    let cached: std::collections::BTreeSet<String> = images(&gateway)
        .list_images(bob(pb::ListImagesRequest {
            repository: repository.clone(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert_eq!(cached, in_ecr);
    assert!(!cached.contains(&doomed));
    let _ = old;
    // The sync's removal left an audit event naming the image, on the gateway's own behalf.
    let removals: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT principal, response_elements FROM audit_events \
         WHERE event_name = 'SyncRemoveImages' AND request_parameters->>'repositoryName' = $1",
    )
    .bind(&repository)
    .fetch_all(&db.pool().await)
    .await
    .expect("audit");
    assert_eq!(removals.len(), 1, "{removals:?}");
    assert_eq!(removals[0].0, "ecr-gateway/sync");
    assert!(removals[0].1.to_string().contains(&doomed), "{removals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn strong_consistency_reads_through_to_ecr_and_refreshes_the_cache() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = managed_repository(&gateway, "strong").await;
    let ecr = ecr_client(Moto::shared()).await;
    let digest = push(&ecr, &repository, "fresh", &format!("{repository}-fresh")).await;

    let cached = resolve(&gateway, &format!("{repository}:fresh"), false)
        .await
        .expect_err("not synced yet");
    let strong = resolve(&gateway, &format!("{repository}:fresh"), true)
        .await
        .expect("read through");
    let cached_after = resolve(&gateway, &format!("{repository}:fresh"), false)
        .await
        .expect("now cached");

    assert_eq!(cached.code(), Code::NotFound);
    assert_eq!(strong.digest, digest);
    assert!(strong.freshness.expect("freshness").read_through);
    assert_eq!(cached_after.digest, digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_reads_keep_working_while_ecr_is_unreachable() {
    let db = TestDb::create().await;
    let proxy = common::proxy::FaultProxy::start(Moto::shared()).await;
    let gateway = Gateway::start(config(&db, &proxy.endpoint, "")).await;
    let repository = managed_repository(&gateway, "outage").await;
    let ecr = ecr_client(Moto::shared()).await;
    let digest = push(&ecr, &repository, "v1", &format!("{repository}-v1")).await;
    refresh(&gateway, &repository).await;
    proxy.drop_all();

    let cached = resolve(&gateway, &format!("{repository}:v1"), false)
        .await
        .expect("cached read");
    let strong = resolve(&gateway, &format!("{repository}:v1"), true)
        .await
        .expect_err("ECR down");

    assert_eq!(cached.digest, digest);
    assert!(
        cached.freshness.expect("freshness").synced_at.is_some(),
        "says how stale it is"
    );
    assert_eq!(strong.code(), Code::Unavailable, "{strong:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_images_filters_orders_and_pages() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = immutable_repository(&gateway, "list").await;
    let ecr = ecr_client(Moto::shared()).await;
    let mut pushed = Vec::new();
    for i in 0..5 {
        pushed.push(
            push(
                &ecr,
                &repository,
                &format!("v1.{i}"),
                &format!("{repository}-{i}"),
            )
            .await,
        );
    }
    let untagged = push_manifest(
        &ecr,
        &repository,
        &oci_manifest(&format!("{repository}-u"), None, None),
        OCI_MANIFEST,
        None,
    )
    .await;
    refresh(&gateway, &repository).await;
    let list = |tag_status: pb::TagStatus, glob: &str, token: String| pb::ListImagesRequest {
        repository: repository.clone(),
        tag_status: tag_status as i32,
        tag_glob: glob.into(),
        page_size: 2,
        page_token: token,
        order_by: pb::ImageOrder::Tag as i32,
        ..Default::default()
    };

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = images(&gateway)
            .list_images(bob(list(pb::TagStatus::Tagged, "v1.*", token)))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.images.iter().map(|i| i.digest.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Tag order: v1.0 .. v1.4, the order they were pushed in.
    assert_eq!(seen, pushed);

    let only_untagged = images(&gateway)
        .list_images(bob(list(pb::TagStatus::Untagged, "", String::new())))
        .await
        .expect("untagged")
        .into_inner();
    assert_eq!(
        only_untagged
            .images
            .iter()
            .map(|i| i.digest.clone())
            .collect::<Vec<_>>(),
        vec![untagged]
    );

    let newest = images(&gateway)
        .list_images(bob(pb::ListImagesRequest {
            repository: repository.clone(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("newest")
        .into_inner();
    assert_eq!(newest.images.len(), 1);

    let bad = images(&gateway)
        .list_images(bob(pb::ListImagesRequest {
            repository: repository.clone(),
            page_size: -1,
            tag_glob: "v1 *".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad filters");
    let fields: Vec<String> = bad
        .get_details_bad_request()
        .expect("details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["page_size", "tag_glob"]);
    let mismatched = images(&gateway)
        .list_images(bob(list(pb::TagStatus::Tagged, "v2.*", newest.next_page_token)))
        .await
        .expect_err("token");
    assert_eq!(mismatched.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_images_finds_by_digest_tag_glob_and_repository_prefix() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let first = managed_repository(&gateway, "search-a").await;
    let second = managed_repository(&gateway, "search-b").await;
    let ecr = ecr_client(Moto::shared()).await;
    let shared_seed = format!("{first}-shared");
    let a = push(&ecr, &first, "release-1", &shared_seed).await;
    let b = push(&ecr, &second, "release-1", &shared_seed).await;
    push(&ecr, &second, "nightly", &format!("{second}-nightly")).await;
    refresh(&gateway, &first).await;
    refresh(&gateway, &second).await;
    let search = |request: pb::SearchImagesRequest| {
        let mut client = images(&gateway);
        async move { client.search_images(bob(request)).await }
    };

    let by_digest = search(pb::SearchImagesRequest {
        digest: a.clone(),
        ..Default::default()
    })
    .await
    .expect("digest")
    .into_inner();
    let by_glob = search(pb::SearchImagesRequest {
        tag_glob: "release-?".into(),
        ..Default::default()
    })
    .await
    .expect("glob")
    .into_inner();
    let by_prefix = search(pb::SearchImagesRequest {
        repository_prefix: second.clone(),
        ..Default::default()
    })
    .await
    .expect("prefix")
    .into_inner();
    let none = search(pb::SearchImagesRequest::default())
        .await
        .expect_err("no criterion");

    assert_eq!(a, b, "same manifest, same digest");
    let repos: Vec<String> = by_digest.images.iter().map(|i| i.repository.clone()).collect();
    assert!(repos.contains(&first) && repos.contains(&second), "{repos:?}");
    assert!(
        by_glob.images.iter().any(|i| i.repository == first)
            && by_glob
                .images
                .iter()
                .all(|i| i.tags.iter().any(|t| t.starts_with("release-")))
    );
    assert_eq!(by_prefix.images.len(), 2);
    assert_eq!(none.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_status_reports_each_run() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = managed_repository(&gateway, "status").await;
    let ecr = ecr_client(Moto::shared()).await;
    push(&ecr, &repository, "v1", &format!("{repository}-v1")).await;
    refresh(&gateway, &repository).await;

    let status = images(&gateway)
        .get_sync_status(bob(pb::GetSyncStatusRequest {
            repository: repository.clone(),
            ..Default::default()
        }))
        .await
        .expect("status")
        .into_inner();

    assert!(status.last_synced_at.is_some());
    let run = &status.runs[0];
    assert_eq!(
        (run.trigger.as_str(), run.status.as_str(), run.images_seen),
        ("on-demand", "succeeded", 1)
    );
    assert!(run.ecr_calls >= 1);
}

/// Waits up to 5 s for `reference` to resolve to `want` on `gateway`.
async fn eventually_resolves(gateway: &Gateway, reference: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = resolve(gateway, reference, false).await.map(|r| r.digest);
        if got.as_deref().ok() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{reference}: still {got:?}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicas_read_cache_follows_changes_made_by_others() {
    let db = TestDb::create().await;
    let a = Gateway::start(config(&db, Moto::shared(), "")).await;
    let b = Gateway::start(config(&db, Moto::shared(), "")).await;
    let repository = managed_repository(&a, "replicas").await;
    let ecr = ecr_client(Moto::shared()).await;
    let first = push(&ecr, &repository, "latest", &format!("{repository}-1")).await;
    let other = push(&ecr, &repository, "v1", &format!("{repository}-v1")).await;
    refresh(&b, &repository).await;
    let reference = format!("{repository}:latest");
    eventually_resolves(&a, &reference, &first).await;

    // A row changed behind the triggers' back (session_replication_role =
    // replica skips them) is not seen: replica A answers from its cache.
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE image_tags SET digest = $1 WHERE repository = $2 AND tag = 'latest'")
        .bind(&other)
        .bind(&repository)
        .execute(&mut *conn)
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            resolve(&a, &reference, false).await.unwrap().digest,
            first,
            "served from the cache"
        );
    }
    // The same change made normally notifies every replica.
    sqlx::query("SET session_replication_role = DEFAULT")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE image_tags SET digest = $1 WHERE repository = $2 AND tag = 'latest'")
        .bind(&first)
        .bind(&repository)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE image_tags SET digest = $1 WHERE repository = $2 AND tag = 'latest'")
        .bind(&other)
        .bind(&repository)
        .execute(&mut *conn)
        .await
        .unwrap();
    eventually_resolves(&a, &reference, &other).await;
    drop(conn);
    eventually_resolves(&b, &reference, &other).await; // B caches it too

    // A tag moved in ECR and picked up by replica B reaches replica A; a tag
    // that did not resolve (a cached NOT_FOUND) resolves once B syncs it.
    let second = push(&ecr, &repository, "latest", &format!("{repository}-2")).await;
    let missing = format!("{repository}:v2");
    assert_eq!(
        resolve(&a, &missing, false).await.unwrap_err().code(),
        Code::NotFound
    );
    let v2 = push(&ecr, &repository, "v2", &format!("{repository}-v2")).await;
    refresh(&b, &repository).await;
    eventually_resolves(&a, &reference, &second).await;
    eventually_resolves(&a, &missing, &v2).await;
    // Replica B reads its own write at once, with no wait for a notification.
    assert_eq!(resolve(&b, &reference, false).await.unwrap().digest, second);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
