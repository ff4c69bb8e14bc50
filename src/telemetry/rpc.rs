//! The span of one gRPC call: named `package.Service/Method`, with the
//! `rpc.*` attributes of OpenTelemetry's semantic conventions, and the
//! caller's W3C `traceparent`/`tracestate` as its parent. Handlers add
//! `enduser.id`, `registry` and `repository` as they learn them
//! (`api::call`); the layer records `rpc.grpc.status_code` when the call ends.

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The span of a call to `method` (a known `/package.Service/Method` path, or
/// `unknown`), child of the trace context in `headers`, if any.
pub fn server_span(method: &str, headers: &http::HeaderMap) -> Span {
    let (service, name) = method
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("unknown", "unknown"));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %method.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = Empty,
        enduser.id = Empty,
        registry = Empty,
        repository = Empty,
    );
    // Only a header lookup when the caller sends none.
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// Records how the call ended. Server spans are errors for the codes that
/// say the server failed (OpenTelemetry's gRPC conventions); a caller's
/// mistake is not the server's error.
pub fn record_status(span: &Span, code: Code) {
    span.record("rpc.grpc.status_code", code as i64);
    let server_fault = matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    );
    if server_fault {
        span.record("otel.status_code", "error");
    }
}

/// Reads propagation headers from an HTTP request.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    #[test]
    fn a_traceparent_header_is_read_with_its_tracestate() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .expect("value"),
        );
        headers.insert("tracestate", "vendor=value".parse().expect("value"));

        let context = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));

        let span = context.span();
        let parent = span.span_context();
        assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().get("vendor"), Some("value"));
    }
}
