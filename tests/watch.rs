//! WatchImages: the inventory's changes as a stream. Changes are written
//! into the real inventory tables (whose triggers feed the change log, as
//! every writer's do) while streams are cut and resumed.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ACCOUNT, Gateway, REGION, TestDb, as_user, config};
use ecr_gateway::pb;
use ecr_gateway::pb::image_service_client::ImageServiceClient;
use ecr_gateway::pb::watch_images_response::Event;
use tonic::Code;

async fn insert_image(pool: &sqlx::PgPool, repository: &str, n: usize) -> String {
    let digest = format!("sha256:{:064x}", n as u128 * 7919 + 1);
    sqlx::query(
        "INSERT INTO images (account_id, region, repository, digest, tags, pushed_at, synced_at) \
         VALUES ($1, $2, $3, $4, ARRAY[$5], now(), now())",
    )
    .bind(ACCOUNT)
    .bind(REGION)
    .bind(repository)
    .bind(&digest)
    .bind(format!("v{n}"))
    .execute(pool)
    .await
    .expect("insert an image");
    digest
}

fn watch(cursor: &str, heartbeat: i32) -> pb::WatchImagesRequest {
    pb::WatchImagesRequest {
        cursor: cursor.into(),
        heartbeat_seconds: heartbeat,
        ..Default::default()
    }
}

/// Reads until `want` changes arrived; returns their digests and the last cursor.
async fn read_changes(
    stream: &mut tonic::Streaming<pb::WatchImagesResponse>,
    want: usize,
) -> (Vec<String>, String) {
    let mut digests = Vec::new();
    let mut cursor = String::new();
    while digests.len() < want {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message within 10 s")
            .expect("no error")
            .expect("the stream goes on");
        cursor = message.cursor.clone();
        if let Some(Event::Change(change)) = message.event {
            digests.push(change.digest);
        }
    }
    (digests, cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_stream_misses_nothing_and_repeats_nothing_while_changes_go_on() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, common::Moto::shared(), "")).await;
    let pool = db.pool().await;
    let mut images = ImageServiceClient::new(gateway.channel.clone());
    let mut first = images
        .watch_images(as_user(watch("", 1), "platform-ops", "platform"))
        .await
        .expect("stream opens")
        .into_inner();
    // The first message may be a heartbeat; the stream is live once it answers.
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..200 {
                written.push(insert_image(&pool, "payments/watched", n).await);
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            written
        })
    };
    let (mut seen, cursor) = read_changes(&mut first, 60).await;
    drop(first);
    let mut second = images
        .watch_images(as_user(watch(&cursor, 1), "platform-ops", "platform"))
        .await
        .expect("stream resumes")
        .into_inner();
    let written = writer.await.expect("writer");
    let (rest, _) = read_changes(&mut second, 200 - seen.len()).await;
    seen.extend(rest);
    assert_eq!(seen.len(), 200);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 200, "no change twice");
    assert_eq!(seen, written, "every change, in commit order");

    // A quiet stream gets heartbeats with a cursor.
    let beat = tokio::time::timeout(Duration::from_secs(5), second.message())
        .await
        .expect("a heartbeat")
        .expect("ok")
        .expect("open");
    assert!(matches!(beat.event, Some(Event::Heartbeat(_))) && !beat.cursor.is_empty());

    // Shutdown ends the stream with UNAVAILABLE and the cursor to resume from.
    gateway.stop().await.expect("stops");
    let end = loop {
        match second.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying where to resume"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("resume"), "{}", end.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_shows_only_what_the_caller_may_read_and_what_it_asked_for() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(&db, common::Moto::shared(), "")).await;
    let pool = db.pool().await;
    let mut images = ImageServiceClient::new(gateway.channel.clone());
    let mut payments = images
        .watch_images(as_user(watch("", 0), "alice", "payments"))
        .await
        .expect("stream opens")
        .into_inner();
    let mut prefixed = images
        .watch_images(as_user(
            pb::WatchImagesRequest {
                repository_prefix: "search/".into(),
                kinds: vec![pb::ImageChangeKind::Pushed as i32],
                ..Default::default()
            },
            "platform-ops",
            "platform",
        ))
        .await
        .expect("stream opens")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hidden = insert_image(&pool, "search/indexer", 1).await;
    let shown = insert_image(&pool, "payments/api", 2).await;
    let (seen, _) = read_changes(&mut payments, 1).await;
    assert_eq!(seen, vec![shown], "alice sees payments only, not {hidden}");
    let (seen, _) = read_changes(&mut prefixed, 1).await;
    assert_eq!(seen, vec![hidden]);
    gateway.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_is_cut_off_and_an_old_cursor_is_out_of_range() {
    let db = TestDb::create().await;
    let gateway = Gateway::start(config(
        &db,
        common::Moto::shared(),
        "[watch]\nmax_lag_changes = 16\n",
    ))
    .await;
    let pool = db.pool().await;
    let mut images = ImageServiceClient::new(gateway.channel.clone());
    let mut slow = images
        .watch_images(as_user(watch("", 0), "platform-ops", "platform"))
        .await
        .expect("stream opens")
        .into_inner();
    // Thousands of changes in one transaction while the consumer reads nothing.
    sqlx::query(
        "INSERT INTO images (account_id, region, repository, digest, tags, pushed_at, synced_at) \
         SELECT $1, $2, 'payments/flood', 'sha256:' || lpad(to_hex(n), 64, '0'), ARRAY['t' || n], now(), now() \
         FROM generate_series(1, 20000) n",
    )
    .bind(ACCOUNT)
    .bind(REGION)
    .execute(&pool)
    .await
    .expect("flood");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.message())
            .await
            .expect("ends")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("cursor"), "{}", status.message());

    // Retention removed everything: an old cursor is OUT_OF_RANGE.
    let mut fresh = images
        .watch_images(as_user(watch("", 1), "platform-ops", "platform"))
        .await
        .expect("opens")
        .into_inner();
    let cursor = fresh.message().await.expect("ok").expect("heartbeat").cursor;
    insert_image(&pool, "payments/after", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UPDATE inventory_change_head SET pruned_through = seq")
        .execute(&pool)
        .await
        .expect("prune");
    let old = images
        .watch_images(as_user(watch(&cursor, 0), "platform-ops", "platform"))
        .await
        .expect_err("out of range");
    assert_eq!(old.code(), Code::OutOfRange, "{old:?}");
    gateway.stop().await.expect("stops");
}
