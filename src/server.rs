//! Wiring: builds the state once, starts the background tasks, serves gRPC
//! (plaintext h2c, or TLS with `[server.tls]`, see [`crate::tls`]) with
//! health, reflection (v1 and v1alpha) and the tower layers (gRPC-Web for
//! browsers with `[server.grpc_web]`, see [`crate::web`]), and shuts down
//! gracefully: health flips to NOT_SERVING (and `/readyz` to 503) first,
//! in-flight calls drain within the grace period, the admin listener stops
//! with the background tasks, the audit writer is flushed last.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::admin::{Admin, Metrics, MetricsLayer};
use crate::api::access::AccessApi;
use crate::api::audit::AuditApi;
use crate::api::cleanup::CleanupApi;
use crate::api::compliance::ComplianceApi;
use crate::api::error::DecodeErrorLayer;
use crate::api::image::ImageApi;
use crate::api::page_token::PageKey;
use crate::api::repository::RepositoryApi;
use crate::api::scan::ScanApi;
use crate::api::{AppState, Shared};
use crate::audit::{AuditLog, AuditWriter};
use crate::auth::authz::Authorizer;
use crate::auth::{Authenticator, IdentityLayer};
use crate::config::{AuthMode, Config};
use crate::ecr::Registries;
use crate::overload::{RateLimitLayer, RateLimits, ShedLayer};
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::cleanup_service_server::CleanupServiceServer;
use crate::pb::compliance_service_server::ComplianceServiceServer;
use crate::pb::image_service_server::ImageServiceServer;
use crate::pb::registry_access_service_server::RegistryAccessServiceServer;
use crate::pb::repository_service_server::RepositoryServiceServer;
use crate::pb::scan_service_server::ScanServiceServer;
use crate::policy::OrgPolicy;
use crate::store::Store;
use crate::web::BrowserLayer;

mod health;
pub mod parts;

pub use health::{LIVENESS_SERVICE, REGISTRY_HEALTH_PREFIX};
use health::{probe_database, report_registry_health, set_health};

mod router;
pub use parts::Parts;
use router::*;

/// The encoded descriptor set of the gateway's protos, for reflection.
pub use crate::pb::FILE_DESCRIPTOR_SET;

/// Largest request header block accepted, in bytes.
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Serves with the `parts` built from `config` ([`parts::load`]) until
/// `shutdown` completes, then drains. The admin listener, if `[admin] listen`
/// is set, is bound here.
pub async fn run(
    config: Config,
    parts: Parts,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin_listener = bind_admin(&config).await?;
    serve(config, parts, listener, admin_listener, shutdown).await
}

/// Binds `[admin] listen`, if set.
pub async fn bind_admin(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    match &config.admin.listen {
        None => Ok(None),
        Some(listen) => TcpListener::bind(listen)
            .await
            .map(Some)
            .with_context(|| format!("admin.listen: cannot listen on {listen}")),
    }
}

/// [`run`] with the parts built here ([`Parts::build`]) and the admin
/// listener bound by the caller (tests bind port 0 and keep its address);
/// `None` serves no admin endpoints.
pub async fn run_with_admin(
    config: Config,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let parts = Parts::build(&config)?;
    serve(config, parts, listener, admin_listener, shutdown).await
}

