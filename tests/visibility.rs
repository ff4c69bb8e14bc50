//! Lists and streams leak nothing of other teams (docs/security.md, "List and
//! search RPCs never deny; they filter" and "Page tokens and stream
//! cursors"): a member of `payments` walks every list with `page_size` 1 to
//! 3, and nothing of team `search` may appear in any message or token (read
//! as raw bytes, tokens base64-decoded), nor may the number of pages depend
//! on what `search` holds. Tokens are sealed: shared by replicas and
//! restarts, refused when edited, truncated or sealed by another key.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::images::push;
use common::{
    ACCOUNT, Gateway, Moto, REGION, TestDb, as_user, config, ecr_client, seed_scan_findings,
    tagged_repository, unique, wait_for_audit_rows,
};
use ecr_gateway::pb;
use ecr_gateway::pb::audit_service_client::AuditServiceClient;
use ecr_gateway::pb::cleanup_service_client::CleanupServiceClient;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use ecr_gateway::pb::scan_service_client::ScanServiceClient;
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt as _;

const CVE: &str = "CVE-2023-44487";
const POLICY: &str = r#"{"rules":[{"rulePriority":1,"description":"expire untagged images after 30 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
/// The other team's member, whose own calls must not show either.
const SAM: &str = "sam@example.com";

fn alice<T>(message: T) -> tonic::Request<T> {
    as_user(message, "alice@example.com", "payments")
}

fn sam<T>(message: T) -> tonic::Request<T> {
    as_user(message, SAM, "search")
}

fn admin<T>(message: T) -> tonic::Request<T> {
    as_user(message, "root@example.com", "platform-admins")
}

