//! Several replicas over one database: a repository is never synced by two
//! at once, and a replica that dies loses its lease when it expires.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Moto, TestDb, ecr_client, unique};
use ecr_gateway::config::RegistryConfig;
use ecr_gateway::domain::RepositoryName;
use ecr_gateway::ecr::Registry;
use ecr_gateway::inventory::{SyncOutcome, Syncer, Trigger};
use ecr_gateway::store::{Store, sync};

async fn setup() -> (TestDb, Store, Registry, RepositoryName) {
    let db = TestDb::create().await;
    let store = Store::from_pool(db.pool().await);
    store.migrate().await.expect("migrate");
    let registry = Registry::connect(&RegistryConfig {
        alias: "main".into(),
        account_id: common::ACCOUNT.into(),
        region: common::REGION.into(),
        endpoint_url: Some(Moto::shared().into()),
        ..Default::default()
    })
    .await;
    let name = unique("payments", "lease");
    let ecr = ecr_client(Moto::shared()).await;
    ecr.create_repository()
        .repository_name(&name)
        .send()
        .await
        .expect("repository");
    common::images::push(&ecr, &name, "v1", &name).await;
    (db, store, registry, RepositoryName::parse(&name).expect("name"))
}

fn syncer(store: &Store, holder: &str, lease: Duration) -> Syncer {
    Syncer {
        store: store.clone(),
        holder: holder.into(),
        lease,
        scans_per_pass: 50,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_leased_by_one_replica_is_skipped_by_another() {
    let (_db, store, registry, name) = setup().await;
    let until = Utc::now() + Duration::from_secs(60);
    assert!(
        sync::try_lease(store.pool(), &registry.reference, &name, "replica-a", until)
            .await
            .expect("lease")
    );

    let outcome = syncer(&store, "replica-b", Duration::from_secs(60))
        .sync_repository(&registry, &name, Trigger::Interval)
        .await
        .expect("sync");

    assert_eq!(outcome, SyncOutcome::Busy);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_racing_never_sync_the_same_repository_at_once() {
    let (_db, store, registry, name) = setup().await;
    let a = syncer(&store, "replica-a", Duration::from_secs(60));
    let b = syncer(&store, "replica-b", Duration::from_secs(60));

    let (first, second) = tokio::join!(
        a.sync_repository(&registry, &name, Trigger::Interval),
        b.sync_repository(&registry, &name, Trigger::Interval)
    );

    let outcomes = [first.expect("a"), second.expect("b")];
    let ran = outcomes
        .iter()
        .filter(|o| matches!(o, SyncOutcome::Ran(_)))
        .count();
    assert!(ran >= 1, "{outcomes:?}");
    let runs = sync::recent_runs(store.pool(), &registry.reference, Some(name.as_str()), 10)
        .await
        .expect("runs");
    for pair in runs.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert!(
            older.finished_at.is_some_and(|f| f <= newer.started_at),
            "runs overlapped: {runs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_replicas_lease_expires_and_another_takes_over() {
    let (_db, store, registry, name) = setup().await;
    // replica-a took the lease and died without releasing it.
    // Long enough that the "busy" check below always runs inside it, even on a loaded CI machine.
    let until = Utc::now() + Duration::from_secs(2);
    assert!(
        sync::try_lease(store.pool(), &registry.reference, &name, "replica-a", until)
            .await
            .expect("lease")
    );
    let b = syncer(&store, "replica-b", Duration::from_secs(60));
    assert_eq!(
        b.sync_repository(&registry, &name, Trigger::Interval)
            .await
            .expect("busy"),
        SyncOutcome::Busy
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let outcome = b
        .sync_repository(&registry, &name, Trigger::Interval)
        .await
        .expect("takes over");

    assert!(
        matches!(outcome, SyncOutcome::Ran(counts) if counts.seen == 1),
        "{outcome:?}"
    );
}