async fn serve(
    config: Config,
    parts: Parts,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Parts {
        authenticator,
        tls_identity,
        policy,
        signing_key,
        page_key,
    } = parts;
    let authenticator = Arc::new(authenticator);
    warn_about_insecure_dev(&config);
    let tls = tls_identity
        .map(|identity| {
            crate::tls::server_config_for(
                identity,
                authenticator.client_cert_verifier(),
                config.server.grpc_web.enabled,
            )
        })
        .transpose()
        .map_err(|problems| anyhow::anyhow!("server.tls: {}", problems.join("; ")))?;
    let authz = load_authorizer(&config)?;
    let store = Store::connect_lazy(&config.database)?;
    // Dropped (a start that fails) or sent at shutdown, it stops every background task.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (draining_tx, draining_rx) = watch::channel(false);
    let mut background = JoinSet::new();
    let traced = config.telemetry.enabled;
    let metrics = new_metrics(traced);
    // Builds clients only (nothing is sent yet); before the admin listener,
    // whose readiness reports the registries' circuit breakers.
    let registries = Registries::connect(&config.registries)
        .await
        .observed(metrics.clone(), traced);
    // Before migrating, so that /healthz answers and /readyz says why it is
    // not ready yet while they run.
    if let Some(admin_listener) = admin_listener {
        let admin_addr = admin_listener.local_addr()?;
        tracing::info!(%admin_addr, "admin endpoints listening: /healthz, /readyz, /metrics");
        let admin = Admin {
            store: store.clone(),
            metrics: metrics.clone(),
            draining: draining_tx.subscribe(),
            registries: registries.clone(),
        };
        background.spawn(crate::admin::serve(admin_listener, admin, stop_rx.clone()));
    }
    if config.database.migrate_on_start {
        store.migrate().await.context("applying database migrations")?;
    }
    if signing_key.is_none() {
        tracing::warn!(
            "audit.signing_key_file is not set: the audit chain is kept but its digests are not signed"
        );
    }
    if page_key.is_none() {
        tracing::info!(
            "server.page_token_key_file is not set: page tokens are sealed with a key generated once and kept in Postgres"
        );
    }
    let audit_key = signing_key.as_ref().map(|k| k.verifying_key());
    let (state, audit_writer) = build_state(
        &config,
        policy,
        authz,
        store,
        registries,
        audit_key,
        page_key,
        draining_tx.subscribe(),
    );
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let wiring = Wiring {
        state,
        metrics,
        health: reporter.clone(),
        authenticator,
        rate_limits: RateLimits::from_config(&config.rate_limits),
    };
    set_health(&reporter, ServingStatus::Serving).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let background = spawn_background(&config, &wiring, signing_key, &stop_rx, background).await;
    let router = grpc_router(&config, &wiring, health_service)?;
    let authenticator = wiring.authenticator.clone();
    // The services hold the state from here: the audit writer drains once they are gone.
    drop(wiring);

    let local = listener.local_addr()?;
    tracing::info!(%local, tls = tls.is_some(), modes = ?authenticator.modes(), "ecr-gateway listening");
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: health NOT_SERVING, draining in-flight calls");
        set_health(&reporter, ServingStatus::NotServing).await;
        let _ = draining_tx.send(true);
    };
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    serve_until_drained(router, listener, tls, signal, draining_rx, grace).await?;
    shut_down(stop_tx, background, audit_writer, grace).await;
    tracing::info!("ecr-gateway stopped");
    Ok(())
}

/// `[authz]`, loaded (and reloaded on SIGHUP by a background task).
fn load_authorizer(config: &Config) -> anyhow::Result<Arc<Authorizer>> {
    let authz = Authorizer::for_config(config)
        .map_err(|problems| anyhow::anyhow!("authorization: {}", problems.join("; ")))?;
    let loaded = authz.summary();
    tracing::info!(
        policies = loaded.policies,
        entities = loaded.entities,
        "authorization policies loaded; SIGHUP reloads them"
    );
    Ok(Arc::new(authz))
}

/// The one [`Metrics`] of the process, built before anything that counts
/// (the ECR clients, the admin listener, the gRPC layer), and exported by
/// OTLP when `traced`.
fn new_metrics(traced: bool) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new(&[
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]));
    if traced {
        // `telemetry::init` installed the OTLP meter provider as the global one.
        metrics.export_otlp(&opentelemetry::global::meter(crate::telemetry::SCOPE));
    }
    metrics
}

/// Serves gRPC on `listener` (TLS with `tls`) until `signal` has completed
/// and the calls in flight are done, or the grace period after the drain
/// began (`draining`) is over.
async fn serve_until_drained(
    router: Router<GrpcLayers>,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    signal: impl Future<Output = ()> + Send + 'static,
    mut draining: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::tls::incoming(listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
            signal,
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(incoming(listener), signal)),
    };
    let deadline = async move {
        let _ = draining.wait_for(|draining| *draining).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = serve => result.context("serving gRPC")?,
        _ = deadline => tracing::warn!("in-flight calls did not finish within {grace:?}; stopping anyway"),
    }
    Ok(())
}