fn in_days(days: i64) -> Option<prost_types::Timestamp> {
    let t = chrono::Utc::now() + chrono::Duration::days(days);
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

/// What a team holds, as the strings that must not reach another team.
#[derive(Default, Debug)]
struct Team {
    repositories: Vec<String>,
    digests: Vec<String>,
    runs: Vec<String>,
    exceptions: Vec<String>,
    holders: Vec<String>,
}

impl Team {
    fn secrets(&self) -> Vec<String> {
        [
            &self.repositories,
            &self.digests,
            &self.runs,
            &self.exceptions,
            &self.holders,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .chain([SAM.to_owned()])
        .collect()
    }
}

/// `count` repositories in `namespace`, each with an image (scanned, with a
/// finding of CVE), a pin, a dry-run cleanup run, an exception and a sync run.
async fn seed(gateway: &Gateway, moto: &str, namespace: &str, count: usize, team: &mut Team) {
    let ecr = ecr_client(moto).await;
    let channel = gateway.channel.clone();
    for _ in 0..count {
        let repository = unique(namespace, "visible");
        RepositoryServiceClient::new(channel.clone())
            .create_repository(admin(tagged_repository(&repository)))
            .await
            .expect("create");
        let digest = push(&ecr, &repository, "v1", &format!("{repository}-seed")).await;
        seed_scan_findings(moto, &repository, &digest, &[(CVE, "HIGH")]).await;
        ImageServiceClient::new(channel.clone())
            .refresh_inventory(admin(pb::RefreshInventoryRequest {
                repository: repository.clone(),
                ..Default::default()
            }))
            .await
            .expect("refresh");
        ScanServiceClient::new(channel.clone())
            .start_image_scan(admin(pb::StartImageScanRequest {
                repository: repository.clone(),
                digest: digest.clone(),
                ..Default::default()
            }))
            .await
            .expect("scan");
        let holder = format!("deploy/{namespace}/{}", &digest[7..19]);
        CleanupServiceClient::new(channel.clone())
            .pin_image(admin(pb::PinImageRequest {
                repository: repository.clone(),
                digest: digest.clone(),
                holder: holder.clone(),
                ..Default::default()
            }))
            .await
            .expect("pin");
        let run = CleanupServiceClient::new(channel.clone())
            .run_cleanup(admin(pb::RunCleanupRequest {
                repository: repository.clone(),
                policy_text: POLICY.into(),
                dry_run: true,
                ..Default::default()
            }))
            .await
            .expect("run")
            .into_inner();
        let exception = ScanServiceClient::new(channel.clone())
            .create_vulnerability_exception(admin(pb::CreateVulnerabilityExceptionRequest {
                cve_id: CVE.into(),
                scope: pb::ExceptionScope::Repository as i32,
                repository: repository.clone(),
                justification: "HTTP/2 is not exposed".into(),
                expire_time: in_days(7),
                ..Default::default()
            }))
            .await
            .expect("exception")
            .into_inner();
        // The other team's member reads its own repository: audit events by sam.
        if namespace == "search" {
            RepositoryServiceClient::new(channel.clone())
                .get_repository(sam(pb::GetRepositoryRequest {
                    repository: repository.clone(),
                    ..Default::default()
                }))
                .await
                .expect("sam reads his repository");
        }
        team.repositories.push(repository);
        team.digests.push(digest);
        team.runs.push(run.id);
        team.exceptions.push(exception.id);
        team.holders.push(holder);
    }
}

/// One page as the caller got it.
struct Page {
    encoded: Vec<u8>,
    token: String,
    items: usize,
}

/// Walks a list as alice from the first page to the last.
macro_rules! walk {
    ($client:expr, $method:ident, $items:ident, |$token:ident| $request:expr) => {{
        let mut client = $client;
        let mut pages = Vec::new();
        let mut $token = String::new();
        loop {
            let response = client
                .$method(alice($request))
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", stringify!($method)))
                .into_inner();
            let next = response.next_page_token.clone();
            pages.push(Page {
                encoded: response.encode_to_vec(),
                token: next.clone(),
                items: response.$items.len(),
            });
            assert!(pages.len() <= 50, "{} does not end", stringify!($method));
            if next.is_empty() {
                break;
            }
            $token = next;
        }
        pages
    }};
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Checks one walk: `expected` rows in full pages, nothing of `secrets`
/// anywhere, tokens opaque. Returns the number of pages.
fn check(what: &str, size: usize, pages: &[Page], expected: usize, secrets: &[String]) -> usize {
    let want_pages = expected.div_ceil(size).max(1);
    let counts: Vec<usize> = pages.iter().map(|p| p.items).collect();
    assert_eq!(
        pages.len(),
        want_pages,
        "{what} with page_size {size}: {expected} visible rows in {want_pages} pages, got {counts:?}"
    );
    assert_eq!(
        counts.iter().sum::<usize>(),
        expected,
        "{what} ({size}): {counts:?}"
    );
    for page in &pages[..pages.len() - 1] {
        assert_eq!(
            page.items, size,
            "{what} ({size}): every page but the last is full: {counts:?}"
        );
    }
    for page in pages {
        for secret in secrets {
            assert!(
                !contains(&page.encoded, secret),
                "{what} ({size}) shows `{secret}` of the other team"
            );
            assert!(
                !page.token.contains(secret.as_str()),
                "{what} ({size}): token names `{secret}`"
            );
        }
        if page.token.is_empty() {
            continue;
        }
        let bytes = URL_SAFE_NO_PAD.decode(&page.token).expect("a token is base64url");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&bytes).is_err(),
            "{what} ({size}): a token is not readable JSON: {}",
            String::from_utf8_lossy(&bytes)
        );
        for secret in secrets {
            assert!(
                !contains(&bytes, secret),
                "{what} ({size}): a decoded token holds `{secret}`"
            );
        }
    }
    pages.len()
}

/// Every list and search as alice, with page sizes 1 to 3; returns the page counts.
async fn walk_everything(gateway: &Gateway, payments: &Team, search: &Team) -> Vec<usize> {
    let secrets = search.secrets();
    let n = payments.repositories.len();
    let channel = gateway.channel.clone();
    let mut counts = Vec::new();
    for size in 1..=3usize {
        let page_size = size as i32;
        let pages = walk!(
            RepositoryServiceClient::new(channel.clone()),
            list_repositories,
            repositories,
            |token| pb::ListRepositoriesRequest {
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check("ListRepositories", size, &pages, n, &secrets));
        let pages = walk!(
            ImageServiceClient::new(channel.clone()),
            search_images,
            images,
            |token| pb::SearchImagesRequest {
                tag_glob: "v*".into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check("SearchImages by tag", size, &pages, n, &secrets));
        for digest in &search.digests {
            let pages = walk!(
                ImageServiceClient::new(channel.clone()),
                search_images,
                images,
                |token| pb::SearchImagesRequest {
                    digest: digest.clone(),
                    page_size,
                    page_token: token.clone(),
                    ..Default::default()
                }
            );
            check("SearchImages by a hidden digest", size, &pages, 0, &secrets);
        }
        let pages = walk!(
            ImageServiceClient::new(channel.clone()),
            search_images,
            images,
            |token| pb::SearchImagesRequest {
                repository_prefix: "search/".into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check(
            "SearchImages by a hidden prefix",
            size,
            &pages,
            0,
            &secrets,
        ));
        let pages = walk!(
            ScanServiceClient::new(channel.clone()),
            list_vulnerable_images,
            images,
            |token| pb::ListVulnerableImagesRequest {
                cve_id: CVE.into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check("ListVulnerableImages", size, &pages, n, &secrets));
        let pages = walk!(
            ScanServiceClient::new(channel.clone()),
            list_vulnerability_exceptions,
            exceptions,
            |token| pb::ListVulnerabilityExceptionsRequest {
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check("ListVulnerabilityExceptions", size, &pages, n, &secrets));
        let pages = walk!(
            CleanupServiceClient::new(channel.clone()),
            list_pins,
            pins,
            |token| pb::ListPinsRequest {
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check("ListPins", size, &pages, n, &secrets));
        for holder in &search.holders {
            let pages = walk!(
                CleanupServiceClient::new(channel.clone()),
                list_pins,
                pins,
                |token| pb::ListPinsRequest {
                    holder: holder.clone(),
                    page_size,
                    page_token: token.clone(),
                    ..Default::default()
                }
            );
            check("ListPins by a hidden holder", size, &pages, 0, &secrets);
        }
        let pages = walk!(
            CleanupServiceClient::new(channel.clone()),
            list_cleanup_runs,
            runs,
            |token| pb::ListCleanupRunsRequest {
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check("ListCleanupRuns", size, &pages, n, &secrets));
        let pages = walk!(
            AuditServiceClient::new(channel.clone()),
            lookup_audit_events,
            events,
            |token| pb::LookupAuditEventsRequest {
                event_name: "CreateRepository".into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check(
            "LookupAuditEvents by event name",
            size,
            &pages,
            n,
            &secrets,
        ));
        let pages = walk!(
            AuditServiceClient::new(channel.clone()),
            lookup_audit_events,
            events,
            |token| pb::LookupAuditEventsRequest {
                principal: SAM.into(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            }
        );
        counts.push(check(
            "LookupAuditEvents by a hidden principal",
            size,
            &pages,
            0,
            &secrets,
        ));
    }

    // GetSyncStatus: every caller may ask, but only readable repositories are named.
    let status = ImageServiceClient::new(channel.clone())
        .get_sync_status(alice(pb::GetSyncStatusRequest {
            limit: 100,
            ..Default::default()
        }))
        .await
        .expect("sync status")
        .into_inner();
    assert!(
        status
            .runs
            .iter()
            .all(|r| payments.repositories.contains(&r.repository)),
        "{:?}",
        status.runs.iter().map(|r| &r.repository).collect::<Vec<_>>()
    );
    let encoded = status.encode_to_vec();
    for secret in &secrets {
        assert!(!contains(&encoded, secret), "GetSyncStatus shows `{secret}`");
    }
    counts.push(status.runs.len());

    // The audit stream is the admins': the denial names nothing of search.
    let denied = AuditServiceClient::new(channel.clone())
        .stream_audit_events(alice(pb::StreamAuditEventsRequest::default()))
        .await
        .expect_err("alice may not stream the audit trail");
    assert_eq!(denied.code(), Code::PermissionDenied);
    for secret in &secrets {
        assert!(
            !denied.message().contains(secret.as_str()),
            "{}",
            denied.message()
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn another_teams_data_reaches_no_page_token_message_or_page_count() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let gateway = Gateway::start(config(&db, moto, "")).await;
    let (mut payments, mut search) = (Team::default(), Team::default());
    seed(&gateway, moto, "payments", 2, &mut payments).await;
    seed(&gateway, moto, "search", 3, &mut search).await;
    let pool = db.pool().await;
    let created = "event_name = 'CreateRepository' AND status = 'succeeded'";
    assert_eq!(wait_for_audit_rows(&pool, created, 5).await, 5);
    assert!(
        wait_for_audit_rows(&pool, &format!("principal = '{SAM}' AND status <> 'pending'"), 3).await >= 3
    );
    let before = walk_everything(&gateway, &payments, &search).await;

    // More hidden data changes nothing the payments member gets.
    seed(&gateway, moto, "search", 3, &mut search).await;
    assert_eq!(wait_for_audit_rows(&pool, created, 8).await, 8);
    assert!(
        wait_for_audit_rows(&pool, &format!("principal = '{SAM}' AND status <> 'pending'"), 6).await >= 6
    );
    let after = walk_everything(&gateway, &payments, &search).await;
    assert_eq!(before, after, "page counts depend on the other team's data");

    // Ids learned some other way turn into no names: denials name only the id.
    let secrets: Vec<String> = search.repositories.clone();
    let mut cleanup = CleanupServiceClient::new(gateway.channel.clone());
    let mut scans = ScanServiceClient::new(gateway.channel.clone());
    for (run, exception) in search.runs.iter().zip(&search.exceptions) {
        let denials = [
            cleanup
                .get_cleanup_run(alice(pb::GetCleanupRunRequest {
                    id: run.clone(),
                    ..Default::default()
                }))
                .await
                .expect_err("get a hidden run"),
            cleanup
                .cancel_cleanup_run(alice(pb::CancelCleanupRunRequest { id: run.clone() }))
                .await
                .expect_err("cancel a hidden run"),
            scans
                .revoke_vulnerability_exception(alice(pb::RevokeVulnerabilityExceptionRequest {
                    id: exception.clone(),
                    reason: "not ours".into(),
                }))
                .await
                .expect_err("revoke a hidden exception"),
        ];
        for denied in denials {
            assert_eq!(denied.code(), Code::PermissionDenied, "{}", denied.message());
            assert!(
                denied.message().contains("docs/security.md"),
                "{}",
                denied.message()
            );
            let mut everything = denied.message().as_bytes().to_vec();
            everything.extend_from_slice(denied.details());
            for secret in secrets.iter().map(String::as_str).chain(["search/"]) {
                assert!(
                    !contains(&everything, secret),
                    "a denial names `{secret}`: {}",
                    denied.message()
                );
            }
        }
    }
    // A caller who may read the run but not cancel it gets the full denial.
    let full = CleanupServiceClient::new(gateway.channel.clone())
        .cancel_cleanup_run(as_user(
            pb::CancelCleanupRunRequest {
                id: payments.runs[0].clone(),
            },
            "rita@example.com",
            "engineering",
        ))
        .await
        .expect_err("a reader may not cancel");
    assert_eq!(full.code(), Code::PermissionDenied);
    assert!(
        full.message().contains(&payments.repositories[0]),
        "{}",
        full.message()
    );
    gateway.stop().await.expect("stop");
}

/// The field and the description (with its `[rule]`) of an INVALID_ARGUMENT.
fn violation(status: &tonic::Status) -> (String, String) {
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let bad = status.get_details_bad_request().expect("BadRequest");
    let first = bad.field_violations.first().expect("a violation");
    (first.field.clone(), first.description.clone())
}

async fn list(gateway: &Gateway, token: &str) -> Result<pb::ListRepositoriesResponse, tonic::Status> {
    RepositoryServiceClient::new(gateway.channel.clone())
        .list_repositories(alice(pb::ListRepositoriesRequest {
            page_size: 1,
            page_token: token.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_tokens_open_on_every_replica_and_after_restarts_and_nowhere_else() {
    let db = TestDb::create().await;
    let moto = Moto::shared();
    let first = Gateway::start(config(&db, moto, "")).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let name = unique("payments", "sealed");
        first
            .repositories()
            .create_repository(admin(tagged_repository(&name)))
            .await
            .expect("create");
        names.push(name);
    }
    names.sort();
    let page1 = list(&first, "").await.expect("page 1");
    assert_eq!(page1.repositories[0].repository, names[0]);

    // Another replica (same database) continues the listing…
    let second = Gateway::start(config(&db, moto, "")).await;
    let page2 = list(&second, &page1.next_page_token)
        .await
        .expect("page 2 on another replica");
    assert_eq!(page2.repositories[0].repository, names[1]);
    // …and so does the first one after a restart.
    first.stop().await.expect("stop");
    let restarted = Gateway::start(config(&db, moto, "")).await;
    let page3 = list(&restarted, &page2.next_page_token)
        .await
        .expect("page 3 after a restart");
    assert_eq!(page3.repositories[0].repository, names[2]);
    assert!(page3.next_page_token.is_empty());

    // Edited (every character in turn), truncated, or of the old readable
    // format with another position: refused, naming page_token.
    let token = page1.next_page_token.clone();
    let mut forged = vec![
        token[..token.len() - 4].to_owned(),
        format!("{token}A"),
        URL_SAFE_NO_PAD.encode(
            serde_json::json!({"q": "0", "p": [ACCOUNT, REGION, names[1]]})
                .to_string()
                .as_bytes(),
        ),
    ];
    for index in (0..token.len()).step_by(3) {
        let mut chars: Vec<char> = token.chars().collect();
        chars[index] = if chars[index] == 'A' { 'B' } else { 'A' };
        forged.push(chars.into_iter().collect());
    }
    for bad in &forged {
        let refused = list(&second, bad).await.expect_err("a forged token");
        let (field, description) = violation(&refused);
        assert_eq!(field, "page_token");
        assert!(description.contains("[page-token.malformed]"), "{description}");
    }
    // A token of the same request with other filters: the mismatch is named.
    let mismatch = RepositoryServiceClient::new(second.channel.clone())
        .list_repositories(alice(pb::ListRepositoriesRequest {
            page_size: 1,
            prefix: "payments/".into(),
            page_token: token.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("other filters");
    let (field, description) = violation(&mismatch);
    assert_eq!(field, "page_token");
    assert!(
        description.contains("[page-token.query-mismatch]"),
        "{description}"
    );

    // A deployment with its own key (a key file) refuses this one's tokens and opens its own.
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("page-token.key");
    std::fs::write(&key_file, format!("{}\n", hex::encode([0x5au8; 32]))).expect("key file");
    let other_db = TestDb::create().await;
    let mut keyed = config(&other_db, moto, "");
    keyed.server.page_token_key_file = Some(key_file.clone());
    let foreign = Gateway::start(keyed).await;
    let refused = list(&foreign, &token).await.expect_err("a foreign token");
    let (field, description) = violation(&refused);
    assert_eq!(field, "page_token");
    assert!(description.contains("[page-token.malformed]"), "{description}");
    for _ in 0..2 {
        foreign
            .repositories()
            .create_repository(admin(tagged_repository(&unique("payments", "keyed"))))
            .await
            .expect("create");
    }
    let own = list(&foreign, "").await.expect("first page");
    let next = list(&foreign, &own.next_page_token)
        .await
        .expect("its own token opens");
    assert_eq!(next.repositories.len(), 1);
    foreign.stop().await.expect("stop");

    // Stream cursors are sealed the same way: one replica's cursor resumes on
    // another, an edited one is refused naming `cursor`.
    let pool = db.pool().await;
    wait_for_audit_rows(&pool, "event_id IN (SELECT event_id FROM audit_chain_links)", 1).await;
    let mut stream = AuditServiceClient::new(restarted.channel.clone())
        .stream_audit_events(admin(pb::StreamAuditEventsRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 3600,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect("stream")
        .into_inner();
    let cursor = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("stream")
        .expect("an event")
        .cursor;
    drop(stream);
    assert!(!cursor.starts_with("seq:"), "{cursor}");
    AuditServiceClient::new(second.channel.clone())
        .stream_audit_events(admin(pb::StreamAuditEventsRequest {
            cursor: cursor.clone(),
            ..Default::default()
        }))
        .await
        .expect("another replica resumes from the cursor");
    let mut chars: Vec<char> = cursor.chars().collect();
    let last = chars.len() - 2;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    let edited: String = chars.into_iter().collect();
    for bad in [edited, "seq:1".to_owned()] {
        let refused = AuditServiceClient::new(second.channel.clone())
            .stream_audit_events(admin(pb::StreamAuditEventsRequest {
                cursor: bad,
                ..Default::default()
            }))
            .await
            .expect_err("an edited cursor");
        assert_eq!(violation(&refused).0, "cursor");
    }
    second.stop().await.expect("stop");
    restarted.stop().await.expect("stop");
}
