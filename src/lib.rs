//! ecr-gateway: a gRPC service that internal platforms call instead of Amazon ECR.
//!
//! Map of the modules (edges own the outside world; the middle is pure; what
//! each may import is the module table of docs/architecture.md, which
//! `tests/architecture.rs` checks):
//! - [`api`]: one file per gRPC service: decode, identify, call, record, encode;
//!   the one mapping of errors to gRPC statuses.
//! - [`domain`]: validated newtypes (`RepositoryName`, `Digest`, …) and plain records. No I/O.
//! - [`policy`]: the organisation's rules as pure functions.
//! - [`ecr`]: the only code that talks to AWS (budget, retry, circuit breaker per registry).
//! - [`store`]: the only code that talks to Postgres.
//! - [`audit`]: the CloudTrail-shaped audit trail.
//! - [`auth`]: caller identity (a tower layer): OIDC bearer tokens, mTLS, insecure-dev.
//! - [`tls`]: serving TLS (`[server.tls]`): rustls configuration and the acceptor stream.
//! - [`web`]: gRPC-Web and CORS for browser portals (`[server.grpc_web]`), the outermost layer.
//! - [`inventory`]: keeps the cache true.
//! - [`overload`]: load shedding and per-caller rate limits (tower layers).
//! - [`cleanup`]: plans cleanups and carries out cleanup runs.
//! - [`compliance`]: judges every cached repository against the org policy and stores the violations.
//! - [`recovery`]: resolves the pending audit records of calls a crash interrupted.
//! - [`admin`]: the HTTP admin listener (health probes, Prometheus metrics), the
//!   metrics themselves (also as OTLP instruments) and the layer that measures gRPC calls.
//! - [`telemetry`]: logs (text or JSON with trace ids) and OpenTelemetry
//!   (OTLP traces and metrics, the span of each gRPC call).
//! - [`tasks`]: what the background tasks share (a pause that ends at the stop signal).
//! - [`memory`]: returns freed memory to the system.
//! - [`config`]: settings and the rules that need no file; a leaf (only [`domain`]).
//! - [`server`]: wiring: what the settings are turned into (`server::parts`),
//!   the state, the background tasks, the gRPC listener, shutdown.
//! - [`pb`]: the generated protobuf types and gRPC stubs.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cleanup;
pub mod compliance;
pub mod config;
pub mod domain;
pub mod ecr;
pub mod inventory;
pub mod memory;
pub mod overload;
pub mod policy;
pub mod recovery;
pub mod server;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod web;

/// Generated protobuf types and gRPC stubs of `ecrgateway.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("ecrgateway.v1");

    /// The encoded descriptor set of the gateway's protos (reflection, the
    /// methods metrics know, tests that read the API's shape).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ecrgateway_descriptor");
}