/// What the background tasks and the gRPC services are built from, besides
/// the configuration.
struct Wiring {
    state: Shared,
    metrics: Arc<Metrics>,
    health: HealthReporter,
    authenticator: Arc<Authenticator>,
    rate_limits: Option<Arc<RateLimits>>,
}

/// The state the handlers, recovery and the background tasks share, and the
/// audit writer it records through (started here).
#[allow(clippy::too_many_arguments)]
fn build_state(
    config: &Config,
    policy: OrgPolicy,
    authz: Arc<Authorizer>,
    store: Store,
    registries: Registries,
    audit_key: Option<ed25519_dalek::VerifyingKey>,
    page_key: Option<PageKey>,
    draining: watch::Receiver<bool>,
) -> (Shared, AuditWriter) {
    let (audit, audit_writer) = AuditLog::start(store.clone());
    let state: Shared = Arc::new(AppState {
        policy: Arc::new(crate::policy::PolicyInForce::new(policy)),
        authz,
        store: store.clone(),
        registries,
        audit,
        mutation_lease: config.request_timeout() * 2,
        syncer: crate::inventory::Syncer {
            store,
            holder: replica_name(),
            lease: Duration::from_secs(config.sync.lease_seconds),
            scans_per_pass: config.sync.scans_per_pass,
        },
        cleanup_wake: Arc::new(tokio::sync::Notify::new()),
        remediation_wake: Arc::new(tokio::sync::Notify::new()),
        audit_key,
        page_keys: crate::api::page_token::PageKeys::new(page_key),
        feed: crate::inventory::ChangeFeed::new(config.watch.max_lag_changes),
        draining,
    });
    // Fetched now (in the background: Postgres may be down at start); else by the first list that needs it.
    tokio::spawn({
        let state = state.clone();
        async move {
            if let Err(error) = state.page_keys.get(&state.store).await {
                tracing::warn!(%error, "the page-token key could not be read yet; lists read it when Postgres is back");
            }
        }
    });
    (state, audit_writer)
}

