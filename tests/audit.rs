//! The audit trail through AuditService and the CLI, against Postgres and
//! moto: lookups by each attribute, a live stream that is cut and resumed,
//! the hash chain verified in the database and offline, tampering caught and
//! located, and finalised events that cannot be changed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, Moto, TestDb, as_user, config, config_text, tagged_repository, unique, violations};
use ecr_gateway::pb;
use ecr_gateway::pb::audit_service_client::AuditServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn auditor<T>(message: T) -> tonic::Request<T> {
    as_user(message, "security-auditor", "security")
}

fn audit(channel: &Channel) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(channel.clone())
}

async fn create(channel: &Channel, principal: &str, name: &str) -> Result<(), tonic::Status> {
    RepositoryServiceClient::new(channel.clone())
        .create_repository(as_user(tagged_repository(name), principal, "payments"))
        .await
        .map(|_| ())
}

async fn get(channel: &Channel, principal: &str, name: &str) {
    RepositoryServiceClient::new(channel.clone())
        .get_repository(as_user(
            pb::GetRepositoryRequest {
                repository: name.into(),
                ..Default::default()
            },
            principal,
            "payments",
        ))
        .await
        .expect("get");
}

async fn lookup(channel: &Channel, request: pb::LookupAuditEventsRequest) -> Vec<pb::AuditEvent> {
    audit(channel)
        .lookup_audit_events(auditor(request))
        .await
        .expect("lookup")
        .into_inner()
        .events
}

