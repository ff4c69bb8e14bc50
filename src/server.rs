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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin::{Admin, Metrics, MetricsLayer};
use crate::api::access::AccessApi;
use crate::api::audit::AuditApi;
use crate::api::cleanup::CleanupApi;
use crate::api::error::DecodeErrorLayer;
use crate::api::image::ImageApi;
use crate::api::repository::RepositoryApi;
use crate::api::scan::ScanApi;
use crate::api::{AppState, Shared};
use crate::audit::AuditLog;
use crate::auth::IdentityLayer;
use crate::auth::authz::Authorizer;
use crate::config::{AuthMode, Config};
use crate::ecr::Registries;
use crate::overload::{RateLimitLayer, RateLimits, ShedLayer};
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::cleanup_service_server::CleanupServiceServer;
use crate::pb::image_service_server::ImageServiceServer;
use crate::pb::registry_access_service_server::RegistryAccessServiceServer;
use crate::pb::repository_service_server::RepositoryServiceServer;
use crate::pb::scan_service_server::ScanServiceServer;
use crate::store::Store;
use crate::web::BrowserLayer;

mod health;
pub mod parts;

pub use health::{LIVENESS_SERVICE, REGISTRY_HEALTH_PREFIX};
use health::{probe_database, report_registry_health, set_health};
pub use parts::Parts;

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
    let authz = Arc::new(
        Authorizer::for_config(&config)
            .map_err(|problems| anyhow::anyhow!("authorization: {}", problems.join("; ")))?,
    );
    let loaded = authz.summary();
    tracing::info!(
        policies = loaded.policies,
        entities = loaded.entities,
        "authorization policies loaded; SIGHUP reloads them"
    );
    let store = Store::connect_lazy(&config.database)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (draining_tx, mut draining_rx) = watch::channel(false);
    // Before migrating, so that /healthz answers and /readyz says why it is
    // not ready yet while they run. A start that fails stops it (`stop_tx` dropped).
    let metrics = Arc::new(Metrics::new(&[
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]));
    let traced = config.telemetry.enabled;
    if traced {
        // `telemetry::init` installed the OTLP meter provider as the global one.
        metrics.export_otlp(&opentelemetry::global::meter(crate::telemetry::SCOPE));
    }
    // Builds clients only (nothing is sent yet); before the admin listener,
    // whose readiness reports the registries' circuit breakers.
    let registries = Registries::connect(&config.registries)
        .await
        .observed(metrics.clone(), traced);
    let admin_server = match admin_listener {
        Some(admin_listener) => {
            let admin_addr = admin_listener.local_addr()?;
            tracing::info!(%admin_addr, "admin endpoints listening: /healthz, /readyz, /metrics");
            let admin = Admin {
                store: store.clone(),
                metrics: metrics.clone(),
                draining: draining_tx.subscribe(),
                registries: registries.clone(),
            };
            Some(tokio::spawn(crate::admin::serve(
                admin_listener,
                admin,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
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
    let (audit, audit_writer) = AuditLog::start(store.clone());
    let state: Shared = Arc::new(AppState {
        policy,
        authz: authz.clone(),
        store: store.clone(),
        registries: registries.clone(),
        audit,
        mutation_lease: config.request_timeout() * 2,
        syncer: crate::inventory::Syncer {
            store: store.clone(),
            holder: replica_name(),
            lease: Duration::from_secs(config.sync.lease_seconds),
            scans_per_pass: config.sync.scans_per_pass,
        },
        cleanup_wake: Arc::new(tokio::sync::Notify::new()),
        audit_key: signing_key.as_ref().map(|k| k.verifying_key()),
        page_keys: crate::api::page_token::PageKeys::new(page_key),
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

    let reloader = tokio::spawn(reload_on_sighup(authz, stop_rx.clone()));
    let rate_limits = RateLimits::from_config(&config.rate_limits);
    let forgetter = rate_limits
        .clone()
        .map(|limits| tokio::spawn(limits.forget_idle_callers(stop_rx.clone())));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::Serving).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let probe = tokio::spawn(probe_database(store.clone(), reporter.clone(), stop_rx.clone()));
    let trimmer = tokio::spawn(crate::memory::run_trimmer(stop_rx.clone()));
    let registry_health: Vec<_> = registries
        .all()
        .map(|registry| {
            tokio::spawn(report_registry_health(
                registry.clone(),
                reporter.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let cache_listener = tokio::spawn(store.clone().listen_for_changes(stop_rx.clone()));
    // The gauges that need Postgres, for /metrics and OTLP.
    let gauges = (config.admin.listen.is_some() || traced).then(|| {
        tokio::spawn(crate::admin::gauges::run_refresh(
            store.clone(),
            metrics.clone(),
            registries.all().map(|r| r.reference.clone()).collect(),
            Duration::from_secs(config.admin.gauge_refresh_seconds),
            stop_rx.clone(),
        ))
    });
    let sync = (config.sync.interval_seconds > 0).then(|| {
        tokio::spawn(crate::inventory::run_sync_loop(
            state.syncer.clone(),
            registries.all().cloned().collect(),
            Duration::from_secs(config.sync.interval_seconds),
            config.sync.concurrency,
            stop_rx.clone(),
        ))
    });

    let jwks_refresh = authenticator.start(stop_rx.clone()).await;
    let chainer = tokio::spawn(crate::audit::run_chainer(store.clone(), stop_rx.clone()));
    let retention =
        crate::audit::retention::Retention::configured(&config.audit, signing_key.clone()).map(|retention| {
            tokio::spawn(crate::audit::retention::run_retention(
                store.clone(),
                retention,
                Duration::from_secs(config.audit.retention_interval_seconds),
                stop_rx.clone(),
            ))
        });
    let digester = signing_key.map(|key| {
        tokio::spawn(crate::audit::run_digester(
            store.clone(),
            key,
            Duration::from_secs(config.audit.digest_interval_seconds),
            stop_rx.clone(),
        ))
    });
    let sinks: Vec<_> = crate::audit::sink::configured(&config.audit)
        .into_iter()
        .map(|target| {
            tokio::spawn(crate::audit::sink::run_sink(
                store.clone(),
                target,
                stop_rx.clone(),
            ))
        })
        .collect();
    // A call interrupted by a crash becomes resolvable when its lease ends.
    let recovery = tokio::spawn(crate::recovery::run_recovery(
        state.clone(),
        state.mutation_lease.min(Duration::from_secs(60)),
        stop_rx.clone(),
    ));
    let cleanup_worker = config.cleanup.worker.then(|| {
        tokio::spawn(crate::cleanup::worker::run_worker(
            crate::cleanup::worker::Worker {
                store: store.clone(),
                registries: registries.clone(),
                protection: state.policy.config().cleanup.clone(),
                holder: replica_name(),
                lease: Duration::from_secs(config.cleanup.lease_seconds),
                batch_size: config.cleanup.batch_size,
                poll: Duration::from_secs(config.cleanup.poll_interval_seconds),
            },
            state.cleanup_wake.clone(),
            stop_rx.clone(),
        ))
    });

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let max_message = config.server.max_message_bytes;
    let repository_service = RepositoryServiceServer::new(RepositoryApi::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let image_service = ImageServiceServer::new(ImageApi::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let scan_service = ScanServiceServer::new(ScanApi::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let cleanup_service = CleanupServiceServer::new(CleanupApi::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let audit_service = AuditServiceServer::new(AuditApi::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let credential_roles = config
        .registries
        .iter()
        .filter_map(|r| Some((r.alias.clone(), r.credentials_role_arn.clone()?)))
        .collect();
    let access_service = RegistryAccessServiceServer::new(AccessApi::new(
        state.clone(),
        config.access.clone(),
        credential_roles,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    drop(state);

    let local = listener.local_addr()?;
    tracing::info!(%local, tls = tls.is_some(), modes = ?authenticator.modes(), "ecr-gateway listening");
    let reporter_for_shutdown = reporter.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: health NOT_SERVING, draining in-flight calls");
        set_health(&reporter_for_shutdown, ServingStatus::NotServing).await;
        let _ = draining_tx.send(true);
    };
    let browser = BrowserLayer::new(&config.server.grpc_web);
    if browser.enabled() {
        tracing::info!(
            allowed_origins = ?config.server.grpc_web.allowed_origins,
            "gRPC-Web enabled (HTTP/1.1 and HTTP/2)"
        );
    }
    let router = Server::builder()
        .timeout(config.request_timeout())
        // gRPC-Web comes over HTTP/1.1 too; without it the listener stays HTTP/2 only.
        .accept_http1(browser.enabled())
        .concurrency_limit_per_connection(config.server.concurrency_limit_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Above hyper's 16 KiB so that an oversized `authorization` reaches the
        // identity layer and is refused with a reason instead of HTTP 431.
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        // Outside the gRPC layers, so that they see a gRPC-Web call as the gRPC
        // call it stands for; plain gRPC passes through untouched.
        .layer(browser)
        // Outermost of the gRPC layers, so that calls refused by the layers below are counted too.
        .layer(MetricsLayer::new(metrics).traced(traced))
        // Before identity: a shed call costs no token verification.
        .layer(ShedLayer::new(
            config.overload.max_concurrent_calls,
            Duration::from_millis(config.overload.retry_after_ms),
        ))
        .layer(IdentityLayer::new(authenticator))
        .layer(RateLimitLayer::new(rate_limits))
        .layer(DecodeErrorLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(repository_service)
        .add_service(image_service)
        .add_service(scan_service)
        .add_service(cleanup_service)
        .add_service(audit_service)
        .add_service(access_service);
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::tls::incoming(listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
            signal,
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(incoming(listener), signal)),
    };
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    let deadline = async move {
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = serve => result.context("serving gRPC")?,
        _ = deadline => tracing::warn!("in-flight calls did not finish within {grace:?}; stopping anyway"),
    }
    let _ = stop_tx.send(true);
    let _ = probe.await;
    let _ = trimmer.await;
    for task in registry_health {
        let _ = task.await;
    }
    if let Some(admin_server) = admin_server {
        let _ = admin_server.await;
    }
    let _ = cache_listener.await;
    if let Some(gauges) = gauges {
        let _ = gauges.await;
    }
    if let Some(sync) = sync {
        sync.abort();
    }
    if let Some(worker) = cleanup_worker {
        // It hands its run back between batches; a batch in flight gets the grace period.
        if tokio::time::timeout(grace, worker).await.is_err() {
            tracing::warn!(
                "the cleanup worker did not stop within {grace:?}; its run resumes after its lease"
            );
        }
    }
    audit_writer.shutdown(grace).await;
    let _ = chainer.await;
    for sink in sinks {
        let _ = sink.await;
    }
    if let Some(digester) = digester {
        let _ = digester.await;
    }
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    let _ = recovery.await;
    let _ = reloader.await;
    if let Some(forgetter) = forgetter {
        let _ = forgetter.await;
    }
    if let Some(jwks_refresh) = jwks_refresh {
        let _ = jwks_refresh.await;
    }
    tracing::info!("ecr-gateway stopped");
    Ok(())
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

/// Reflection knows the gateway's services, health, both reflection versions
/// and `google.rpc` error details (so grpcurl can print them).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// This replica's name in sync leases: host and process id.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Reloads the authorization policies and entity data on every SIGHUP. A
/// broken reload keeps the policies in force and logs every problem.
async fn reload_on_sighup(authz: Arc<Authorizer>, mut stop: watch::Receiver<bool>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP: authorization policies will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            received = hangups.recv() => {
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
            }
        }
    }
}
