//! Staying up under load: [`ShedLayer`] refuses calls beyond a process-wide
//! number in flight, [`RateLimitLayer`] holds each caller to the rate of its
//! role. Both answer RESOURCE_EXHAUSTED with `RetryInfo` (when to try again)
//! at once, before any work is done, so a refused call costs microseconds and
//! the calls already admitted keep their latency. Health checks are never
//! refused, so probes and load balancers keep seeing a live server.

mod rate_limit;
mod shed;

pub use rate_limit::{RateLimitLayer, RateLimits};
pub use shed::ShedLayer;

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::api::error::ERROR_DOMAIN;

/// Paths that are always served: the gRPC health service.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Whether a request path is a health check.
fn is_health_check(path: &str) -> bool {
    path.starts_with(HEALTH_PREFIX)
}

/// A RESOURCE_EXHAUSTED status with `RetryInfo`, `ErrorInfo` and, for a
/// quota, a `QuotaFailure` naming whose quota it is.
fn exhausted(
    reason: &str,
    message: String,
    retry_after: Duration,
    quota: Option<(String, String)>,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(retry_after));
    details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    if let Some((subject, description)) = quota {
        details.add_quota_failure_violation(subject, description);
    }
    Status::with_error_details(Code::ResourceExhausted, message, details)
}
