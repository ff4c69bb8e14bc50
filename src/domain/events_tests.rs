//! The event shapes of AWS's documentation ("Amazon ECR events and
//! EventBridge", Inspector's "EventBridge for Amazon Inspector", CloudTrail's
//! ECR records). The documentation's sample digests are shortened; these use
//! full ones.

use super::*;

const DIGEST: &str = "sha256:7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd12345678";

fn envelope(detail_type: &str, source: &str, detail: Value) -> String {
    serde_json::json!({
        "version": "0",
        "id": "13cde686-328b-6117-af20-0e5566167482",
        "detail-type": detail_type,
        "source": source,
        "account": "123456789012",
        "time": "2019-11-16T01:54:34Z",
        "region": "us-west-2",
        "resources": [],
        "detail": detail,
    })
    .to_string()
}

fn rereads(body: &str) -> Vec<Reread> {
    match parse_message(body) {
        Parsed::Event(event) => event.rereads,
        other => panic!("not an event: {other:?}"),
    }
}

fn name(n: &str) -> RepositoryName {
    RepositoryName::parse(n).unwrap()
}

fn digest() -> Digest {
    Digest::parse(DIGEST).unwrap()
}

#[test]
fn an_image_push_rereads_the_image() {
    let body = envelope(
        "ECR Image Action",
        "aws.ecr",
        serde_json::json!({"result": "SUCCESS", "repository-name": "my-repository-name",
            "image-digest": DIGEST, "action-type": "PUSH", "image-tag": "latest"}),
    );
    let Parsed::Event(event) = parse_message(&body) else {
        panic!()
    };
    assert_eq!(event.event_type, "ECR Image Action");
    assert_eq!(event.account, "123456789012");
    assert_eq!(event.region, "us-west-2");
    assert_eq!(event.time.to_rfc3339(), "2019-11-16T01:54:34+00:00");
    assert_eq!(
        event.rereads,
        vec![Reread::Image {
            repository: name("my-repository-name"),
            digest: digest()
        }]
    );
}

#[test]
fn deletes_storage_class_changes_replications_referrers_and_caches_reread_the_image() {
    let image = vec![Reread::Image {
        repository: name("my-repository-name"),
        digest: digest(),
    }];
    for (detail_type, detail) in [
        (
            "ECR Image Action",
            serde_json::json!({"result": "SUCCESS", "repository-name": "my-repository-name",
            "image-digest": DIGEST, "action-type": "DELETE", "image-tag": "latest"}),
        ),
        (
            "ECR Image Action",
            serde_json::json!({"result": "SUCCESS", "repository-name": "my-repository-name",
            "image-digest": DIGEST, "action-type": "UPDATE_STORAGE_CLASS", "target-storage-class": "ARCHIVE",
            "manifest-media-type": "application/vnd.oci.image.manifest.v1+json",
            "artifact-media-type": "application/vnd.oci.image.config.v1+json"}),
        ),
        (
            "ECR Replication Action",
            serde_json::json!({"result": "SUCCESS", "repository-name": "my-repository-name",
            "image-digest": DIGEST, "source-account": "210987654321", "action-type": "REPLICATE",
            "source-region": "us-east-2", "image-tag": "latest"}),
        ),
        (
            "ECR Referrer Action",
            serde_json::json!({"result": "SUCCESS", "repository-name": "my-repository-name",
            "image-digest": DIGEST, "action-type": "PUSH",
            "artifact-media-type": "application/vnd.dev.cosign.artifact.sig.v1+json"}),
        ),
        (
            "ECR Pull Through Cache Action",
            serde_json::json!({"rule-version": "1", "sync-status": "SUCCESS",
            "ecr-repository-prefix": "docker-hub", "repository-name": "my-repository-name",
            "upstream-registry-url": "public.ecr.aws", "image-tag": "3.17.2", "image-digest": DIGEST}),
        ),
    ] {
        assert_eq!(
            rereads(&envelope(detail_type, "aws.ecr", detail)),
            image,
            "{detail_type}"
        );
    }
}

