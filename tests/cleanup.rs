//! CleanupService so far: pins and DeleteImages, end to end against moto.
//! ECR's state is checked with the tests' own client: nothing pinned or
//! protected is ever deleted through the gateway.

mod common;

use std::collections::BTreeSet;

use common::images::push;
use common::{
    Gateway, Moto, TestDb, as_user, config, digests_in_ecr, ecr_client, tagged_repository, unique,
    violations, wait_for_audit_rows,
};
use ecr_gateway::pb;
use ecr_gateway::pb::cleanup_service_client::CleanupServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Protected tags for these tests: `release-*` everywhere.
const PROTECTION: &str = r#"
[policy.cleanup]
protected_tags = ["release-*"]
"#;

fn dan<T>(message: T) -> tonic::Request<T> {
    as_user(message, "deploy-bot", "payments")
}

fn cleanup(gateway: &Gateway) -> CleanupServiceClient<Channel> {
    CleanupServiceClient::new(gateway.channel.clone())
}

fn preconditions(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_precondition_failure()
        .map(|p| p.violations.into_iter().map(|v| (v.r#type, v.subject)).collect())
        .unwrap_or_default()
}

async fn repository(gateway: &Gateway) -> String {
    let name = unique("payments", "cleanup");
    gateway
        .repositories()
        .create_repository(dan(tagged_repository(&name)))
        .await
        .expect("create repository");
    name
}

async fn pin(gateway: &Gateway, repository: &str, tag: &str, holder: &str) -> Result<pb::Pin, tonic::Status> {
    cleanup(gateway)
        .pin_image(dan(pb::PinImageRequest {
            repository: repository.into(),
            tag: tag.into(),
            holder: holder.into(),
            reason: "running in prod".into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn delete(
    gateway: &Gateway,
    repository: &str,
    tags: &[&str],
    digests: &[&str],
) -> Result<pb::DeleteImagesResponse, tonic::Status> {
    cleanup(gateway)
        .delete_images(dan(pb::DeleteImagesRequest {
            repository: repository.into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            digests: digests.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_and_protected_images_are_never_deleted() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, PROTECTION)).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway).await;
    let running = push(&ecr, &repo, "v1", &format!("{repo}-v1")).await;
    let old = push(&ecr, &repo, "v0", &format!("{repo}-v0")).await;
    let release = push(&ecr, &repo, "release-7", &format!("{repo}-r7")).await;
    let spare = push(&ecr, &repo, "v2", &format!("{repo}-v2")).await;

    // Pin by tag (resolved through ECR: the image is not synced yet).
    let pinned = pin(&gateway, &repo, "v1", "deploy/prod/payments-api")
        .await
        .expect("pin");
    assert_eq!(pinned.digest, running);
    assert_eq!(pinned.tags, vec!["v1"]);
    assert_eq!(pinned.created_by, "deploy-bot");
    // Pinning again for the same holder renews; another holder adds a pin.
    pin(&gateway, &repo, "v1", "deploy/prod/payments-api")
        .await
        .expect("renew");
    pin(&gateway, &repo, "v1", "deploy/staging/payments-api")
        .await
        .expect("second holder");

    // Deleting the pinned image is refused whole, naming both pins; nothing is deleted.
    let refused = delete(&gateway, &repo, &[], &[&running, &old])
        .await
        .expect_err("pinned");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let named = preconditions(&refused);
    assert_eq!(named.len(), 2, "{named:?}");
    assert!(
        named
            .iter()
            .all(|(kind, subject)| kind == "IMAGE_PINNED" && subject.ends_with(&running))
    );
    assert!(refused.message().contains("deploy/staging/payments-api"));
    // So is removing its last tag (ECR would delete the image with it).
    let refused = delete(&gateway, &repo, &["v1"], &[]).await.expect_err("last tag");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // A protected tag, by tag or by digest.
    for (tags, digests) in [(vec!["release-7"], vec![]), (vec![], vec![release.as_str()])] {
        let refused = delete(&gateway, &repo, &tags, &digests)
            .await
            .expect_err("protected");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_eq!(preconditions(&refused)[0].0, "TAG_PROTECTED");
        assert!(refused.message().contains("release-*"));
    }
    assert_eq!(
        digests_in_ecr(&ecr, &repo).await,
        BTreeSet::from([running.clone(), old.clone(), release.clone(), spare.clone()])
    );

    // DeleteRepository, even with force, refuses while a pin holds.
    let refused = gateway
        .repositories()
        .delete_repository(dan(pb::DeleteRepositoryRequest {
            repository: repo.clone(),
            force: true,
            ..Default::default()
        }))
        .await
        .expect_err("pinned repository");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(preconditions(&refused)[0].0, "IMAGE_PINNED");

    // What is not pinned or protected goes: per-item results with ECR's semantics.
    let done = delete(&gateway, &repo, &["v0", "no-such-tag"], &[&spare])
        .await
        .expect("delete");
    let outcomes: Vec<(String, String)> = done
        .results
        .iter()
        .map(|r| (r.reference.clone(), r.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("v0".to_owned(), "DELETED".to_owned()),
            ("no-such-tag".to_owned(), "NOT_FOUND".to_owned()),
            (spare.clone(), "DELETED".to_owned()),
        ]
    );
    assert_eq!(
        digests_in_ecr(&ecr, &repo).await,
        BTreeSet::from([running.clone(), release.clone()])
    );
    // The cache followed (write-through): the deleted images are gone from it.
    let listed: BTreeSet<String> = ImageServiceClient::new(gateway.channel.clone())
        .list_images(dan(pb::ListImagesRequest {
            repository: repo.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert!(!listed.contains(&old) && !listed.contains(&spare), "{listed:?}");

    // Pins are listed by repository and by holder; unpinning is idempotent.
    let by_repo = cleanup(&gateway)
        .list_pins(dan(pb::ListPinsRequest {
            repository: repo.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_repo.pins.len(), 2);
    let by_holder = cleanup(&gateway)
        .list_pins(dan(pb::ListPinsRequest {
            holder: "deploy/staging/payments-api".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_holder.pins.len(), 1);
    assert_eq!(by_holder.pins[0].registry, "main");
    for holder in ["deploy/prod/payments-api", "deploy/staging/payments-api"] {
        let unpinned = cleanup(&gateway)
            .unpin_image(dan(pb::UnpinImageRequest {
                repository: repo.clone(),
                digest: running.clone(),
                holder: holder.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(unpinned.removed);
    }
    let again = cleanup(&gateway)
        .unpin_image(dan(pb::UnpinImageRequest {
            repository: repo.clone(),
            digest: running.clone(),
            holder: "deploy/prod/payments-api".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.removed);
    // Unpinned, it can go.
    delete(&gateway, &repo, &[], &[&running])
        .await
        .expect("delete unpinned");
    assert_eq!(
        digests_in_ecr(&ecr, &repo).await,
        BTreeSet::from([release.clone()])
    );

    let pool = db.pool().await;
    assert_eq!(
        wait_for_audit_rows(
            &pool,
            "event_name = 'DeleteImages' AND error_code = 'FailedPrecondition'",
            4
        )
        .await,
        4
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn untagging_keeps_the_image_and_bad_input_names_the_field() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, PROTECTION)).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway).await;
    let digest = push(&ecr, &repo, "a", &format!("{repo}-a")).await;
    // Add a second tag to the same image (PutImage of the same manifest).
    let manifest = common::images::docker_manifest(&format!("{repo}-a"));
    ecr.put_image()
        .repository_name(&repo)
        .image_manifest(&manifest)
        .image_manifest_media_type("application/vnd.docker.distribution.manifest.v2+json")
        .image_tag("b")
        .send()
        .await
        .expect("second tag");
    // Pinned, but removing one of two tags leaves the image: allowed.
    pin(&gateway, &repo, "a", "deploy/dev/x").await.expect("pin");
    let done = delete(&gateway, &repo, &["a"], &[]).await.expect("untag");
    assert_eq!(done.results[0].outcome, "UNTAGGED");
    assert_eq!(done.results[0].digest, digest);
    assert_eq!(
        digests_in_ecr(&ecr, &repo).await,
        BTreeSet::from([digest.clone()])
    );

    let bad: Vec<(pb::DeleteImagesRequest, &str, &str)> = vec![
        (
            pb::DeleteImagesRequest {
                repository: repo.clone(),
                ..Default::default()
            },
            "tags",
            "DELETE_EMPTY",
        ),
        (
            pb::DeleteImagesRequest {
                repository: repo.clone(),
                digests: vec!["md5:abc".into()],
                ..Default::default()
            },
            "digests[0]",
            "OCI_DIGEST_FORMAT",
        ),
        (
            pb::DeleteImagesRequest {
                repository: repo.clone(),
                tags: (0..101).map(|i| format!("t{i}")).collect(),
                ..Default::default()
            },
            "digests",
            "DELETE_TOO_MANY",
        ),
    ];
    for (request, field, reason) in bad {
        let status = cleanup(&gateway)
            .delete_images(dan(request))
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument);
        let got = violations(&status);
        assert!(
            got.iter().any(|(f, r)| f == field && r == reason),
            "want {field}/{reason}: {got:?}"
        );
    }
    let status = cleanup(&gateway)
        .pin_image(dan(pb::PinImageRequest {
            repository: repo.clone(),
            digest: digest.clone(),
            holder: "has spaces".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 60,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect_err("bad pin");
    let got = violations(&status);
    assert!(
        got.contains(&("holder".to_owned(), "PIN_HOLDER".to_owned())),
        "{got:?}"
    );
    assert!(
        got.contains(&("expire_time".to_owned(), "PIN_EXPIRY_PAST".to_owned())),
        "{got:?}"
    );
    let missing = pin(&gateway, &repo, "never-pushed", "deploy/dev/x")
        .await
        .expect_err("no image");
    assert_eq!(missing.code(), Code::NotFound);
    gateway.stop().await.unwrap();
}

/// Keeps the 2 newest images (any tag status); padded past ECR's 100-character minimum.
const KEEP_TWO: &str = r#"{"rules":[{"rulePriority":1,"description":"keep the two newest images of any kind","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_policies_are_previewed_with_pins_and_protection_before_they_are_put() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, PROTECTION)).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway).await;
    let mut digests = Vec::new();
    for tag in ["a", "b", "c", "d", "release-1"] {
        digests.push(push(&ecr, &repo, tag, &format!("{repo}-{tag}")).await);
    }
    ImageServiceClient::new(gateway.channel.clone())
        .refresh_inventory(dan(pb::RefreshInventoryRequest {
            repository: repo.clone(),
            ..Default::default()
        }))
        .await
        .expect("refresh");
    // moto stamps pushes made within one second alike: set the ages in the
    // cache (a: 1 day old … release-1: 5 days old) so the ranking is certain.
    let pool = db.pool().await;
    for (i, digest) in digests.iter().enumerate() {
        sqlx::query("UPDATE images SET pushed_at = now() - make_interval(days => $1) WHERE digest = $2")
            .bind(i as i32 + 1)
            .bind(digest)
            .execute(&pool)
            .await
            .unwrap();
    }
    pin(&gateway, &repo, "d", "deploy/prod/x").await.expect("pin d");

    let preview = cleanup(&gateway)
        .preview_cleanup(dan(pb::PreviewCleanupRequest {
            repository: repo.clone(),
            policy_text: KEEP_TWO.into(),
            ..Default::default()
        }))
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.evaluated, 5);
    assert_eq!(
        (
            preview.expire_count,
            preview.transition_count,
            preview.saved_count
        ),
        (1, 0, 2)
    );
    let verdicts: Vec<(String, i32, Vec<String>, String)> = preview
        .images
        .iter()
        .map(|i| {
            (
                i.tags.join(","),
                i.saved_by,
                i.holders.clone(),
                i.protected_by.clone(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            (
                "release-1".into(),
                pb::SavedBy::Protection as i32,
                vec![],
                "release-*".into()
            ),
            (
                "d".into(),
                pb::SavedBy::Pin as i32,
                vec!["deploy/prod/x".to_owned()],
                String::new()
            ),
            ("c".into(), pb::SavedBy::Unspecified as i32, vec![], String::new()),
        ],
        "oldest first within the rule"
    );

    // ECR's own lifecycle would expire d and release-1: refused unless acknowledged.
    let set = |acknowledge_at_risk: bool, policy_text: &str| {
        let mut client = cleanup(&gateway);
        let request = pb::SetLifecyclePolicyRequest {
            repository: repo.clone(),
            policy_text: policy_text.into(),
            acknowledge_at_risk,
            ..Default::default()
        };
        async move {
            client
                .set_lifecycle_policy(dan(request))
                .await
                .map(|r| r.into_inner())
        }
    };
    let refused = set(false, KEEP_TWO).await.expect_err("at risk");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let kinds: BTreeSet<String> = preconditions(&refused)
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["IMAGE_PINNED".to_owned(), "TAG_PROTECTED".to_owned()])
    );
    let in_ecr = || {
        let ecr = ecr.clone();
        let repo = repo.clone();
        async move {
            ecr.get_lifecycle_policy()
                .repository_name(&repo)
                .send()
                .await
                .ok()
                .and_then(|o| o.lifecycle_policy_text)
        }
    };
    // Still the org's template the repository was created with.
    assert!(
        in_ecr()
            .await
            .expect("template")
            .contains("expire untagged images after 14 days"),
        "nothing was put"
    );
    let put = set(true, KEEP_TWO).await.expect("acknowledged");
    assert_eq!(put.at_risk.len(), 2);
    let text = in_ecr().await.expect("in ECR");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::from_str::<serde_json::Value>(KEEP_TWO).unwrap()
    );
    let got = cleanup(&gateway)
        .get_lifecycle_policy(dan(pb::GetLifecyclePolicyRequest {
            repository: repo.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!got.policy_text.is_empty());
    // The repository's own policy is previewed when none is given.
    let own = cleanup(&gateway)
        .preview_cleanup(dan(pb::PreviewCleanupRequest {
            repository: repo.clone(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("preview own")
        .into_inner();
    assert_eq!((own.images.len(), own.saved_count), (1, 2));
    assert!(!own.next_page_token.is_empty());

    // A policy that breaks ECR's rules names the rule and the field; nothing is put.
    let bad = r#"{"rules":[{"rulePriority":1,"description":"tagged needs a list of prefixes or patterns","selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}}]}"#;
    let status = set(true, bad).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let got = violations(&status);
    assert!(
        got.iter().any(
            |(f, r)| f.starts_with("policy_text.rules[0]") && r == "LIFECYCLE_POLICY_TAGGED_NEEDS_FILTER"
        ),
        "{got:?}"
    );
    let status = set(true, "{not json").await.expect_err("not json");
    let got = violations(&status);
    assert!(got.iter().any(|(_, r)| r == "LIFECYCLE_POLICY_JSON"), "{got:?}");
    assert!(
        got.iter().any(|(_, r)| r == "LIFECYCLE_POLICY_LENGTH"),
        "every problem at once: {got:?}"
    );

    // Deleting is idempotent.
    for want in [true, false] {
        let deleted = cleanup(&gateway)
            .delete_lifecycle_policy(dan(pb::DeleteLifecyclePolicyRequest {
                repository: repo.clone(),
                ..Default::default()
            }))
            .await
            .expect("delete policy")
            .into_inner();
        assert_eq!(deleted.deleted, want);
    }
    assert_eq!(in_ecr().await, None);
    let none = cleanup(&gateway)
        .preview_cleanup(dan(pb::PreviewCleanupRequest {
            repository: repo.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("no policy");
    assert_eq!(none.code(), Code::FailedPrecondition);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_breaks_a_retention_floor_is_refused_with_the_rule_named() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let floor = "[policy.cleanup]\nkeep_newest = [{ tags = \"v*\", count = 2 }]\n";
    let gateway = Gateway::start(config(&db, moto, floor)).await;
    let ecr = ecr_client(moto).await;
    let repo = repository(&gateway).await;
    let mut digests = Vec::new();
    for tag in ["v3", "v2", "v1"] {
        digests.push(push(&ecr, &repo, tag, &format!("{repo}-{tag}")).await);
    }
    ImageServiceClient::new(gateway.channel.clone())
        .refresh_inventory(dan(pb::RefreshInventoryRequest {
            repository: repo.clone(),
            ..Default::default()
        }))
        .await
        .expect("refresh");
    // Ages set in the cache (moto stamps quick pushes alike): v3 newest, v1 oldest.
    let pool = db.pool().await;
    for (i, digest) in digests.iter().enumerate() {
        sqlx::query("UPDATE images SET pushed_at = now() - make_interval(days => $1) WHERE digest = $2")
            .bind(i as i32 + 1)
            .bind(digest)
            .execute(&pool)
            .await
            .unwrap();
    }
    let keep = |n: u32| {
        format!(
            r#"{{"rules":[{{"rulePriority":1,"description":"keep the newest {n} images of any kind here","selection":{{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":{n}}},"action":{{"type":"expire"}}}}]}}"#
        )
    };
    let set = |policy_text: String| {
        let mut client = cleanup(&gateway);
        let request = pb::SetLifecyclePolicyRequest {
            repository: repo.clone(),
            policy_text,
            validate_only: true,
            ..Default::default()
        };
        async move {
            client
                .set_lifecycle_policy(dan(request))
                .await
                .map(|r| r.into_inner())
        }
    };
    // Keeping one would expire v2, the second newest `v*`: refused, even acknowledged.
    let refused = set(keep(1)).await.expect_err("floor");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&refused),
        vec![("policy_text".to_owned(), "CLEANUP_RETENTION_FLOOR".to_owned())]
    );
    assert!(
        refused.message().contains("2 newest images tagged `v*`"),
        "{}",
        refused.message()
    );
    // Keeping two expires only v1: allowed.
    set(keep(2)).await.expect("within the floor");
    gateway.stop().await.unwrap();
}
