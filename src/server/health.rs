//! The gRPC health entries: `""` and each service follow Postgres (a probe
//! every 2 s), `ecrgateway.v1.Registry/<alias>` follows that registry's
//! circuit breaker, and `liveness` stays SERVING while the process runs.

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::ecr::{Phase, Registry};
use crate::store::Store;

/// Services whose health is reported besides the overall "" entry.
const SERVICES: &[&str] = &[
    "ecrgateway.v1.RepositoryService",
    "ecrgateway.v1.ImageService",
    "ecrgateway.v1.ScanService",
    "ecrgateway.v1.CleanupService",
    "ecrgateway.v1.AuditService",
    "ecrgateway.v1.RegistryAccessService",
    "ecrgateway.v1.ComplianceService",
];

/// The health service name of a registry, followed by its alias: NOT_SERVING
/// while its circuit breaker is open (the overall "" entry stays SERVING,
/// since cached reads go on).
pub const REGISTRY_HEALTH_PREFIX: &str = "ecrgateway.v1.Registry/";

/// The health entry of the liveness probe: SERVING while the process runs,
/// whatever Postgres or ECR do, so that an outage of either never gets pods
/// restarted (which cannot help and drops the calls in flight).
pub const LIVENESS_SERVICE: &str = "liveness";

/// How often the database is probed for the health status.
const DATABASE_PROBE: Duration = Duration::from_secs(2);

/// Sets `""` and every service's entry.
pub(super) async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in SERVICES {
        reporter.set_service_status(*service, status).await;
    }
}

/// Reports `ecrgateway.v1.Registry/<alias>` NOT_SERVING while the registry's
/// circuit breaker is open or probing, SERVING once it closes.
pub(super) async fn report_registry_health(
    registry: Registry,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let service = format!("{REGISTRY_HEALTH_PREFIX}{}", registry.reference.alias);
    let mut changes = registry.breaker().subscribe();
    loop {
        let status = match changes.borrow_and_update().phase {
            Phase::Closed => ServingStatus::Serving,
            Phase::Open | Phase::HalfOpen => ServingStatus::NotServing,
        };
        reporter.set_service_status(&service, status).await;
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            changed = changes.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// Reports NOT_SERVING while Postgres does not answer, SERVING again when it does.
pub(super) async fn probe_database(store: Store, reporter: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut healthy = true;
    loop {
        if !crate::tasks::pause(DATABASE_PROBE, &mut stop).await {
            return;
        }
        let ok = tokio::time::timeout(DATABASE_PROBE, store.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != healthy {
            healthy = ok;
            if ok {
                tracing::info!("database reachable again: SERVING");
                set_health(&reporter, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
                set_health(&reporter, ServingStatus::NotServing).await;
            }
        }
    }
}
