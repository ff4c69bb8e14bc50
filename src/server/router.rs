//! The gRPC listener: its HTTP/2 settings, the tower layers in their order, reflection (v1 and v1alpha) and the services, each with the configured message-size limit.

use super::*;

/// The tower layers of the gRPC listener, outermost first (see [`grpc_router`]).
pub(super) type GrpcLayers = Stack<
    DecodeErrorLayer,
    Stack<
        RateLimitLayer,
        Stack<IdentityLayer, Stack<ShedLayer, Stack<MetricsLayer, Stack<BrowserLayer, Identity>>>>,
    >,
>;

/// A generated service's server with the configured message-size limit both ways.
macro_rules! limited {
    ($server:expr, $max:expr) => {
        $server
            .max_decoding_message_size($max)
            .max_encoding_message_size($max)
    };
}

/// The gRPC listener: its HTTP/2 settings, the tower layers and the services
/// (health, reflection, the gateway's own).
pub(super) fn grpc_router(
    config: &Config,
    wiring: &Wiring,
    health_service: HealthServer<impl Health>,
) -> anyhow::Result<Router<GrpcLayers>> {
    let state = &wiring.state;
    let max_message = config.server.max_message_bytes;
    let credential_roles = config
        .registries
        .iter()
        .filter_map(|r| Some((r.alias.clone(), r.credentials_role_arn.clone()?)))
        .collect();
    let browser = BrowserLayer::new(&config.server.grpc_web);
    if browser.enabled() {
        tracing::info!(
            allowed_origins = ?config.server.grpc_web.allowed_origins,
            "gRPC-Web enabled (HTTP/1.1 and HTTP/2)"
        );
    }
    Ok(Server::builder()
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
        .layer(MetricsLayer::new(wiring.metrics.clone()).traced(config.telemetry.enabled))
        // Before identity: a shed call costs no token verification.
        .layer(ShedLayer::new(
            config.overload.max_concurrent_calls,
            Duration::from_millis(config.overload.retry_after_ms),
        ))
        .layer(IdentityLayer::new(wiring.authenticator.clone()))
        .layer(RateLimitLayer::new(wiring.rate_limits.clone()))
        .layer(DecodeErrorLayer)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(limited!(
            RepositoryServiceServer::new(RepositoryApi::new(state.clone())),
            max_message
        ))
        .add_service(limited!(
            ImageServiceServer::new(ImageApi::new(state.clone())),
            max_message
        ))
        .add_service(limited!(
            ScanServiceServer::new(ScanApi::new(state.clone())),
            max_message
        ))
        .add_service(limited!(
            CleanupServiceServer::new(CleanupApi::new(state.clone())),
            max_message
        ))
        .add_service(limited!(
            ComplianceServiceServer::new(ComplianceApi::new(state.clone())),
            max_message
        ))
        .add_service(limited!(
            AuditServiceServer::new(AuditApi::new(state.clone())),
            max_message
        ))
        .add_service(limited!(
            RegistryAccessServiceServer::new(AccessApi::new(
                state.clone(),
                config.access.clone(),
                credential_roles,
            )),
            max_message
        )))
}

/// Reflection knows the gateway's services, health, both reflection versions
/// and `google.rpc` error details (so grpcurl can print them).
pub(super) fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}
