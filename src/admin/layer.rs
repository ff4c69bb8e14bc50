//! [`MetricsLayer`]: times every gRPC call until its response ends and labels
//! it with the method and the gRPC status code.
//!
//! A failed unary call usually answers "trailers-only": `grpc-status` in the
//! response headers and no body. Any other call carries its status in the
//! trailers after the body. So the code is read from the headers first, then
//! from trailers when they come; a response that ends without either is OK
//! when its HTTP status is 200 and mapped from the HTTP status otherwise (the
//! gRPC spec's table). A response dropped before its end (the caller went
//! away, or the call's deadline passed) is counted as `Cancelled`.
//!
//! With telemetry on ([`MetricsLayer::traced`]) each call also gets its span
//! ([`crate::telemetry::rpc`]), entered while the handler runs and ended with
//! the call. Off, the span is `Span::none()`: no header is parsed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tonic::Code;
use tracing::{Instrument as _, Span};

use super::metrics::Metrics;

/// Records `ecr_gateway_rpc_duration_seconds` and `ecr_gateway_rpc_in_flight`.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
    traced: bool,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> MetricsLayer {
        MetricsLayer {
            metrics,
            traced: false,
        }
    }

    /// Also gives every call a span (telemetry on).
    pub fn traced(mut self, traced: bool) -> MetricsLayer {
        self.traced = traced;
        self
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
            traced: self.traced,
        }
    }
}

/// The service [`MetricsLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    traced: bool,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Body + Send + 'static,
{
    type Response = http::Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut call = Call::start(self.metrics.clone(), request.uri().path());
        if self.traced {
            call.span = crate::telemetry::rpc::server_span(&call.method, request.headers());
        }
        let span = call.span.clone();
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let future = async move {
            match response.await {
                Ok(response) => {
                    call.code = code_from_headers(response.headers())
                        .unwrap_or_else(|| code_from_http_status(response.status()));
                    if response.body().is_end_stream() {
                        // Trailers-only: the call ends with these headers.
                        let code = call.code;
                        call.finish(code);
                    }
                    Ok(response.map(|inner| MeteredBody { inner, call }))
                }
                Err(error) => {
                    call.finish(Code::Unknown);
                    Err(error)
                }
            }
        };
        Box::pin(future.instrument(span))
    }
}

/// One call being measured; recorded once, at the latest when dropped.
struct Call {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
    /// The status as known so far.
    code: Code,
    finished: bool,
    /// The call's span; `Span::none()` without telemetry.
    span: Span,
}

impl Call {
    fn start(metrics: Arc<Metrics>, path: &str) -> Call {
        metrics.call_started();
        Call {
            method: metrics.method_label(path),
            metrics,
            started: Instant::now(),
            code: Code::Ok,
            finished: false,
            span: Span::none(),
        }
    }