/// Starts every background task into `tasks` (which holds the admin server,
/// started before the migrations); each ends when `stop` flips (the
/// inventory sync at once, a pass in flight abandoned; the cleanup worker
/// after the batch in flight, waited for up to the shutdown grace period).
async fn spawn_background(
    config: &Config,
    wiring: &Wiring,
    signing_key: Option<SigningKey>,
    stop: &watch::Receiver<bool>,
    mut tasks: JoinSet<()>,
) -> JoinSet<()> {
    let Wiring {
        state,
        metrics,
        health,
        authenticator,
        rate_limits,
    } = wiring;
    let store = &state.store;
    let registries = &state.registries;
    tasks.spawn(reload_on_sighup(
        state.clone(),
        config.source.clone(),
        stop.clone(),
    ));
    if let Some(limits) = rate_limits {
        tasks.spawn(limits.clone().forget_idle_callers(stop.clone()));
    }
    tasks.spawn(probe_database(store.clone(), health.clone(), stop.clone()));
    tasks.spawn(crate::memory::run_trimmer(stop.clone()));
    for registry in registries.all() {
        tasks.spawn(report_registry_health(
            registry.clone(),
            health.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(store.clone().listen_for_changes(stop.clone()));
    tasks.spawn(crate::compliance::run_watcher(
        store.clone(),
        state.policy.clone(),
        registries.all().map(|r| r.reference.clone()).collect(),
        stop.clone(),
    ));
    // The gauges that need Postgres, for /metrics and OTLP.
    if config.admin.listen.is_some() || config.telemetry.enabled {
        tasks.spawn(crate::admin::gauges::run_refresh(
            store.clone(),
            metrics.clone(),
            registries.all().map(|r| r.reference.clone()).collect(),
            Duration::from_secs(config.admin.gauge_refresh_seconds),
            stop.clone(),
        ));
    }
    tasks.spawn(state.feed.clone().run(
        store.clone(),
        Duration::from_secs(config.watch.retention_hours * 3600),
        stop.clone(),
    ));
    spawn_event_intake(config, state, metrics, stop, &mut tasks);
    spawn_sync_loops(config, state, stop, &mut tasks);
    if let Some(jwks_refresh) = authenticator.start(stop.clone()).await {
        tasks.spawn(async move {
            let _ = jwks_refresh.await;
        });
    }
    tasks.spawn(crate::audit::run_chainer(store.clone(), stop.clone()));
    if let Some(retention) =
        crate::audit::retention::Retention::configured(&config.audit, signing_key.clone())
    {
        tasks.spawn(crate::audit::retention::run_retention(
            store.clone(),
            retention,
            Duration::from_secs(config.audit.retention_interval_seconds),
            stop.clone(),
        ));
    }
    if let Some(key) = signing_key {
        tasks.spawn(crate::audit::run_digester(
            store.clone(),
            key,
            Duration::from_secs(config.audit.digest_interval_seconds),
            stop.clone(),
        ));
    }
    for target in crate::audit::sink::configured(&config.audit) {
        tasks.spawn(crate::audit::sink::run_sink(store.clone(), target, stop.clone()));
    }
    // A call interrupted by a crash becomes resolvable when its lease ends.
    tasks.spawn(crate::recovery::run_recovery(
        state.clone(),
        state.mutation_lease.min(Duration::from_secs(60)),
        stop.clone(),
    ));
    if config.cleanup.worker {
        let worker = tokio::spawn(crate::cleanup::worker::run_worker(
            crate::cleanup::worker::Worker {
                store: store.clone(),
                registries: registries.clone(),
                protection: state.policy.current().config().cleanup.clone(),
                holder: replica_name(),
                lease: Duration::from_secs(config.cleanup.lease_seconds),
                batch_size: config.cleanup.batch_size,
                poll: Duration::from_secs(config.cleanup.poll_interval_seconds),
            },
            state.cleanup_wake.clone(),
            stop.clone(),
        ));
        let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
        let mut stopped = stop.clone();
        tasks.spawn(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            // It hands its run back between batches; a batch in flight gets the grace period.
            if tokio::time::timeout(grace, worker).await.is_err() {
                tracing::warn!(
                    "the cleanup worker did not stop within {grace:?}; its run resumes after its lease"
                );
            }
        });
        // The remediation worker shares `[cleanup]`'s switch, lease and poll interval.
        tasks.spawn(crate::compliance::remediation::run_worker(
            crate::compliance::remediation::RemediationWorker {
                store: store.clone(),
                registries: registries.clone(),
                policy: state.policy.clone(),
                holder: replica_name(),
                lease: Duration::from_secs(config.cleanup.lease_seconds),
                poll: Duration::from_secs(config.cleanup.poll_interval_seconds),
            },
            state.remediation_wake.clone(),
            stop.clone(),
        ));
    }
    tasks
}

/// One intake per registry with `[registries.events]`.
fn spawn_event_intake(
    config: &Config,
    state: &Shared,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    for registry_config in &config.registries {
        let (Some(events), Some(registry)) = (
            &registry_config.events,
            state.registries.get(&registry_config.alias),
        ) else {
            continue;
        };
        let observer: Arc<dyn crate::inventory::events::EventObserver> = metrics.clone();
        if let Some(intake) =
            crate::inventory::events::Intake::new(state.syncer.clone(), registry.clone(), observer)
        {
            tracing::info!(registry = %registry_config.alias, queue = %events.queue_url, workers = events.workers,
                "following ECR's events");
            tasks.spawn(intake.run(events.workers, stop.clone()));
        }
    }
}

/// The reconcile: every `[sync] interval_seconds` for registries without
/// events, every `backstop_interval_seconds` for those with (0 turns either off).
fn spawn_sync_loops(config: &Config, state: &Shared, stop: &watch::Receiver<bool>, tasks: &mut JoinSet<()>) {
    let (followed, polled): (Vec<_>, Vec<_>) = state
        .registries
        .all()
        .cloned()
        .partition(|r| r.events().is_some());
    for (registries, seconds) in [
        (polled, config.sync.interval_seconds),
        (followed, config.sync.backstop_interval_seconds),
    ] {
        if registries.is_empty() || seconds == 0 {
            continue;
        }
        let pass = crate::inventory::Pass {
            interval: Duration::from_secs(seconds),
            concurrency: config.sync.concurrency,
            full_resync: Duration::from_secs(config.sync.full_resync_days.max(1) * 86_400),
        };
        let sync = crate::inventory::run_sync_loop(
            state.syncer.clone(),
            state.policy.clone(),
            registries,
            pass,
            stop.clone(),
        );
        let mut stopped = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = sync => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        });
    }
}

