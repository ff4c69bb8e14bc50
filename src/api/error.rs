//! The one mapping from the gateway's errors to gRPC statuses. Every status
//! carries `google.rpc.ErrorInfo` (domain `ecr-gateway`, reason in
//! UPPER_SNAKE_CASE) and the detail that helps: `BadRequest` with one field
//! violation per broken rule, `PreconditionFailure`, `ResourceInfo`,
//! `RetryInfo`. Internal causes go to the log, never to the caller. Statuses
//! travel in HTTP/2 trailers, which clients cap (16 KiB by default in hyper):
//! an error lists as many violations as fit a budget and counts the rest.
//! [`DecodeErrorLayer`] answers a body that is not the method's message.

use std::borrow::Cow;
use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryFutureExt as _;
use futures::future::MapOk;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use uuid::Uuid;

use crate::domain::Violation;
use crate::ecr::EcrError;
use crate::store::StoreError;

/// The `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "ecr-gateway";
/// Bytes of violations an error lists. The message and the details (which
/// repeat the message) each carry them: 1.5 KiB keeps a status's trailers
/// under 8 KiB (grpc-java's default cap; hyper's is 16 KiB).
const LISTED_BYTES: usize = 1536;
/// Longest field name or description listed, in bytes.
const MAX_TEXT_BYTES: usize = 512;
/// How tonic words a request body prost could not decode (it answers INTERNAL).
const UNDECODABLE: &str = "failed to decode Protobuf message: ";

/// A state conflict, reported as one `PreconditionFailure` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// Violation type, e.g. `REPOSITORY_NOT_EMPTY`.
    pub kind: String,
    /// What it is about, e.g. `main/payments/api`.
    pub subject: String,
    /// What is wrong and how to fix it.
    pub description: String,
}

/// Everything a handler can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks rules. → INVALID_ARGUMENT with one `BadRequest` violation per rule
    #[error("{}", summarize(.violations))]
    InvalidArgument {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// Every broken rule.
        violations: Vec<Violation>,
    },
    /// The resource does not exist. → NOT_FOUND with `ResourceInfo`
    #[error("{description}")]
    NotFound {
        /// e.g. `ecr.repository`.
        resource_type: &'static str,
        /// e.g. `main/payments/api`.
        resource_name: String,
        /// What is missing and what to check.
        description: String,
    },
    /// The resource exists already. → ALREADY_EXISTS with `ResourceInfo`
    #[error("{description}")]
    AlreadyExists {
        /// e.g. `ecr.repository`.
        resource_type: &'static str,
        /// e.g. `main/payments/api`.
        resource_name: String,
        /// What exists and what to do.
        description: String,
    },
    /// The resource's state forbids the call. → FAILED_PRECONDITION with `PreconditionFailure`
    #[error("{}", describe_preconditions(.violations))]
    FailedPrecondition {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// The conflicts.
        violations: Vec<Precondition>,
    },
    /// A call with the same `request_id` is running. → ABORTED with `RetryInfo`
    #[error("{description}")]
    Aborted {
        /// What is running and when to retry.
        description: String,
        /// When a retry makes sense.
        retry_after: Duration,
    },
    /// No identity. → UNAUTHENTICATED
    #[error("{description}")]
    Unauthenticated {
        /// Why no identity could be established.
        description: String,
    },
    /// The gateway's own AWS identity was refused by ECR. → PERMISSION_DENIED
    #[error("{description}")]
    PermissionDenied {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// What was refused.
        description: String,
    },
    /// A dependency (Postgres, ECR) is down or throttling. → UNAVAILABLE with `RetryInfo`
    #[error("{description}")]
    Unavailable {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// What is unavailable and whether anything changed.
        description: String,
        /// When a retry makes sense.
        retry_after: Duration,
    },
    /// The caller used up a quota. → RESOURCE_EXHAUSTED with `QuotaFailure` and `RetryInfo`
    #[error("{description}")]
    ResourceExhausted {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// Whose quota (`QuotaFailure.subject`).
        subject: String,
        /// Which quota, and when to retry.
        description: String,
        /// When a retry makes sense.
        retry_after: Duration,
    },
    /// A position outside what is kept (a change-log cursor older than its
    /// retention). → OUT_OF_RANGE with `ErrorInfo`
    #[error("{description}")]
    OutOfRange {
        /// `ErrorInfo.reason`.
        reason: &'static str,
        /// What is out of range and what to do instead.
        description: String,
    },
    /// A bug. → INTERNAL; the caller sees only a reference to the log line.
    #[error("internal error (reference {reference})")]
    Internal {
        /// Printed in the log next to the cause.
        reference: Uuid,
    },
}