    fn finish(&mut self, code: Code) {
        if !self.finished {
            self.finished = true;
            let elapsed = self.started.elapsed();
            crate::telemetry::rpc::record_status(&self.span, code);
            // An access log for those who turn it on (RUST_LOG=ecr_gateway::admin::layer=debug),
            // in the call's span so that JSON lines carry its trace id.
            self.span.in_scope(|| {
                tracing::debug!(
                    method = %self.method,
                    code = code_name(code),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "call finished"
                )
            });
            self.metrics
                .call_finished(std::mem::take(&mut self.method), code_name(code), elapsed);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A response body that records its call when it ends.
pub struct MeteredBody<B: Body> {
    inner: B,
    call: Call,
}

impl<B: Body> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // A body that ended without being polled to its end (hyper need not
        // poll once it has seen the last frame) ended with the code known.
        if self.inner.is_end_stream() {
            let code = self.call.code;
            self.call.finish(code);
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = code_from_headers(trailers).unwrap_or(this.call.code);
                    // Trailers end a gRPC response; hyper may not poll again.
                    this.call.finish(code);
                }
            }
            Some(Err(_)) => this.call.finish(Code::Unknown),
            None => {
                let code = this.call.code;
                this.call.finish(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC status code in `grpc-status`, if the headers (or trailers) carry one.
pub fn code_from_headers(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// The code of a response without `grpc-status`, from its HTTP status (the
/// table in gRPC's "HTTP to gRPC status code mapping").
pub fn code_from_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        200 => Code::Ok,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The `code` label: gRPC's code names as Go and most Prometheus exporters
/// spell them (`OK`, `InvalidArgument`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Empty, StreamBody};
    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    const METHOD: &str = "/ecrgateway.v1.ImageService/ResolveImage";

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&[crate::pb::FILE_DESCRIPTOR_SET]))
    }

    fn series(code: &str) -> String {
        format!("ecr_gateway_rpc_duration_seconds_count{{method=\"{METHOD}\",code=\"{code}\"}} 1\n")
    }

    fn request() -> http::Request<()> {
        http::Request::post(METHOD).body(()).expect("request")
    }

    #[test]
    fn grpc_status_is_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(code_from_headers(&headers), None);
        headers.insert("grpc-status", "3".parse().expect("value"));
        assert_eq!(code_from_headers(&headers), Some(Code::InvalidArgument));
        headers.insert("grpc-status", "0".parse().expect("value"));
        assert_eq!(code_from_headers(&headers), Some(Code::Ok));
        headers.insert("grpc-status", "banana".parse().expect("value"));
        assert_eq!(code_from_headers(&headers), Some(Code::Unknown));
    }

    #[test]
    fn responses_without_grpc_status_follow_the_http_mapping() {
        assert_eq!(code_from_http_status(StatusCode::OK), Code::Ok);
        assert_eq!(code_from_http_status(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(
            code_from_http_status(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(code_from_http_status(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn code_names_are_the_ones_prometheus_exporters_use() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }

    #[tokio::test]
    async fn a_status_in_the_trailers_is_recorded_when_the_body_ends() {
        let metrics = metrics();
        let service =
            MetricsLayer::new(metrics.clone()).layer(tower::service_fn(|_: http::Request<()>| async {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "5".parse().expect("value"));
                let frames = vec![
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                    Ok(Frame::trailers(trailers)),
                ];
                Ok::<_, Infallible>(http::Response::new(StreamBody::new(futures::stream::iter(
                    frames,
                ))))
            }));

        let response = service.oneshot(request()).await.expect("response");
        assert_eq!(metrics.in_flight(), 1, "the call lasts until its body ends");
        let _ = response.into_body().collect().await;

        let text = metrics.encode();
        assert!(text.contains(&series("NotFound")), "{text}");
        assert!(text.contains("ecr_gateway_rpc_in_flight 0\n"), "{text}");
    }

    #[tokio::test]
    async fn a_trailers_only_answer_is_recorded_with_the_code_of_its_headers() {
        let metrics = metrics();
        let service =
            MetricsLayer::new(metrics.clone()).layer(tower::service_fn(|_: http::Request<()>| async {
                let mut response = http::Response::new(Empty::<Bytes>::new());
                response
                    .headers_mut()
                    .insert("grpc-status", "3".parse().expect("value"));
                Ok::<_, Infallible>(response)
            }));

        // hyper drops an empty body without polling it.
        drop(service.oneshot(request()).await.expect("response"));

        let text = metrics.encode();
        assert!(text.contains(&series("InvalidArgument")), "{text}");
    }

    #[tokio::test]
    async fn a_body_ending_without_a_status_on_http_200_is_ok() {
        let metrics = metrics();
        let service =
            MetricsLayer::new(metrics.clone()).layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"x"),
                )))
            }));

        let response = service.oneshot(request()).await.expect("response");
        let _ = response.into_body().collect().await;

        assert!(metrics.encode().contains(&series("OK")));
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_is_canceled() {
        let metrics = metrics();
        let service =
            MetricsLayer::new(metrics.clone()).layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"x"),
                )))
            }));

        drop(service.oneshot(request()).await.expect("response"));

        assert!(metrics.encode().contains(&series("Canceled")));
        assert_eq!(metrics.in_flight(), 0);
    }
}