#[test]
fn failed_actions_are_ignored() {
    let failed = envelope(
        "ECR Image Action",
        "aws.ecr",
        serde_json::json!({"result": "FAILURE", "repository-name": "rr", "image-digest": DIGEST, "action-type": "PUSH"}),
    );
    assert!(matches!(
        parse_message(&failed),
        Parsed::Ignored {
            event_type: "ECR Image Action",
            ..
        }
    ));
    let cache = envelope(
        "ECR Pull Through Cache Action",
        "aws.ecr",
        serde_json::json!({"sync-status": "FAILED", "repository-name": "docker-hub/alpine", "image-digest": DIGEST}),
    );
    assert!(matches!(parse_message(&cache), Parsed::Ignored { .. }));
}

#[test]
fn a_basic_scan_rereads_the_findings() {
    let body = envelope(
        "ECR Image Scan",
        "aws.ecr",
        serde_json::json!({"scan-status": "COMPLETE", "repository-name": "my-repository-name",
            "finding-severity-counts": {"CRITICAL": 10, "MEDIUM": 9},
            "image-digest": DIGEST, "image-tags": []}),
    );
    assert_eq!(
        rereads(&body),
        vec![Reread::Scan {
            repository: name("my-repository-name"),
            digest: digest()
        }]
    );
}

#[test]
fn an_inspector_scan_names_the_repository_by_arn_of_its_own_registry() {
    let detail = |arn: &str| {
        serde_json::json!({"scan-status": "INITIAL_SCAN_COMPLETE", "repository-name": arn,
            "finding-severity-counts": {"CRITICAL": 7, "HIGH": 61, "MEDIUM": 62, "TOTAL": 158},
            "image-digest": DIGEST, "image-tags": ["latest"]})
    };
    let body = envelope(
        "Inspector2 Scan",
        "aws.inspector2",
        detail("arn:aws:ecr:us-west-2:123456789012:repository/team/inspector2"),
    );
    assert_eq!(
        rereads(&body),
        vec![Reread::Scan {
            repository: name("team/inspector2"),
            digest: digest()
        }]
    );
    let foreign = envelope(
        "Inspector2 Scan",
        "aws.inspector2",
        detail("arn:aws:ecr:eu-west-1:123456789012:repository/team/inspector2"),
    );
    assert!(matches!(parse_message(&foreign), Parsed::Unknown { .. }));
    // Inspector's type from ECR's source is not Inspector's event.
    let spoofed = envelope(
        "Inspector2 Scan",
        "aws.ecr",
        detail("arn:aws:ecr:us-west-2:123456789012:repository/x"),
    );
    assert!(matches!(parse_message(&spoofed), Parsed::Unknown { .. }));
}

#[test]
fn a_scan_frequency_change_rereads_every_repository_it_names() {
    let body = envelope(
        "ECR Scan Resource Change",
        "aws.ecr",
        serde_json::json!({"action-type": concat!("SCAN_", "FREQUENCY_CHANGE"), "repositories": [
            {"repository-name": "repository-1", "repository-arn": "arn:aws:ecr:us-west-2:123456789012:repository/repository-1",
             "scan-frequency": "CONTINUOUS_SCAN", "previous-scan-frequency": "MANUAL"},
            {"repository-name": "repository-2", "repository-arn": "arn:aws:ecr:us-west-2:123456789012:repository/repository-2",
             "scan-frequency": "SCAN_ON_PUSH", "previous-scan-frequency": "CONTINUOUS_SCAN"}],
            "resource-type": "REPOSITORY", "scan-type": "ENHANCED"}),
    );
    assert_eq!(
        rereads(&body),
        vec![
            Reread::Repository {
                repository: name("repository-1"),
                tags: false
            },
            Reread::Repository {
                repository: name("repository-2"),
                tags: false
            },
        ]
    );
}

fn cloudtrail(event_name: &str, parameters: Value) -> String {
    envelope(
        "AWS API Call via CloudTrail",
        "aws.ecr",
        serde_json::json!({"eventVersion": "1.08", "eventSource": "ecr.amazonaws.com",
            "eventName": event_name, "awsRegion": "us-west-2", "requestParameters": parameters,
            "eventType": "AwsApiCall"}),
    )
}