/// The one shutdown of the background, after gRPC drained: the stop signal,
/// every background task's end, then the audit writer's flush.
async fn shut_down(
    stop: watch::Sender<bool>,
    mut background: JoinSet<()>,
    audit_writer: AuditWriter,
    grace: Duration,
) {
    let _ = stop.send(true);
    while background.join_next().await.is_some() {}
    audit_writer.shutdown(grace).await;
}

/// The accepted connections, with TCP_NODELAY: a response written in several
/// pieces must not wait for the caller's delayed ACK (Nagle added 40 ms to
/// every call that awaited Postgres).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// insecure-dev takes the caller's word for who it is: say so at start, loudly
/// when the listener is reachable from other hosts.
fn warn_about_insecure_dev(config: &Config) {
    if !config.auth.has(AuthMode::InsecureDev) {
        return;
    }
    let loopback = config
        .server
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_loopback());
    if loopback {
        tracing::warn!(
            "auth mode insecure-dev: callers are whoever the x-ecr-gateway-principal header says. Never use this outside local development."
        );
    } else {
        tracing::error!(
            listen = %config.server.listen,
            "auth mode insecure-dev ON A NON-LOOPBACK LISTENER (auth.allow_insecure_dev_on_non_loopback = true): \
             ANY caller that can reach this address can act as ANY principal by setting x-ecr-gateway-principal"
        );
    }
}

/// This replica's name in sync leases: host and process id.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Reloads the authorization policies and entity data on every SIGHUP, and
/// the org policy (`[policy]` of the configuration file, when the gateway
/// was started with one), then judges every registry's compliance anew. A
/// broken reload keeps what is in force and logs every problem.
async fn reload_on_sighup(
    state: Shared,
    source: Option<std::path::PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let authz = state.authz.clone();
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP: authorization policies will not reload");
            return;
        }
    };
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            received = hangups.recv() => received,
        };
        if received.is_none() {
            return;
        }
        match authz.reload() {
            Ok(loaded) => tracing::info!(
                policies = loaded.policies,
                entities = loaded.entities,
                "SIGHUP: authorization policies reloaded"
            ),
            Err(problems) => tracing::error!(
                problems = %problems.join("; "),
                "SIGHUP: the authorization policies did not reload; the previous ones stay in force"
            ),
        }
        if let Some(path) = &source {
            reload_org_policy(&state, path).await;
        }
    }
}

/// Compiles `[policy]` of the configuration file anew and puts it in force,
/// then judges every registry against it; a file that no longer loads, or a
/// policy that does not compile, leaves the one in force.
async fn reload_org_policy(state: &Shared, path: &std::path::Path) {
    let policy = Config::load(Some(path))
        .map_err(|e| e.problems)
        .and_then(|config| OrgPolicy::compile(&config.policy));
    let policy = match policy {
        Ok(policy) => policy,
        Err(problems) => {
            tracing::error!(
                problems = %problems.join("; "),
                "SIGHUP: the org policy did not reload; the previous one stays in force"
            );
            return;
        }
    };
    state.policy.replace(policy);
    tracing::info!("SIGHUP: org policy reloaded; judging every registry against it");
    let current = state.policy.current();
    for registry in state.registries.all() {
        match crate::compliance::evaluate_registry(&state.store, &current, &registry.reference).await {
            Ok(evaluation) => {
                tracing::info!(registry = %registry.reference.alias, ?evaluation, "compliance evaluated")
            }
            Err(error) => {
                tracing::warn!(registry = %registry.reference.alias, "compliance evaluation failed: {error}")
            }
        }
    }
}
