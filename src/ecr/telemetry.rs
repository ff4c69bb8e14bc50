//! Telemetry of every ECR operation, from one aws-smithy interceptor on each
//! registry's client, so that no call site is missed: a counter by action,
//! outcome and throttling (through an [`EcrObserver`], `admin::Metrics` in
//! the server) and, with tracing on, a client span per operation — child of
//! whatever span the caller is in — with the action, registry, region,
//! outcome, whether an attempt was throttled, and the attempts made.
//!
//! The interceptor keeps its per-operation state in the operation's config
//! bag; the span ends when the operation does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use aws_sdk_ecr::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_ecr::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use tracing::Span;
use tracing::field::Empty;

use super::error::{EcrError, classify_code};
use super::{Registries, Registry};

/// How one ECR operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrCallOutcome {
    /// The registry's alias.
    pub registry: String,
    /// The ECR action, e.g. `CreateRepository`.
    pub action: String,
    /// `ok`, or the class of the failure: `not_found`, `already_exists`,
    /// `conflict`, `throttled`, `access_denied`, `invalid`, `unavailable`.
    pub outcome: &'static str,
    /// Whether ECR throttled any attempt (the call may still have succeeded on a retry).
    pub throttled: bool,
    /// Attempts made (1 without retries).
    pub attempts: u32,
}

/// Told of every ECR operation that ends.
pub trait EcrObserver: Send + Sync + std::fmt::Debug {
    /// One operation ended.
    fn ecr_call_finished(&self, call: &EcrCallOutcome);
}

impl Registries {
    /// Every registry's client, with the telemetry interceptor: counted
    /// through `observer`, and traced when `traced`.
    pub fn observed(mut self, observer: Arc<dyn EcrObserver>, traced: bool) -> Registries {
        for registry in self.by_alias.values_mut() {
            registry.observe(observer.clone(), traced);
        }
        self
    }
}

impl Registry {
    fn observe(&mut self, observer: Arc<dyn EcrObserver>, traced: bool) {
        let interceptor = EcrTelemetry {
            registry: self.reference.alias.clone(),
            region: self.reference.region.clone(),
            observer,
            traced,
        };
        let config = self.client.config().to_builder().interceptor(interceptor).build();
        self.client = aws_sdk_ecr::Client::from_conf(config);
    }
}

#[derive(Debug)]
struct EcrTelemetry {
    registry: String,
    region: String,
    observer: Arc<dyn EcrObserver>,
    traced: bool,
}

/// One operation in progress.
#[derive(Debug)]
struct InFlight {
    action: String,
    span: Span,
    attempts: AtomicU32,
    throttled: AtomicBool,
}

impl Storable for InFlight {
    type Storer = StoreReplace<Self>;
}

impl Intercept for EcrTelemetry {
    fn name(&self) -> &'static str {
        "EcrTelemetry"
    }

    // Not `read_before_execution`: a client's interceptors run that before the
    // operation's configuration (and its name) is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let action = cfg
            .load::<Metadata>()
            .map_or_else(|| "unknown".to_owned(), |metadata| metadata.name().to_owned());
        let span = if self.traced {
            tracing::info_span!(
                "ecr",
                otel.name = %format_args!("ECR/{action}"),
                otel.kind = "client",
                otel.status_code = Empty,
                rpc.system = "aws-api",
                rpc.service = "ECR",
                rpc.method = %action,
                action = %action,
                registry = %self.registry,
                region = %self.region,
                cloud.region = %self.region,
                outcome = Empty,
                throttled = Empty,
                attempts = Empty,
            )
        } else {
            Span::none()
        };
        cfg.interceptor_state().store_put(InFlight {
            action,
            span,
            attempts: AtomicU32::new(0),
            throttled: AtomicBool::new(false),
        });
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(call) = cfg.load::<InFlight>() {
            call.attempts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let (Some(call), Some(response)) = (cfg.load::<InFlight>(), context.response())
            && is_throttling(response)
        {
            call.throttled.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(call) = cfg.load::<InFlight>() else {
            return Ok(());
        };
        let outcome = match context.output_or_error() {
            Some(Ok(_)) => "ok",
            Some(Err(error)) if error.is_operation_error() => context
                .response()
                .and_then(error_code)
                .map_or("unavailable", |code| {
                    outcome_of(&classify_code("", code, String::new()))
                }),
            _ => "unavailable",
        };
        let finished = EcrCallOutcome {
            registry: self.registry.clone(),
            action: call.action.clone(),
            outcome,
            throttled: call.throttled.load(Ordering::Relaxed),
            attempts: call.attempts.load(Ordering::Relaxed),
        };
        call.span.record("outcome", finished.outcome);
        call.span.record("throttled", finished.throttled);
        call.span.record("attempts", finished.attempts);
        if matches!(outcome, "unavailable" | "circuit_open") {
            call.span.record("otel.status_code", "error");
        }
        self.observer.ecr_call_finished(&finished);
        Ok(())
    }
}