#[test]
fn settings_changed_in_ecr_reread_the_repository() {
    let repository = || serde_json::json!({"repositoryName": "payments/api"});
    let settings = |tags| {
        vec![Reread::Repository {
            repository: name("payments/api"),
            tags,
        }]
    };
    assert_eq!(
        rereads(&cloudtrail("CreateRepository", repository())),
        settings(true)
    );
    assert_eq!(
        rereads(&cloudtrail("DeleteRepository", repository())),
        settings(false)
    );
    assert_eq!(
        rereads(&cloudtrail("PutImageTagMutability", repository())),
        settings(false)
    );
    assert_eq!(
        rereads(&cloudtrail(
            "TagResource",
            serde_json::json!({"resourceArn": "arn:aws:ecr:us-west-2:123456789012:repository/payments/api",
                "tags": [{"key": "team", "value": "payments"}]})
        )),
        settings(true)
    );
    for policy in ["PutLifecyclePolicy", "SetRepositoryPolicy"] {
        assert_eq!(
            rereads(&cloudtrail(policy, repository())),
            vec![Reread::Policies {
                repository: name("payments/api")
            }]
        );
    }
}

#[test]
fn failed_and_read_only_calls_change_nothing() {
    let mut failed: Value = serde_json::from_str(&cloudtrail(
        "CreateRepository",
        serde_json::json!({"repositoryName": "payments/api"}),
    ))
    .unwrap();
    failed["detail"]["errorCode"] = "RepositoryAlreadyExistsException".into();
    match parse_message(&failed.to_string()) {
        Parsed::Ignored { reason, .. } => {
            assert!(reason.contains("RepositoryAlreadyExistsException"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let read = cloudtrail(
        "DescribeImages",
        serde_json::json!({"repositoryName": "payments/api"}),
    );
    assert!(matches!(parse_message(&read), Parsed::Ignored { .. }));
}

#[test]
fn a_lifecycle_expiry_names_the_digests_it_expired() {
    let body = envelope(
        "AWS Service Event via CloudTrail",
        "aws.ecr",
        serde_json::json!({"eventSource": "ecr.amazonaws.com", "eventName": "PolicyExecutionEvent",
        "eventType": "AwsServiceEvent", "serviceEventDetails": {
            "repositoryName": "payments/api",
            "lifecycleEventPolicy": {"lifecycleEventRules": [{"rulePriority": 1}]},
            "lifecycleEventImageActions": [
                {"lifecycleEventImage": {"digest": DIGEST, "tagStatus": "UNTAGGED", "tagList": []}, "rulePriority": 1}
            ]}}),
    );
    assert_eq!(
        rereads(&body),
        vec![Reread::Expired {
            repository: name("payments/api"),
            digests: vec![digest()]
        }]
    );
}

#[test]
fn what_is_not_an_ecr_event_is_unknown_and_says_why() {
    for (body, says) in [
        ("not json".to_owned(), "not a JSON"),
        (r#"{"hello": 1}"#.to_owned(), "detail-type"),
        (
            envelope(
                "EC2 Instance State-change Notification",
                "aws.ec2",
                serde_json::json!({}),
            ),
            "does not follow",
        ),
        (
            envelope("ECR Image Action", "aws.ec2", serde_json::json!({})),
            "source",
        ),
        (
            envelope(
                "ECR Image Action",
                "aws.ecr",
                serde_json::json!({"result": "SUCCESS", "repository-name": "UPPER"}),
            ),
            "repository-name",
        ),
        (
            envelope(
                "ECR Image Action",
                "aws.ecr",
                serde_json::json!({"result": "SUCCESS", "repository-name": "rr", "image-digest": "sha256:short"}),
            ),
            "image-digest",
        ),
        (
            envelope(
                "ECR Image Scan",
                "aws.ecr",
                serde_json::json!({"repository-name": "rr"}),
            ),
            "image-digest",
        ),
    ] {
        match parse_message(&body) {
            Parsed::Unknown { reason, .. } => assert!(reason.contains(says), "{reason} lacks {says}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    let no_time = envelope("ECR Image Action", "aws.ecr", serde_json::json!({}))
        .replace("2019-11-16T01:54:34Z", "yesterday");
    assert!(matches!(parse_message(&no_time), Parsed::Unknown { .. }));
}

#[test]
fn an_image_action_without_a_digest_leaves_the_repository_to_the_next_pass() {
    let body = envelope(
        "ECR Image Action",
        "aws.ecr",
        serde_json::json!({"result": "SUCCESS", "repository-name": "rr", "action-type": "DELETE", "image-tag": "x"}),
    );
    assert_eq!(
        rereads(&body),
        vec![Reread::Backstop {
            repository: name("rr")
        }]
    );
}
