//! The audit trail shipped out: JSON lines to a file (a complete, verifiable
//! chain) and NATS JetStream (at least once, deduplicated by event id, and
//! nothing lost while NATS is unreachable). Uses the NATS server with
//! JetStream on 127.0.0.1:4222 (NATS_URL overrides).

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::TcpProxy;
use common::{Gateway, Moto, TestDb, as_user, config};
use ecr_gateway::pb;
use ecr_gateway::pb::repository_service_client::RepositoryServiceClient;
use tonic::transport::Channel;

async fn calls(channel: &Channel, n: usize) {
    for _ in 0..n {
        RepositoryServiceClient::new(channel.clone())
            .list_repositories(as_user(
                pb::ListRepositoriesRequest::default(),
                "frank@example.com",
                "payments",
            ))
            .await
            .expect("list");
    }
}

async fn chained_ids(pool: &sqlx::PgPool) -> BTreeSet<String> {
    sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM audit_chain_links")
        .fetch_all(pool)
        .await
        .expect("links")
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jsonl_file_sink_holds_the_whole_chain_and_verifies() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("audit.jsonl");
    let extra = format!("[audit]\njsonl = \"{}\"\n", file.display());
    let gateway = Gateway::start(config(&db, Moto::shared(), &extra)).await;
    calls(&gateway.channel, 5).await;
    let pool = db.pool().await;
    wait_until("the file to hold every chained event", async || {
        let chained = chained_ids(&pool).await;
        let written: BTreeSet<String> = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["eventID"].as_str().map(str::to_owned))
            .collect();
        chained.len() >= 5 && chained.is_subset(&written)
    })
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
        .args(["audit", "verify"])
        .arg(&file)
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_gets_every_event_once_even_after_an_outage() {
    let db = TestDb::create().await;
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
    let proxy = TcpProxy::start(nats.trim_start_matches("nats://")).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (subject, stream) = (format!("ecr-gateway.audit.t{suffix}"), format!("AUDIT_T{suffix}"));
    let extra = format!(
        "[audit]\nnats_url = \"nats://{}\"\nnats_subject = \"{subject}\"\nnats_stream = \"{stream}\"\n",
        proxy.addr
    );
    let gateway = Gateway::start(config(&db, Moto::shared(), &extra)).await;
    let pool = db.pool().await;
    let client = async_nats::connect(nats.as_str())
        .await
        .expect("NATS for the test");
    let js = async_nats::jetstream::new(client);
    let in_stream = async || -> Vec<String> {
        let Ok(mut handle) = js.get_stream(&stream).await else {
            return Vec::new();
        };
        let Ok(info) = handle.info().await else {
            return Vec::new();
        };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut ids = Vec::new();
        for seq in first..=last {
            if let Ok(message) = handle.get_raw_message(seq).await {
                let event: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON event");
                ids.push(event["eventID"].as_str().unwrap_or_default().to_owned());
            }
        }
        ids
    };

    calls(&gateway.channel, 3).await;
    wait_until("the first events in JetStream", async || {
        let chained = chained_ids(&pool).await;
        chained.len() >= 3 && in_stream().await.into_iter().collect::<BTreeSet<_>>() == chained
    })
    .await;
    let before = in_stream().await.len();

    // NATS unreachable: new events wait in the chain, nothing is lost.
    proxy.cut();
    calls(&gateway.channel, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        in_stream().await.len(),
        before,
        "nothing arrives while NATS is cut off"
    );
    assert!(chained_ids(&pool).await.len() >= before + 3);

    proxy.restore();
    wait_until("the queued events after the outage", async || {
        let chained = chained_ids(&pool).await;
        in_stream().await.into_iter().collect::<BTreeSet<_>>() == chained
    })
    .await;
    let ids = in_stream().await;
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each event once: {ids:?}");
    gateway.stop().await.unwrap();
    let _ = js.delete_stream(&stream).await;
}