/// INVALID_ARGUMENT with every violation of a request.
pub fn invalid(violations: Vec<Violation>) -> ApiError {
    ApiError::InvalidArgument {
        reason: "INVALID_REQUEST",
        violations,
    }
}

/// The field violations of an INVALID_ARGUMENT (none for other errors), to
/// report them together with a request's other problems.
pub fn violations_of(error: ApiError) -> Vec<Violation> {
    match error {
        ApiError::InvalidArgument { violations, .. } => violations,
        _ => Vec::new(),
    }
}

/// Decoding a request collects every problem before it answers: a field's
/// decode either gives its value or records why not (`violations` then end
/// in one INVALID_ARGUMENT, see [`invalid`]).
pub trait OrRecord<T> {
    /// The value, or `None` with the violations recorded.
    fn or_record(self, violations: &mut Vec<Violation>) -> Option<T>;
}

impl<T> OrRecord<T> for Result<T, Violation> {
    fn or_record(self, violations: &mut Vec<Violation>) -> Option<T> {
        self.map_err(|v| violations.push(v)).ok()
    }
}

impl<T> OrRecord<T> for Result<T, ApiError> {
    fn or_record(self, violations: &mut Vec<Violation>) -> Option<T> {
        self.map_err(|e| violations.extend(violations_of(e))).ok()
    }
}

impl ApiError {
    /// One field violation.
    pub fn invalid(field: impl Into<String>, rule: &'static str, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            reason: "INVALID_REQUEST",
            violations: vec![Violation::new(field, rule, description)],
        }
    }

    /// Logs the cause with its whole chain and returns an opaque INTERNAL.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        let reference = Uuid::new_v4();
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(next) = source {
            chain.push_str(": ");
            chain.push_str(&next.to_string());
            source = next.source();
        }
        tracing::error!(%reference, "internal error: {chain}");
        ApiError::Internal { reference }
    }

    /// The gRPC code this error becomes.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ApiError::Aborted { .. } => Code::Aborted,
            ApiError::Unauthenticated { .. } => Code::Unauthenticated,
            ApiError::PermissionDenied { .. } => Code::PermissionDenied,
            ApiError::Unavailable { .. } => Code::Unavailable,
            ApiError::ResourceExhausted { .. } => Code::ResourceExhausted,
            ApiError::OutOfRange { .. } => Code::OutOfRange,
            ApiError::Internal { .. } => Code::Internal,
        }
    }

    /// The `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument { reason, .. }
            | ApiError::FailedPrecondition { reason, .. }
            | ApiError::PermissionDenied { reason, .. }
            | ApiError::Unavailable { reason, .. }
            | ApiError::ResourceExhausted { reason, .. }
            | ApiError::OutOfRange { reason, .. } => reason,
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::AlreadyExists { .. } => "ALREADY_EXISTS",
            ApiError::Aborted { .. } => "OPERATION_IN_PROGRESS",
            ApiError::Unauthenticated { .. } => "UNAUTHENTICATED",
            ApiError::Internal { .. } => "INTERNAL",
        }
    }

    /// The status sent to the caller.
    pub fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        match self {
            ApiError::InvalidArgument { violations, .. } => {
                let shown = listed(violations, violation_bytes);
                let rules: Vec<&str> = shown.iter().map(|v| v.rule).collect();
                metadata.insert("rules".to_owned(), rules.join(","));
                if shown.len() < violations.len() {
                    metadata.insert(
                        "unlisted".to_owned(),
                        (violations.len() - shown.len()).to_string(),
                    );
                }
                details.set_bad_request(shown.iter().map(field_violation).collect::<Vec<_>>());
            }
            ApiError::NotFound {
                resource_type,
                resource_name,
                description,
            }
            | ApiError::AlreadyExists {
                resource_type,
                resource_name,
                description,
            } => {
                details.set_resource_info(*resource_type, resource_name.clone(), "", description.clone());
            }
            ApiError::FailedPrecondition { violations, .. } => {
                let shown = listed(violations, precondition_bytes);
                if shown.len() < violations.len() {
                    metadata.insert(
                        "unlisted".to_owned(),
                        (violations.len() - shown.len()).to_string(),
                    );
                }
                for v in shown {
                    details.add_precondition_failure_violation(
                        v.kind.clone(),
                        clip(&v.subject),
                        clip(&v.description),
                    );
                }
            }
            ApiError::Aborted { retry_after, .. } | ApiError::Unavailable { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
            }
            ApiError::ResourceExhausted {
                subject,
                description,
                retry_after,
                ..
            } => {
                details.add_quota_failure_violation(subject.clone(), description.clone());
                details.set_retry_info(Some(*retry_after));
            }
            ApiError::Internal { reference } => {
                metadata.insert("reference".to_owned(), reference.to_string());
            }
            ApiError::Unauthenticated { .. }
            | ApiError::PermissionDenied { .. }
            | ApiError::OutOfRange { .. } => {}
        }
        details.set_error_info(self.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(self.code(), self.to_string(), details)
    }
}