/// The label of a failure's class.
fn outcome_of(error: &EcrError) -> &'static str {
    match error {
        EcrError::NotFound { .. } => "not_found",
        EcrError::AlreadyExists { .. } => "already_exists",
        EcrError::Conflict { .. } => "conflict",
        EcrError::Throttled { .. } => "throttled",
        EcrError::AccessDenied { .. } => "access_denied",
        EcrError::Invalid { .. } => "invalid",
        EcrError::Unavailable { .. } => "unavailable",
        EcrError::Unsupported { .. } => "unsupported",
        // Refused by the registry's circuit breaker: nothing was sent.
        EcrError::CircuitOpen { .. } => "circuit_open",
    }
}

/// Whether an attempt's response is ECR throttling it.
fn is_throttling(response: &HttpResponse) -> bool {
    response.status().as_u16() == 429
        || error_code(response)
            .is_some_and(|code| matches!(classify_code("", code, String::new()), EcrError::Throttled { .. }))
}

/// ECR's error code of a failed response (awsJson1.1): the
/// `x-amzn-errortype` header, else `__type` (or `code`) in the body, without
/// its namespace (`…#`) and detail (`:…`).
fn error_code(response: &HttpResponse) -> Option<String> {
    if response.status().is_success() {
        return None;
    }
    let raw = match response.headers().get("x-amzn-errortype") {
        Some(header) => header.to_owned(),
        None => {
            let body: serde_json::Value = serde_json::from_slice(response.body().bytes()?).ok()?;
            body.get("__type")
                .or_else(|| body.get("code"))?
                .as_str()?
                .to_owned()
        }
    };
    let without_namespace = raw.rsplit('#').next().unwrap_or(&raw);
    let code = without_namespace.split(':').next().unwrap_or(without_namespace);
    (!code.is_empty()).then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn response(status: u16, header: Option<&str>, body: &str) -> HttpResponse {
        let mut response =
            HttpResponse::new(status.try_into().expect("status"), SdkBody::from(body.to_owned()));
        if let Some(value) = header {
            response
                .headers_mut()
                .insert("x-amzn-errortype", value.to_owned());
        }
        response
    }

    #[test]
    fn the_error_code_comes_from_the_header_or_the_body_without_namespace_or_detail() {
        assert_eq!(
            error_code(&response(400, Some("ThrottlingException:http://internal"), "")),
            Some("ThrottlingException".into())
        );
        assert_eq!(
            error_code(&response(
                400,
                None,
                r#"{"__type":"com.amazonaws.ecr#RepositoryNotFoundException","message":"x"}"#
            )),
            Some("RepositoryNotFoundException".into())
        );
        assert_eq!(error_code(&response(200, None, "{}")), None);
        assert_eq!(error_code(&response(500, None, "not json")), None);
    }

    #[test]
    fn throttling_is_a_throttling_code_or_http_429() {
        assert!(is_throttling(&response(400, Some("ThrottlingException"), "")));
        assert!(is_throttling(&response(429, None, "")));
        assert!(!is_throttling(&response(
            400,
            Some("RepositoryNotFoundException"),
            ""
        )));
        assert!(!is_throttling(&response(200, None, "{}")));
    }
}
