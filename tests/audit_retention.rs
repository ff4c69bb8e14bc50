//! Audit retention against Postgres and moto: a gateway archives and purges
//! events past their age, the remaining chain still verifies in the database,
//! the archives and a later export verify offline as one signed chain,
//! nothing a sink has not delivered is purged, and the database accepts only
//! purges that continue the chain's recorded prefix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Gateway, Moto, TestDb, as_user, config, config_text, tagged_repository, unique, violations};
use ecr_gateway::pb;
use ecr_gateway::pb::audit_service_client::AuditServiceClient;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn gateway_cli(args: &[&str], config: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"));
    command.args(args);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.output().expect("run ecr-gateway")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A new signing key in `dir`; returns its path and public key.
fn keygen(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("audit.key");
    let out = gateway_cli(&["audit", "keygen", "--out", path.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    (path, String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

fn audit(channel: &Channel) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(channel.clone())
}

fn auditor<T>(message: T) -> tonic::Request<T> {
    as_user(message, "security-auditor", "security")
}

async fn create_repositories(channel: &Channel, stem: &str, n: usize) {
    for i in 0..n {
        RepositoryServiceClient::new(channel.clone())
            .create_repository(as_user(
                tagged_repository(&unique("payments", &format!("{stem}-{i}"))),
                "rita@example.com",
                "payments",
            ))
            .await
            .expect("create");
    }
}

/// Polls `sql` (one bigint) until it reaches `at_least`.
async fn wait_for(pool: &sqlx::PgPool, sql: &'static str, at_least: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql);
        if value >= at_least {
            return value;
        }
        assert!(Instant::now() < deadline, "{sql}: {value}, want {at_least}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stream cursor the gateway would write for `seq`, sealed with the
/// deployment's key (kept in Postgres when none is configured).
async fn cursor(pool: &sqlx::PgPool, seq: i64) -> String {
    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM page_token_key")
        .fetch_one(pool)
        .await
        .expect("the page-token key");
    ecr_gateway::api::page_token::PageKey::from_bytes(&key.try_into().expect("32 bytes")).encode_cursor(seq)
}

/// The archives in `dir`, oldest first.
fn archives(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_events_are_archived_then_purged_and_the_chain_still_verifies() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let archive_dir = dir.path().join("archive");
    std::fs::create_dir(&archive_dir).unwrap();
    let (key_path, public_key) = keygen(dir.path());
    let sink = dir.path().join("sink.jsonl");
    let signing = format!(
        "[audit]\nsigning_key_file = \"{}\"\ndigest_interval_seconds = 1\n",
        key_path.display()
    );
    let with_retention = format!(
        "{signing}retention = \"2s\"\narchive_dir = \"{}\"\nretention_interval_seconds = 1\njsonl = \"{}\"\n",
        archive_dir.display(),
        sink.display()
    );
    let pool = db.pool().await;

    // A gateway with a 2 s retention purges its events once they are old
    // enough and in the sink.
    let gateway = Gateway::start(config(&db, Moto::shared(), &with_retention)).await;
    create_repositories(&gateway.channel, "old", 4).await;
    wait_for(&pool, "SELECT coalesce(max(through_seq), 0) FROM audit_purges", 4).await;
    gateway.stop().await.unwrap();
    let purged: i64 = sqlx::query_scalar("SELECT max(through_seq) FROM audit_purges")
        .fetch_one(&pool)
        .await
        .unwrap();
    let delivered = std::fs::read_to_string(&sink).unwrap().lines().count() as i64;
    assert!(
        delivered >= purged,
        "the sink has {delivered} events, {purged} were purged"
    );

    // Without retention from here on, so that nothing moves under the checks.
    let gateway = Gateway::start(config(&db, Moto::shared(), &signing)).await;
    let channel = gateway.channel.clone();
    create_repositories(&channel, "new", 3).await;
    wait_for(&pool, "SELECT last_seq FROM audit_chain", purged + 3).await;

    // The database keeps verifying what remains, from the purge's recorded hash.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = audit(&channel)
            .verify_audit_log(auditor(pb::VerifyAuditLogRequest::default()))
            .await
            .expect("verify")
            .into_inner();
        if answer.checked >= 3 && answer.unsigned_tail == 0 && answer.digests_checked > 0 {
            break answer;
        }
        assert!(Instant::now() < deadline, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(answer.valid, "{answer:?}");
    assert_eq!(answer.purged_through_sequence, purged, "{answer:?}");
    assert!(answer.purged_archive.starts_with("audit-"), "{answer:?}");

    // A range that starts inside the purge says so and where to look.
    let status = audit(&channel)
        .verify_audit_log(auditor(pb::VerifyAuditLogRequest {
            from_sequence: 1,
            ..Default::default()
        }))
        .await
        .expect_err("purged range");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        violations(&status).contains(&("from_sequence".into(), "AUDIT_VERIFY_PURGED".into())),
        "{status:?}"
    );
    assert!(
        status.message().contains("ecr-gateway audit verify"),
        "{status:?}"
    );

    // A stream cannot resume inside the purge (it would miss events) ...
    let status = audit(&channel)
        .stream_audit_events(auditor(pb::StreamAuditEventsRequest {
            cursor: cursor(&pool, 0).await,
            ..Default::default()
        }))
        .await
        .expect_err("cursor inside the purge");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("purged by retention"), "{status:?}");
    // ... and resumes from the purge's end with every remaining event, in order.
    let mut stream = audit(&channel)
        .stream_audit_events(auditor(pb::StreamAuditEventsRequest {
            cursor: cursor(&pool, purged).await,
            ..Default::default()
        }))
        .await
        .expect("stream")
        .into_inner();
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_chain_links")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut sequences = Vec::new();
    while (sequences.len() as i64) < remaining {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stream stalled")
            .expect("stream ended")
            .expect("stream item");
        sequences.push(item.event.unwrap().sequence);
    }
    assert_eq!(sequences, (purged + 1..=purged + remaining).collect::<Vec<_>>());
    drop(stream);
    gateway.stop().await.unwrap();

    // Each archive is recorded with its SHA-256.
    let mut files = archives(&archive_dir);
    assert!(!files.is_empty());
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let sha: String = sqlx::query_scalar("SELECT archive_sha256 FROM audit_purges WHERE archive = $1")
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{name} is not recorded: {e}"));
        use sha2::Digest as _;
        assert_eq!(
            sha,
            hex::encode(sha2::Sha256::digest(std::fs::read(file).unwrap()))
        );
    }

    // The archives, then an export of the rest, verify offline as one signed chain.
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config_text(&db, Moto::shared(), &signing)).unwrap();
    let head: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_chain")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rest = dir.path().join("rest.jsonl");
    let out = gateway_cli(
        &[
            "audit",
            "export",
            "--from",
            "2000-01-01T00:00:00Z",
            "--output",
            rest.to_str().unwrap(),
        ],
        Some(&config_path),
    );
    assert!(out.status.success(), "{}", text(&out));
    files.push(rest);
    let verify = |files: &[PathBuf]| {
        let mut args = vec!["audit", "verify", "--public-key", public_key.as_str()];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        gateway_cli(&args, None)
    };
    let out = verify(&files);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("ok: {head} events")),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("signed digests match"), "{}", text(&out));
    // Out of order, or with an archive edited, they do not.
    let mut reversed = files.clone();
    reversed.reverse();
    let out = verify(&reversed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let edited =
        std::fs::read_to_string(&files[0])
            .unwrap()
            .replacen("rita@example.com", "mallory@example.com", 1);
    std::fs::write(&files[0], edited).unwrap();
    let out = verify(&files);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("modified"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_a_sink_has_not_delivered_is_purged_and_purges_only_continue_the_chain() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let archive_dir = dir.path().join("archive");
    std::fs::create_dir(&archive_dir).unwrap();
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    create_repositories(&gateway.channel, "sink", 6).await;
    let pool = db.pool().await;
    wait_for(&pool, "SELECT last_seq FROM audit_chain", 6).await;
    gateway.stop().await.unwrap();
    let head: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_chain")
        .fetch_one(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // A NATS sink that has delivered nothing holds every event back.
    let with_nats = dir.path().join("nats.toml");
    let audit_section = format!(
        "[audit]\narchive_dir = \"{}\"\nnats_url = \"nats://127.0.0.1:4222\"\nnats_subject = \"retention.test\"\n",
        archive_dir.display()
    );
    std::fs::write(&with_nats, config_text(&db, Moto::shared(), &audit_section)).unwrap();
    let purge = |config: &Path| gateway_cli(&["audit", "purge", "--older-than", "1s"], Some(config));
    let out = purge(&with_nats);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to purge"), "{}", text(&out));
    assert!(archives(&archive_dir).is_empty());

    // Once it has delivered up to 3, exactly 1..=3 go.
    sqlx::query(
        "INSERT INTO audit_sink_cursors (sink, seq, updated_at) VALUES ('nats:retention.test', 3, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = purge(&with_nats);
    assert!(
        text(&out).contains("purged sequences 1..=3 (3 events)"),
        "{}",
        text(&out)
    );
    let remaining: i64 = sqlx::query_scalar("SELECT min(seq) FROM audit_chain_links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(remaining, 4);

    // Without that sink the rest goes; a second run finds nothing.
    let plain = dir.path().join("plain.toml");
    let audit_section = format!("[audit]\narchive_dir = \"{}\"\n", archive_dir.display());
    std::fs::write(&plain, config_text(&db, Moto::shared(), &audit_section)).unwrap();
    let out = purge(&plain);
    assert!(
        text(&out).contains(&format!("purged sequences 4..={head}")),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("archived to"), "{}", text(&out));
    assert_eq!(archives(&archive_dir).len(), 2);
    let out = gateway_cli(&["audit", "purge"], Some(&plain));
    assert_eq!(
        out.status.code(),
        Some(1),
        "no retention configured: {}",
        text(&out)
    );
    assert!(text(&out).contains("audit.retention"), "{}", text(&out));

    // The database takes only purges that continue the recorded prefix, name
    // a real link with its hash, and are not dated in the future; and deletes
    // nothing outside a recorded purge.
    let gateway = Gateway::start(config(&db, Moto::shared(), "")).await;
    create_repositories(&gateway.channel, "later", 2).await;
    wait_for(&pool, "SELECT last_seq FROM audit_chain", head + 2).await;
    gateway.stop().await.unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT last_seq FROM audit_chain")
        .fetch_one(&pool)
        .await
        .unwrap();
    let hash: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_chain_links WHERE seq = $1")
        .bind(newest)
        .fetch_one(&pool)
        .await
        .unwrap();
    // `cutoff` is an interval from now.
    let insert = |from: i64, through: i64, hash: Vec<u8>, cutoff: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO audit_purges (from_seq, through_seq, through_hash, cutoff, archive, archive_sha256) \
                 VALUES ($1, $2, $3, now() + $4::interval, 'forged.jsonl', '00')",
            )
            .bind(from)
            .bind(through)
            .bind(hash)
            .bind(cutoff)
            .execute(&pool)
            .await
            .expect_err("a forged purge")
            .to_string()
        }
    };
    let gap = insert(head + 2, newest, hash.clone(), "0 s").await;
    assert!(gap.contains("must continue from sequence"), "{gap}");
    let wrong_hash = insert(head + 1, newest, vec![0; 32], "0 s").await;
    assert!(wrong_hash.contains("existing link and its hash"), "{wrong_hash}");
    let future = insert(head + 1, newest, hash.clone(), "1 day").await;
    assert!(future.contains("future"), "{future}");
    let too_new = insert(head + 1, newest, hash, "-1 day").await;
    assert!(too_new.contains("chained before its cutoff"), "{too_new}");
    for statement in [
        "DELETE FROM audit_chain_links WHERE seq = (SELECT max(seq) FROM audit_chain_links)",
        "DELETE FROM audit_events WHERE event_id = (SELECT event_id FROM audit_chain_links ORDER BY seq DESC LIMIT 1)",
        "DELETE FROM audit_purges",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        assert!(error.to_string().contains("append-only"), "{statement}: {error}");
    }
}