/// The rule id as a google.rpc reason: `naming.max-depth` → `NAMING_MAX_DEPTH`.
pub fn rule_reason(rule: &str) -> String {
    rule.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn field_violation(violation: &Violation) -> FieldViolation {
    FieldViolation {
        field: clip(&violation.field).into_owned(),
        description: format!("[{}] {}", violation.rule, clip(&violation.description)),
        reason: rule_reason(violation.rule),
        localized_message: None,
    }
}

/// The first `items` that fit [`LISTED_BYTES`] (at least one).
fn listed<T>(items: &[T], bytes: impl Fn(&T) -> usize) -> &[T] {
    let mut total = 0;
    let fitting = items
        .iter()
        .take_while(|item| {
            total += bytes(item);
            total <= LISTED_BYTES
        })
        .count();
    &items[..fitting.max(1).min(items.len())]
}

fn violation_bytes(violation: &Violation) -> usize {
    clip(&violation.field).len() + clip(&violation.description).len() + violation.rule.len()
}

fn precondition_bytes(precondition: &Precondition) -> usize {
    clip(&precondition.subject).len() + clip(&precondition.description).len() + precondition.kind.len()
}

/// `text` cut to [`MAX_TEXT_BYTES`] on a character boundary (marked `…`).
fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_TEXT_BYTES {
        return Cow::Borrowed(text);
    }
    let mut cut = MAX_TEXT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…", &text[..cut]))
}

/// How many more there are than were listed, as a suffix.
fn unlisted(total: usize, shown: usize) -> String {
    match total - shown {
        0 => String::new(),
        more => format!("; and {more} more"),
    }
}

fn summarize(violations: &[Violation]) -> String {
    let shown = listed(violations, violation_bytes);
    let listed: Vec<String> = shown
        .iter()
        .map(|v| format!("{}: {} [{}]", clip(&v.field), clip(&v.description), v.rule))
        .collect();
    let more = unlisted(violations.len(), shown.len());
    match violations.len() {
        1 => listed.join(""),
        n => format!("{n} problems: {}{more}", listed.join("; ")),
    }
}

fn describe_preconditions(violations: &[Precondition]) -> String {
    let shown = listed(violations, precondition_bytes);
    let listed: Vec<Cow<'_, str>> = shown.iter().map(|v| clip(&v.description)).collect();
    format!("{}{}", listed.join("; "), unlisted(violations.len(), shown.len()))
}

/// INVALID_ARGUMENT for a request body prost could not decode (tonic's
/// `detail`, e.g. `Inner.field: Outer.field: invalid wire type …`): the field
/// is the path prost names, outermost first, or `body` when it names none.
fn undecodable(detail: &str) -> ApiError {
    let identifier = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let mut path = Vec::new();
    let mut problem = detail;
    while let Some((location, rest)) = problem.split_once(": ") {
        match location.split_once('.') {
            Some((message, field)) if identifier(message) && identifier(field) => {
                path.push(field);
                problem = rest;
            }
            _ => break,
        }
    }
    path.reverse();
    let field = if path.is_empty() {
        "body".to_owned()
    } else {
        path.join(".")
    };
    ApiError::invalid(
        field,
        "request.protobuf",
        format!(
            "the request body is not this method's protobuf message ({problem}); send the encoded request"
        ),
    )
}

