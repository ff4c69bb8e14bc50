//! The admin listener (`[admin] listen`): a small HTTP/1.1 server for probes
//! and scrapes, apart from the gRPC port so that it needs no credentials and
//! can stay on a private address.
//!
//! - `GET /healthz`: 200 while the process runs (liveness; never asks Postgres).
//! - `GET /readyz`: 200 when Postgres answers and every embedded migration is
//!   applied; 503 with a one-line reason otherwise, and while draining. A
//!   registry whose circuit breaker is open is named in the 200 answer, but
//!   does not make the replica unready: cached reads still answer, and every
//!   replica sees the same ECR.
//! - `GET /metrics`: Prometheus text format ([`metrics`], [`layer`], and
//!   [`gauges`], read from Postgres on an interval). With telemetry on, the
//!   same metrics are exported by OTLP ([`otlp`]).
//!
//! Other paths answer 404, other methods 405.

pub mod events;
pub mod gauges;
pub mod layer;
pub mod metrics;
pub mod otlp;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use layer::MetricsLayer;
pub use metrics::Metrics;

use crate::ecr::{Phase, Registries};
use crate::store::Store;

/// Upper bound of a readiness check (Kubernetes' default probe timeout is 1 s).
const READINESS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a scrape right after start waits for the first reading of the database gauges.
const FIRST_READING_WAIT: Duration = Duration::from_millis(500);
/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin endpoints look at.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Postgres, for readiness.
    pub store: Store,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// True once shutdown has started: readiness answers 503 from then on.
    pub draining: watch::Receiver<bool>,
    /// The registries, whose circuit breakers readiness reports.
    pub registries: Registries,
}

/// Serves the admin endpoints on `listener` until `stop` flips.
pub async fn serve(listener: TcpListener, admin: Admin, mut stop: watch::Receiver<bool>) {
    let admin = Arc::new(admin);
    let mut connections = JoinSet::new();
    // A sender dropped (a start that failed) stops it too.
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admin = admin.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            let admin = admin.clone();
                            async move { Ok::<_, Infallible>(admin.respond(request).await) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.abort_all();
}

impl Admin {
    /// The answer to one request.
    pub async fn respond<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if !matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the admin endpoints are /healthz, /readyz and /metrics",
            );
        }
        if request.method() != Method::GET {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
            return response;
        }
        match path.as_str() {
            "/readyz" => match self.readiness().await {
                Ok(()) => text(StatusCode::OK, &self.ready_line()),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &reason),
            },
            "/metrics" => self.metrics_response().await,
            _ => text(StatusCode::OK, "ok"),
        }
    }

    /// `ready`, followed by the registries that are degraded, if any.
    fn ready_line(&self) -> String {
        let degraded: Vec<String> = self
            .registries
            .all()
            .filter_map(|registry| {
                let status = registry.breaker().status();
                let phase = match status.phase {
                    Phase::Closed => return None,
                    Phase::Open => "open",
                    Phase::HalfOpen => "probing",
                };
                Some(format!(
                    "ECR registry `{}` circuit breaker {phase} ({})",
                    registry.reference.alias, status.reason
                ))
            })
            .collect();
        if degraded.is_empty() {
            "ready".into()
        } else {
            format!(
                "ready; degraded: {}; cached reads answer, calls that need ECR fail fast with UNAVAILABLE",
                degraded.join("; ")
            )
        }
    }

    /// Ready, or the reason why not.
    async fn readiness(&self) -> Result<(), String> {
        if *self.draining.borrow() {
            return Err("draining: the gateway is shutting down".into());
        }
        match tokio::time::timeout(READINESS_TIMEOUT, self.database_readiness()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "postgres unreachable: no answer within {} ms",
                READINESS_TIMEOUT.as_millis()
            )),
        }
    }

    async fn database_readiness(&self) -> Result<(), String> {
        self.store
            .ping()
            .await
            .map_err(|error| format!("postgres unreachable: {error}"))?;
        let pending = self
            .store
            .pending_migrations()
            .await
            .map_err(|error| format!("migrations unknown: cannot read _sqlx_migrations: {error}"))?;
        if pending.is_empty() {
            return Ok(());
        }
        let versions: Vec<String> = pending.iter().map(i64::to_string).collect();
        Err(format!(
            "migrations pending: {} (versions {}); run `ecr-gateway migrate` or set database.migrate_on_start",
            pending.len(),
            versions.join(", ")
        ))
    }

    async fn metrics_response(&self) -> Response<Full<Bytes>> {
        // The gauges that need Postgres are read by `gauges::run_refresh`, not here.
        self.metrics.first_database_reading(FIRST_READING_WAIT).await;
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
        );
        response
    }
}

/// A one-line plain-text answer.
fn text(status: StatusCode, line: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", line.replace('\n', " ")))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