/// Waits until `principal`'s finalised events number `n` and are chained.
async fn settled(channel: &Channel, principal: &str, n: usize) -> Vec<pb::AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = lookup(
            channel,
            pb::LookupAuditEventsRequest {
                principal: principal.into(),
                ..Default::default()
            },
        )
        .await;
        if events.len() >= n && events.iter().all(|e| e.sequence > 0) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{principal}: {} of {n} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_filter_by_every_attribute_and_page_newest_first() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let channel = gateway.channel.clone();
    let (alice, bob, carol) = ("alice@example.com", "bob@example.com", "carol@example.com");
    let repo = unique("payments", "audit");
    create(&channel, alice, &repo).await.expect("create");
    for _ in 0..3 {
        get(&channel, bob, &repo).await;
    }
    let refused = create(&channel, carol, "Not A Name").await.expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    settled(&channel, alice, 1).await;
    settled(&channel, bob, 3).await;
    settled(&channel, carol, 1).await;

    let arn = format!(
        "arn:aws:ecr:{}:{}:repository/{repo}",
        common::REGION,
        common::ACCOUNT
    );
    let count = async |request: pb::LookupAuditEventsRequest| lookup(&channel, request).await.len();
    let by = |principal: &str| pb::LookupAuditEventsRequest {
        principal: principal.into(),
        ..Default::default()
    };
    assert_eq!(count(by(bob)).await, 3);
    assert_eq!(
        count(pb::LookupAuditEventsRequest {
            event_name: "GetRepository".into(),
            ..by(bob)
        })
        .await,
        3
    );
    assert_eq!(
        count(pb::LookupAuditEventsRequest {
            resource_arn: arn.clone(),
            ..Default::default()
        })
        .await,
        4,
        "alice's create and bob's three reads name the repository"
    );
    assert_eq!(
        count(pb::LookupAuditEventsRequest {
            resource_arn: arn[..arn.len() - 4].to_owned(),
            resource_prefix: true,
            principal: alice.into(),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        count(pb::LookupAuditEventsRequest {
            read_only: pb::ReadOnlyFilter::False as i32,
            registry: "main".into(),
            resource_arn: arn.clone(),
            ..Default::default()
        })
        .await,
        1
    );
    let errors = lookup(
        &channel,
        pb::LookupAuditEventsRequest {
            error_code: "*".into(),
            ..by(carol)
        },
    )
    .await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error_code, "InvalidArgument");
    assert_eq!(errors[0].user_identity.as_ref().unwrap().principal_id, carol);
    assert_eq!(
        count(pb::LookupAuditEventsRequest {
            error_code: "InvalidArgument".into(),
            ..by(bob)
        })
        .await,
        0
    );
    // A time range that ends before the calls holds none of them.
    assert_eq!(
        count(pb::LookupAuditEventsRequest {
            end_time: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 3600,
                nanos: 0
            }),
            ..by(bob)
        })
        .await,
        0
    );

    // Pages of one, newest first, each event once.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit(&channel)
            .lookup_audit_events(auditor(pb::LookupAuditEventsRequest {
                page_size: 1,
                page_token,
                ..by(bob)
            }))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token.clone();
        // The token is bound to its filters.
        let reused = audit(&channel)
            .lookup_audit_events(auditor(pb::LookupAuditEventsRequest {
                page_token: page.next_page_token,
                ..by(alice)
            }))
            .await
            .expect_err("other filters");
        assert_eq!(reused.code(), Code::InvalidArgument);
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.windows(2).all(|w| {
        let (a, b) = (w[0].event_time.unwrap(), w[1].event_time.unwrap());
        (a.seconds, a.nanos) >= (b.seconds, b.nanos)
    }));

    // Bad filters name the field.
    let bad = audit(&channel)
        .lookup_audit_events(auditor(pb::LookupAuditEventsRequest {
            resource_prefix: true,
            registry: "nope".into(),
            principal: "a\u{7}b".into(),
            page_size: -1,
            start_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 50,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect_err("bad filters");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&bad).into_iter().map(|v| v.0).collect();
    for field in ["resource_arn", "registry", "principal", "page_size", "end_time"] {
        assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
    }
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_and_resumed_sees_every_event_exactly_once() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let channel = gateway.channel.clone();
    let dave = "dave@example.com";
    let repo = unique("payments", "stream");
    create(&channel, "alice@example.com", &repo)
        .await
        .expect("create");

    let mut stream = audit(&channel)
        .stream_audit_events(auditor(pb::StreamAuditEventsRequest {
            principal: dave.into(),
            ..Default::default()
        }))
        .await
        .expect("stream")
        .into_inner();
    for _ in 0..3 {
        get(&channel, dave, &repo).await;
    }
    let mut received = Vec::new();
    let mut cursor = String::new();
    for _ in 0..2 {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok");
        received.push(item.event.unwrap().event_id);
        cursor = item.cursor;
    }
    drop(stream);
    for _ in 0..2 {
        get(&channel, dave, &repo).await;
    }
    let mut resumed = audit(&channel)
        .stream_audit_events(auditor(pb::StreamAuditEventsRequest {
            principal: dave.into(),
            cursor,
            ..Default::default()
        }))
        .await
        .expect("resume")
        .into_inner();
    for _ in 0..3 {
        let item = tokio::time::timeout(Duration::from_secs(20), resumed.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok");
        received.push(item.event.unwrap().event_id);
    }
    let extra = tokio::time::timeout(Duration::from_millis(800), resumed.next()).await;
    assert!(extra.is_err(), "no duplicate or stray event: {extra:?}");
    let stored: Vec<String> = settled(&channel, dave, 5)
        .await
        .into_iter()
        .rev()
        .map(|e| e.event_id)
        .collect();
    let mut sorted_received = received.clone();
    sorted_received.sort();
    let mut sorted_stored = stored.clone();
    sorted_stored.sort();
    assert_eq!(
        sorted_received, sorted_stored,
        "each of dave's five events exactly once"
    );

    let bad = audit(&channel)
        .stream_audit_events(auditor(pb::StreamAuditEventsRequest {
            cursor: "12".into(),
            start_event_id: "x".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad start");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&bad).into_iter().map(|v| v.0).collect();
    assert!(
        fields.contains(&"cursor".to_owned()) && fields.contains(&"start_event_id".to_owned()),
        "{fields:?}"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chain_verifies_in_the_database_and_offline_and_tampering_is_located() {
    let db = TestDb::create().await;
    // A signing key from the CLI; the head is signed every second.
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("audit.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
        .args(["audit", "keygen", "--out"])
        .arg(&key_path)
        .output()
        .expect("keygen");
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let public_key = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();
    assert_eq!(public_key.len(), 64);
    let signing = format!(
        "[audit]\nsigning_key_file = \"{}\"\ndigest_interval_seconds = 1\n",
        key_path.display()
    );
    let gateway = Gateway::start(config(&db, Moto::shared(), &signing)).await;
    let channel = gateway.channel.clone();
    let erin = "erin@example.com";
    let repo = unique("payments", "chain");
    create(&channel, erin, &repo).await.expect("create");
    for _ in 0..4 {
        get(&channel, erin, &repo).await;
    }
    let events = settled(&channel, erin, 5).await;
    let newest = events.iter().map(|e| e.sequence).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let valid = loop {
        let answer = audit(&channel)
            .verify_audit_log(auditor(pb::VerifyAuditLogRequest::default()))
            .await
            .expect("verify")
            .into_inner();
        // Sequences 1..=checked were checked; all but the unsigned tail are under a signature.
        if answer.digests_checked > 0 && answer.checked - answer.unsigned_tail >= newest {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no signed digest covers erin's events: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(valid.valid, "{valid:?}");
    assert!(valid.checked >= 5);

    // Finalised events and links cannot be changed or removed.
    let pool = db.pool().await;
    for statement in [
        "UPDATE audit_events SET principal = 'mallory' WHERE principal = 'erin@example.com'",
        "DELETE FROM audit_events WHERE principal = 'erin@example.com'",
        "UPDATE audit_chain_links SET hash = '\\x00' WHERE seq = 1",
        "DELETE FROM audit_chain_links WHERE seq = 1",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        assert!(
            error.to_string().contains("append-only") || error.to_string().contains("final"),
            "{error}"
        );
    }

    // Export through the CLI, verify offline, then tamper with copies.
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config_text(&db, Moto::shared(), &signing)).expect("config");
    let export = dir.path().join("audit.jsonl");
    let exported = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
        .args(["audit", "export", "--from", "2000-01-01T00:00:00Z", "--output"])
        .arg(&export)
        .arg("--config")
        .arg(&config_path)
        .output()
        .expect("export");
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let verify = |path: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
            .args(["audit", "verify", "--public-key", &public_key])
            .arg(path)
            .output()
            .expect("verify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = verify(&export);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("signed digests match"), "{text}");
    let all: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (digest_lines, lines): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|l| l.starts_with("{\"digest\""));
    assert!(!digest_lines.is_empty(), "the export carries the signed digests");
    assert!(lines.len() >= 5);
    let target: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let target_id = target["eventID"].as_str().unwrap().to_owned();
    let tampered = |name: &str, lines: Vec<String>| {
        let path = dir.path().join(name);
        let text = lines
            .iter()
            .chain(&digest_lines)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, text + "\n").unwrap();
        verify(&path)
    };
    let mut edited = lines.clone();
    edited[2] = edited[2].replace(
        &format!(
            "\"principalId\":\"{}\"",
            target["userIdentity"]["principalId"].as_str().unwrap()
        ),
        "\"principalId\":\"mallory\"",
    );
    let (code, text) = tampered("edited.jsonl", edited);
    assert_eq!(code, Some(1));
    assert!(text.contains(&target_id) && text.contains("modified"), "{text}");
    let mut dropped = lines.clone();
    dropped.remove(2);
    let (code, text) = tampered("dropped.jsonl", dropped);
    assert_eq!(code, Some(1));
    assert!(text.contains("removed"), "{text}");
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let (code, text) = tampered("swapped.jsonl", swapped);
    assert_eq!(code, Some(1));
    assert!(text.contains("reordered"), "{text}");
    let mut inserted = lines.clone();
    inserted.insert(2, lines[4].clone());
    let (code, text) = tampered("inserted.jsonl", inserted);
    assert_eq!(code, Some(1));
    assert!(text.contains("reordered") || text.contains("inserted"), "{text}");
    // A forged event with a link right in itself (the sequence and previous
    // hash of the event whose place it takes, its own hash) is named, not
    // the genuine event after it, with or without the key.
    let mut forged = target.clone();
    let forged_id = uuid::Uuid::now_v7().to_string();
    forged["eventID"] = serde_json::json!(forged_id);
    forged["userIdentity"]["principalId"] = serde_json::json!("mallory");
    let mut event = forged.clone();
    event.as_object_mut().unwrap().remove("chain");
    let previous = hex::decode(forged["chain"]["previousHash"].as_str().unwrap()).unwrap();
    forged["chain"]["hash"] =
        serde_json::json!(hex::encode(ecr_gateway::audit::chain::link(&previous, &event)));
    let mut self_consistent = lines.clone();
    self_consistent.insert(2, forged.to_string());
    let (code, text) = tampered("self-consistent.jsonl", self_consistent);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("broken (inserted): event {forged_id}")),
        "{text}"
    );
    assert!(
        !text.contains(&target_id),
        "the genuine event is not blamed: {text}"
    );
    let unkeyed = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
        .args(["audit", "verify"])
        .arg(dir.path().join("self-consistent.jsonl"))
        .output()
        .expect("verify");
    let text = String::from_utf8_lossy(&unkeyed.stdout);
    assert_eq!(unkeyed.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("broken (inserted): event {forged_id}")),
        "{text}"
    );

    // Editing an event and recomputing every later hash keeps the links
    // consistent, but not the signed digests.
    let mut recomputed: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    recomputed[1]["userIdentity"]["principalId"] = serde_json::json!("mallory");
    let mut previous = hex::decode(recomputed[1]["chain"]["previousHash"].as_str().unwrap()).unwrap();
    for line in recomputed.iter_mut().skip(1) {
        let mut event = line.clone();
        event.as_object_mut().unwrap().remove("chain");
        let hash = ecr_gateway::audit::chain::link(&previous, &event);
        line["chain"]["previousHash"] = serde_json::json!(hex::encode(&previous));
        line["chain"]["hash"] = serde_json::json!(hex::encode(&hash));
        previous = hash;
    }
    let (code, text) = tampered(
        "recomputed.jsonl",
        recomputed.iter().map(|v| v.to_string()).collect(),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("signature") && text.contains("recomputed"),
        "{text}"
    );

    // A change made behind the triggers' back shows in VerifyAuditLog, at its sequence.
    let victim = events.last().expect("an event");
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET principal = 'mallory' WHERE event_id = $1::uuid")
        .bind(&victim.event_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let broken = audit(&channel)
        .verify_audit_log(auditor(pb::VerifyAuditLogRequest::default()))
        .await
        .expect("verify")
        .into_inner();
    assert!(!broken.valid);
    assert_eq!(
        (
            broken.first_bad_sequence,
            broken.first_bad_event_id.as_str(),
            broken.problem.as_str()
        ),
        (victim.sequence, victim.event_id.as_str(), "modified")
    );
    gateway.stop().await.unwrap();
}

/// A finished record from `principal`, with `parameters` as its request.
fn record(principal: &str, parameters: serde_json::Value) -> ecr_gateway::domain::AuditRecord {
    use ecr_gateway::domain::{AuditOutcome, AuditRecord, AuditStatus, Identity};
    AuditRecord {
        event_id: uuid::Uuid::now_v7(),
        event_time: chrono::Utc::now(),
        event_name: "GetRepository".into(),
        read_only: true,
        identity: Identity {
            principal: principal.into(),
            principal_type: "User".into(),
            groups: vec!["payments".into()],
            auth_method: "insecure-dev".into(),
        },
        source_ip: None,
        user_agent: Some("test-agent".into()),
        registry: None,
        gateway_request_id: uuid::Uuid::new_v4(),
        client_request_id: None,
        request_parameters: parameters,
        resources: Vec::new(),
        authorization: None,
        outcome: AuditOutcome {
            status: AuditStatus::Succeeded,
            response_elements: None,
            error_code: None,
            error_message: None,
            ecr_request_ids: Vec::new(),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_postgres_cannot_store_is_kept_without_its_free_text_and_does_not_stall_the_writer() {
    let db = TestDb::create().await;
    let (pool, store) = db.migrated().await;
    let (log, writer) = ecr_gateway::audit::AuditLog::start(store);
    // Postgres cannot store U+0000 in text or jsonb: the middle record of the
    // batch is refused (the gateway's own calls replace it before this point).
    log.record(record(
        "writer-a",
        serde_json::json!({"repositoryName": "payments/a"}),
    ))
    .await;
    log.record(record(
        "writer-b",
        serde_json::json!({"repositoryName": "pay\u{0}ments"}),
    ))
    .await;
    log.record(record(
        "writer-c",
        serde_json::json!({"repositoryName": "payments/c"}),
    ))
    .await;
    drop(log);
    writer.shutdown(Duration::from_secs(20)).await;
    let rows: Vec<(String, serde_json::Value, Option<String>)> = sqlx::query_as(
        "SELECT principal, request_parameters, user_agent FROM audit_events WHERE principal LIKE 'writer-%' \
         ORDER BY principal",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "every record is stored: {rows:?}");
    assert_eq!(rows[0].1["repositoryName"], "payments/a");
    assert_eq!(rows[1].1["unstorable"], true, "{rows:?}");
    assert!(rows[1].1["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(rows[1].2, None);
    assert_eq!(rows[2].1["repositoryName"], "payments/c");
}

/// The writer runs on a thread of its own ("audit-writer") at a lower CPU
/// priority than the threads serving calls (nice + 10), and shutting it down
/// drains what was queued through its own connections.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn the_writer_runs_on_its_own_thread_at_a_lower_priority_and_drains() {
    fn nice_of(stat: &str) -> i64 {
        // Fields after the command's closing parenthesis; nice is field 19.
        let rest = &stat[stat.rfind(')').expect("stat") + 1..];
        rest.split_whitespace()
            .nth(16)
            .expect("nice")
            .parse()
            .expect("number")
    }
    let db = TestDb::create().await;
    let (pool, store) = db.migrated().await;
    let ours = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let (log, writer) = ecr_gateway::audit::AuditLog::start(store);
    let mut writers = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "audit-writer") {
            // The thread lowers its priority as it starts. Other tests'
            // writers may end meanwhile (their stat is gone then).
            let mut nice = Some(ours);
            for _ in 0..100 {
                nice = std::fs::read_to_string(dir.join("stat"))
                    .ok()
                    .map(|stat| nice_of(&stat));
                if nice != Some(ours) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            writers.extend(nice);
        }
    }
    assert!(!writers.is_empty(), "no audit-writer thread");
    assert!(
        writers.iter().all(|&nice| nice == (ours + 10).min(19)),
        "writer threads' nice values {writers:?}, the test's {ours}"
    );
    for i in 0..1200 {
        log.record(record("drained", serde_json::json!({"i": i}))).await;
    }
    drop(log);
    writer.shutdown(Duration::from_secs(30)).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE principal = 'drained'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1200, "shutdown returned before the queue was written");
    let linked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_chain_links l JOIN audit_events e USING (event_id) WHERE e.principal = 'drained'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(linked, 1200);
}

/// Read calls' records are linked into the chain in the transaction that
/// writes them: no chain queue, nothing linked twice when a batch is sent
/// again (a retry after a commit whose answer was lost), and batches written
/// at once interleave with the chainer's mutation events into one gapless
/// chain that verifies.
#[tokio::test(flavor = "multi_thread")]
async fn written_batches_are_linked_in_their_own_transaction_once() {
    use ecr_gateway::audit::chain;
    use ecr_gateway::store::audit_events::FinalBatch;
    use ecr_gateway::store::{audit_trail, insert_final_batch};
    let db = TestDb::create().await;
    let (pool, store) = db.migrated().await;
    let queued = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_chain_queue")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    let mut first: Vec<_> = (0..50)
        .map(|i| {
            record(
                "batch-a",
                serde_json::json!({"i": i, "nested": {"b": [1, 2.5, "x"], "a": null}}),
            )
        })
        .collect();
    // Groups and ECR request ids that an array literal must quote and escape.
    let awkward = vec![
        "NULL".to_owned(),
        String::new(),
        " spaced ".to_owned(),
        "a,b".to_owned(),
        "{braces}".to_owned(),
        "quote\"d".to_owned(),
        "back\\slash\\".to_owned(),
        "é😀".to_owned(),
    ];
    first[7].identity.groups = awkward.clone();
    first[7].outcome.ecr_request_ids = awkward.iter().rev().cloned().collect();
    first[8].identity.groups = Vec::new();
    insert_final_batch(
        &pool,
        &FinalBatch::new(first.clone(), chain::LINKER),
        chain::LINKER,
    )
    .await
    .unwrap();
    assert_eq!(
        queued().await,
        0,
        "a written batch does not pass through the queue"
    );
    let (groups, ecr_ids): (Vec<String>, Vec<String>) =
        sqlx::query_as("SELECT groups, ecr_request_ids FROM audit_events WHERE event_id = $1")
            .bind(first[7].event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(groups, awkward);
    assert_eq!(ecr_ids, awkward.iter().rev().cloned().collect::<Vec<_>>());
    let none: Vec<String> = sqlx::query_scalar("SELECT groups FROM audit_events WHERE event_id = $1")
        .bind(first[8].event_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(none.is_empty());
    let (seq, _) = audit_trail::head_with_hash(&pool).await.unwrap();
    assert_eq!(seq, 50, "the batch is chained as it is written");
    insert_final_batch(&pool, &FinalBatch::new(first, chain::LINKER), chain::LINKER)
        .await
        .unwrap();
    assert_eq!(
        audit_trail::head_with_hash(&pool).await.unwrap().0,
        50,
        "a batch sent again is not linked again"
    );

    // Eight writers at once, and a mutation's event finalised through the queue meanwhile.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let pool = pool.clone();
        writers.spawn(async move {
            for b in 0..5 {
                let batch: Vec<_> = (0..20)
                    .map(|i| record(&format!("batch-w{w}"), serde_json::json!({"b": b, "i": i})))
                    .collect();
                insert_final_batch(&pool, &FinalBatch::new(batch, chain::LINKER), chain::LINKER)
                    .await
                    .unwrap();
            }
        });
    }
    let mut pending = record("mutator", serde_json::json!({"repositoryName": "payments/m"}));
    pending.read_only = false;
    pending.outcome.status = ecr_gateway::domain::AuditStatus::Pending;
    let mut tx = store.begin().await.unwrap();
    ecr_gateway::store::audit_events::insert(&mut tx, &pending)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let outcome = ecr_gateway::domain::AuditOutcome {
        status: ecr_gateway::domain::AuditStatus::Succeeded,
        ..pending.outcome.clone()
    };
    assert!(
        ecr_gateway::store::audit_events::finalize(&mut tx, pending.event_id, &outcome)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    assert_eq!(queued().await, 1, "a mutation's event is chained by the chainer");
    while audit_trail::chain_step(&pool, 1000, chain::LINKER).await.unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while writers.join_next().await.is_some() {}

    let (rows, upto) = audit_trail::chained_after(&pool, &Default::default(), 0, 10_000)
        .await
        .unwrap();
    assert_eq!(upto, 50 + 8 * 5 * 20 + 1);
    assert_eq!(rows.len() as i64, upto, "every event has one link");
    let links: Vec<chain::Link> = rows.iter().map(chain::Link::from_row).collect();
    let verdict = chain::verify(&links, None);
    assert_eq!(verdict.first_bad, None, "{verdict:?}");
    assert_eq!(verdict.checked as i64, upto);
    assert_eq!(queued().await, 0);
}

/// The writer links a batch from the canonical forms it computed before
/// sending it (no `RETURNING`): each must be, byte for byte, that of the row
/// Postgres stores. Awkward values of every column; a record with a
/// non-integer JSON number, which jsonb could store differently, has no
/// form computed ahead and its batch is linked from the stored rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_records_canonical_form_computed_before_it_is_stored_is_the_stored_rows() {
    use ecr_gateway::audit::chain;
    use ecr_gateway::domain::{AuditResource, RegistryRef};
    use ecr_gateway::store::audit_events::FinalBatch;
    use ecr_gateway::store::{audit_trail, insert_final_batch};
    let db = TestDb::create().await;
    let (pool, _) = db.migrated().await;

    let text = "quote\" back\\slash \u{1}\t\n\u{7f} \u{2028} é😀 </script> {\"a\":1}";
    let mut records = Vec::new();
    let mut full = record(
        text,
        serde_json::json!({
            "max": u64::MAX, "min": i64::MIN, "zero": 0, "negative": -1,
            "text": text, "empty": {}, "none": [], "nested": [[{"z": null, "a": [true, false]}]],
            "null": null, "keys": {"b": 1, "a": 2, "": 3, "é": 4, "A": 5}
        }),
    );
    full.event_time = chrono::DateTime::from_timestamp(1_790_000_000, 123_456_789).unwrap();
    full.identity.groups = vec![text.to_owned(), String::new(), "NULL".into()];
    full.identity.principal_type = "Service".into();
    full.identity.auth_method = "internal".into();
    full.source_ip = Some("2001:db8::1".into());
    full.user_agent = Some(text.into());
    full.registry = Some(RegistryRef {
        alias: "main".into(),
        account_id: "123456789012".into(),
        region: "eu-west-1".into(),
    });
    full.client_request_id = Some(text.into());
    full.resources = vec![AuditResource {
        resource_type: "AWS::ECR::Repository".into(),
        arn: format!("arn:aws:ecr:eu-west-1:123456789012:repository/{text}"),
    }];
    full.authorization = Some(serde_json::json!({"decision": "allow", "policies": ["p1", text]}));
    full.outcome.status = ecr_gateway::domain::AuditStatus::Failed;
    full.outcome.response_elements = Some(serde_json::json!({"digest": "sha256:00", "count": 3}));
    full.outcome.error_code = Some("InvalidArgument".into());
    full.outcome.error_message = Some(text.into());
    full.outcome.ecr_request_ids = vec![text.into()];
    records.push(full);
    let mut nulls = record("nulls", serde_json::Value::Null);
    nulls.event_name = "BatchDeleteImage".into();
    nulls.authorization = Some(serde_json::Value::Null);
    nulls.outcome.response_elements = Some(serde_json::Value::Null);
    nulls.user_agent = None;
    records.push(nulls);
    records.push(record("strings", serde_json::json!("just a string")));
    for r in &records {
        let resources = serde_json::to_value(&r.resources).unwrap();
        assert!((chain::LINKER.record)(r, &resources).is_some(), "{r:?}");
    }
    insert_final_batch(
        &pool,
        &FinalBatch::new(records.clone(), chain::LINKER),
        chain::LINKER,
    )
    .await
    .unwrap();
    let mut floats = vec![
        record("floats", serde_json::json!({"score": 1e16})),
        record("floats", serde_json::json!({"score": -0.0})),
        record("floats", serde_json::json!({"score": 7.5})),
    ];
    for r in &floats {
        assert_eq!((chain::LINKER.record)(r, &serde_json::json!([])), None, "{r:?}");
    }
    floats.push(record("floats", serde_json::json!({"i": 1})));
    insert_final_batch(
        &pool,
        &FinalBatch::new(floats.clone(), chain::LINKER),
        chain::LINKER,
    )
    .await
    .unwrap();

    let (rows, upto) = audit_trail::chained_after(&pool, &Default::default(), 0, 100)
        .await
        .unwrap();
    assert_eq!(upto, 7);
    assert_eq!(rows.len(), 7, "every record stored and linked once");
    for r in &records {
        let row = rows
            .iter()
            .find(|row| row.event_id == r.event_id)
            .expect("stored");
        let resources = serde_json::to_value(&r.resources).unwrap();
        let sent = (chain::LINKER.record)(r, &resources).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&chain::canonical_row(row)),
            "{r:?}"
        );
    }
    let stored: serde_json::Value = sqlx::query_scalar(
        "SELECT request_parameters FROM audit_events WHERE request_parameters ? 'score' LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(stored["score"].is_number());
    let links: Vec<chain::Link> = rows.iter().map(chain::Link::from_row).collect();
    let verdict = chain::verify(&links, None);
    assert_eq!(verdict.first_bad, None, "{verdict:?}");
    assert_eq!(verdict.checked, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_stay_stable_while_new_events_arrive() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let channel = gateway.channel.clone();
    let pager = "pager@example.com";
    let repo = unique("payments", "paging");
    create(&channel, pager, &repo).await.expect("create");
    for _ in 0..9 {
        get(&channel, pager, &repo).await;
    }
    let before: std::collections::BTreeSet<String> = settled(&channel, pager, 10)
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();

    // The same principal keeps calling while another pages through its events.
    let writing = tokio::spawn({
        let (channel, repo) = (channel.clone(), repo.clone());
        async move {
            loop {
                get(&channel, pager, &repo).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit(&channel)
            .lookup_audit_events(auditor(pb::LookupAuditEventsRequest {
                principal: pager.into(),
                page_size: 2,
                page_token,
                ..Default::default()
            }))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.events.into_iter().map(|e| e.event_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writing.abort();
    let unique_seen: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique_seen.len(), seen.len(), "an event was on two pages");
    assert!(
        before.is_subset(&unique_seen),
        "events that existed before paging began were skipped"
    );
    gateway.stop().await.unwrap();
}

/// A gRPC codec for messages already encoded (the walk below builds them from the descriptors).
#[derive(Debug, Clone, Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        let message = src.copy_to_bytes(src.remaining()).to_vec();
        Ok(Some(message))
    }
}

/// A message holding only string field `number` = `value`, protobuf-encoded.
fn only_string_field(number: i32, value: &str) -> Vec<u8> {
    let mut encoded = Vec::new();
    let varint = |mut n: u64, out: &mut Vec<u8>| {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    };
    varint(((number as u64) << 3) | 2, &mut encoded);
    varint(value.len() as u64, &mut encoded);
    encoded.extend_from_slice(value.as_bytes());
    encoded
}

/// Every RPC of the API whose request has a `request_id`, from the
/// descriptors: `(path, method, request_id's field number)`.
fn rpcs_taking_a_request_id() -> Vec<(String, String, i32)> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(ecr_gateway::server::FILE_DESCRIPTOR_SET)
        .expect("descriptors");
    let messages: Vec<_> = set.file.iter().flat_map(|f| f.message_type.iter()).collect();
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "ecrgateway.v1") {
        for service in &file.service {
            for method in &service.method {
                let input = method.input_type().rsplit('.').next().expect("input name");
                let message = messages
                    .iter()
                    .find(|m| m.name() == input)
                    .expect("input message");
                if let Some(field) = message.field.iter().find(|f| f.name() == "request_id") {
                    rpcs.push((
                        format!("/ecrgateway.v1.{}/{}", service.name(), method.name()),
                        method.name().to_owned(),
                        field.number(),
                    ));
                }
            }
        }
    }
    rpcs
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_that_takes_a_request_id_records_it_as_the_events_client_request_id() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    let walker = "walker@example.com";
    let rpcs = rpcs_taking_a_request_id();
    let names: Vec<&str> = rpcs.iter().map(|(_, name, _)| name.as_str()).collect();
    for named in [
        "CreateRepository",
        "SetLifecyclePolicy",
        "DeleteLifecyclePolicy",
        "DeleteImages",
        "RunCleanup",
    ] {
        assert!(names.contains(&named), "{named} takes a request_id: {names:?}");
    }

    for (path, name, number) in &rpcs {
        // Only the key: the call is refused (the request lacks what it needs),
        // and its event must still say which request it was.
        let request = as_user(
            only_string_field(*number, &format!("walk-{name}")),
            walker,
            "payments",
        );
        let mut grpc = tonic::client::Grpc::new(gateway.channel.clone());
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::try_from(path.as_str()).expect("path");
        let answer = grpc.unary(request, path, Encoded).await;
        if let Err(status) = answer {
            assert_ne!(status.code(), Code::Unimplemented, "{name}: {status:?}");
        }
    }
    let events = settled(&gateway.channel, walker, rpcs.len()).await;

    for (_, name, _) in &rpcs {
        let event = events
            .iter()
            .find(|e| &e.event_name == name)
            .unwrap_or_else(|| panic!("{name} was audited"));
        assert_eq!(
            event.client_request_id,
            format!("walk-{name}"),
            "{name}'s event names the caller's request_id"
        );
    }
    gateway.stop().await.expect("clean stop");
}