/// Turns tonic's INTERNAL for an undecodable request body (the caller's
/// mistake, answered before any handler runs) into INVALID_ARGUMENT naming
/// the field; every other response passes unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeErrorLayer;

impl<S> tower::Layer<S> for DecodeErrorLayer {
    type Service = DecodeErrorService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrorService { inner }
    }
}

/// The service [`DecodeErrorLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct DecodeErrorService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for DecodeErrorService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<R>) -> http::Response<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.inner.call(request).map_ok(answer_undecodable::<R>)
    }
}

/// The response, or INVALID_ARGUMENT when it is tonic's answer to an undecodable body.
fn answer_undecodable<R: Default>(response: http::Response<R>) -> http::Response<R> {
    let detail = Status::from_header_map(response.headers())
        .filter(|status| status.code() == Code::Internal)
        .and_then(|status| status.message().strip_prefix(UNDECODABLE).map(str::to_owned));
    match detail {
        Some(detail) => undecodable(&detail).to_status().into_http(),
        None => response,
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::warn!("database unavailable: {cause}");
                ApiError::Unavailable {
                    reason: "DATABASE_UNAVAILABLE",
                    description: "the gateway's database is unavailable; nothing was changed, retry later"
                        .into(),
                    retry_after: Duration::from_secs(2),
                }
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<EcrError> for ApiError {
    fn from(error: EcrError) -> Self {
        match error {
            EcrError::NotFound {
                operation, message, ..
            } => ApiError::NotFound {
                resource_type: "ecr.resource",
                resource_name: String::new(),
                description: format!("ECR {operation}: {message}"),
            },
            EcrError::AlreadyExists {
                operation, message, ..
            } => ApiError::AlreadyExists {
                resource_type: "ecr.resource",
                resource_name: String::new(),
                description: format!("ECR {operation}: {message}"),
            },
            EcrError::Conflict {
                operation,
                code,
                message,
            } => ApiError::FailedPrecondition {
                reason: "ECR_CONFLICT",
                violations: vec![Precondition {
                    kind: code,
                    subject: operation.to_owned(),
                    description: format!("ECR {operation}: {message}"),
                }],
            },
            EcrError::Throttled {
                operation, message, ..
            } => ApiError::Unavailable {
                reason: "ECR_THROTTLED",
                description: format!("ECR throttled {operation} after retries ({message}); retry later"),
                retry_after: Duration::from_secs(5),
            },
            EcrError::AccessDenied {
                operation, message, ..
            } => ApiError::PermissionDenied {
                reason: "ECR_ACCESS_DENIED",
                description: format!(
                    "ECR refused {operation} to the gateway's own AWS identity ({message}); the platform team must grant it"
                ),
            },
            EcrError::Invalid {
                operation,
                code,
                message,
            } => ApiError::InvalidArgument {
                reason: "ECR_REJECTED",
                violations: vec![Violation::new(
                    "",
                    "ecr.rejected",
                    format!("ECR {operation} rejected the request: {code}: {message}"),
                )],
            },
            EcrError::CircuitOpen { operation, refusal } => ApiError::Unavailable {
                reason: "ECR_CIRCUIT_OPEN",
                description: format!(
                    "ECR registry `{}` is unavailable, so {operation} was not sent: \
                     circuit breaker open ({}); retry in {} s. Reads with consistency CONSISTENCY_CACHED \
                     still answer from the gateway's cache, with the time they were synced",
                    refusal.registry,
                    refusal.reason,
                    refusal.retry_after.as_secs_f64().ceil()
                ),
                retry_after: refusal.retry_after,
            },
            EcrError::Unsupported { operation } => ApiError::FailedPrecondition {
                reason: "ENDPOINT_LACKS_API",
                violations: vec![Precondition {
                    kind: "ENDPOINT_LACKS_API".into(),
                    subject: operation.to_owned(),
                    description: format!(
                        "the registry's ECR endpoint does not implement {operation} (an emulator such as moto, \
                         or a partition without it); nothing was changed"
                    ),
                }],
            },
            EcrError::Unavailable { operation, message } => {
                tracing::warn!(operation, "ECR unavailable: {message}");
                ApiError::Unavailable {
                    reason: "ECR_UNAVAILABLE",
                    description: format!("ECR could not be reached for {operation}; retry later"),
                    retry_after: Duration::from_secs(5),
                }
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        error.to_status()
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
