//! gRPC-Web for browser portals (`[server.grpc_web]`): [`BrowserLayer`], the
//! outermost layer of the gRPC listener.
//!
//! Plain gRPC over HTTP/2 goes straight through to the inner layers (one
//! header look-up; nothing is wrapped or boxed). Everything a browser sends —
//! a gRPC-Web call, a CORS preflight, any HTTP/1.1 request — goes through
//! CORS (tower-http) and then tonic-web, which turns a gRPC-Web call into a
//! gRPC call for the inner layers and the answer back into gRPC-Web. So the
//! metrics, identity and decode-error layers see a gRPC-Web call as the gRPC
//! call it stands for: the same method path, the same identity headers, the
//! status in the trailers.
//!
//! Origins are an allowlist: a preflight from an origin that is not listed
//! is refused with 403 and no CORS headers, and a gRPC-Web call that names
//! such an origin is answered PERMISSION_DENIED without reaching a handler.
//! A call with no `Origin` (not from a browser: Node, curl) is served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::TryFutureExt as _;
use futures::future::{Either, MapOk};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{GROUPS_HEADER, PRINCIPAL_HEADER};
use crate::config::GrpcWebConfig;

/// How long browsers may cache a preflight's answer (Chromium caps it at 2 hours).
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a page may send: gRPC-Web's own, the credentials of every
/// auth mode, and W3C trace context.
pub const ALLOWED_HEADERS: [&str; 9] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    PRINCIPAL_HEADER,
    GROUPS_HEADER,
    "traceparent",
    "tracestate",
];

/// Response headers a page may read: the status and its details (gRPC-Web
/// puts them in the headers of a trailers-only answer).
pub const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// Serves gRPC-Web and CORS beside gRPC when `[server.grpc_web] enabled`;
/// passes everything through untouched otherwise.
#[derive(Debug, Clone)]
pub struct BrowserLayer {
    browser: Option<Arc<Browser>>,
}

/// What the browser path needs, built once from the configuration.
#[derive(Debug)]
struct Browser {
    origins: Origins,
    cors: CorsLayer,
}

#[derive(Debug)]
enum Origins {
    Any,
    Listed(Vec<HeaderValue>),
}

impl Origins {
    fn allow(&self, origin: &HeaderValue) -> bool {
        match self {
            Origins::Any => true,
            Origins::Listed(listed) => listed.contains(origin),
        }
    }
}

impl BrowserLayer {
    /// The layer for `config` (checked by [`crate::config::Config::check`]).
    pub fn new(config: &GrpcWebConfig) -> BrowserLayer {
        if !config.enabled {
            return BrowserLayer { browser: None };
        }
        let origins = if config.allows_any_origin() {
            Origins::Any
        } else {
            Origins::Listed(
                config
                    .allowed_origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok())
                    .collect(),
            )
        };
        let allow_origin = match &origins {
            Origins::Any => AllowOrigin::any(),
            Origins::Listed(listed) => AllowOrigin::list(listed.iter().cloned()),
        };
        let cors = CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_credentials(config.allow_credentials)
            .allow_methods([Method::POST])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(PREFLIGHT_MAX_AGE);
        BrowserLayer {
            browser: Some(Arc::new(Browser { origins, cors })),
        }
    }

    /// Whether gRPC-Web is served (the listener must then accept HTTP/1.1).
    pub fn enabled(&self) -> bool {
        self.browser.is_some()
    }
}

impl<S> Layer<S> for BrowserLayer {
    type Service = BrowserService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BrowserService {
            inner,
            browser: self.browser.clone(),
        }
    }
}

/// The service [`BrowserLayer`] wraps around the gRPC layers.
#[derive(Debug, Clone)]
pub struct BrowserService<S> {
    inner: S,
    browser: Option<Arc<Browser>>,
}

/// The answer body: the inner layers' own for plain gRPC, tonic's for the browser path.
pub type BrowserBody<B> = http_body_util::Either<B, Body>;

type Passed<B> = fn(Response<B>) -> Response<BrowserBody<B>>;
type BrowserFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<BrowserBody<B>>, E>> + Send>>;

impl<S, B> Service<Request<Body>> for BrowserService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    type Response = Response<BrowserBody<B>>;
    type Error = S::Error;
    type Future = Either<MapOk<S::Future, Passed<B>>, BrowserFuture<B, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let browser = match &self.browser {
            Some(browser) if from_browser(&request) => browser.clone(),
            _ => {
                let passed: Passed<B> = |response| response.map(BrowserBody::Left);
                return Either::Left(self.inner.call(request).map_ok(passed));
            }
        };
        let origin = request.headers().get(header::ORIGIN);
        if let Some(refusal) = refusal(&browser.origins, origin, &request) {
            return Either::Right(Box::pin(std::future::ready(Ok(refusal.map(BrowserBody::Right)))));
        }
        // The ready service goes with this call; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let service = browser.cors.layer(tonic_web::GrpcWebLayer::new().layer(inner));
        Either::Right(Box::pin(
            service
                .oneshot(request)
                .map_ok(|response| response.map(BrowserBody::Right)),
        ))
    }
}

/// Whether the browser path handles `request`: gRPC-Web calls, preflights and
/// anything over HTTP/1 (which tonic-web answers 400 unless it is gRPC-Web).
fn from_browser<T>(request: &Request<T>) -> bool {
    request.version() != Version::HTTP_2
        || request.method() == Method::OPTIONS
        || request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc-web"))
}

/// The answer to a browser request from an origin that is not allowed, if it is one.
fn refusal<T>(
    origins: &Origins,
    origin: Option<&HeaderValue>,
    request: &Request<T>,
) -> Option<Response<Body>> {
    let allowed = origin.is_some_and(|origin| origins.allow(origin));
    if request.method() == Method::OPTIONS {
        // A preflight is only ever a browser's: without an allowed origin there is nothing to allow.
        return (!allowed).then(forbidden);
    }
    let origin = origin.filter(|_| !allowed)?;
    let shown = String::from_utf8_lossy(origin.as_bytes());
    let status = tonic::Status::permission_denied(format!(
        "origin `{shown}` may not call the gateway from a browser: add it to server.grpc_web.allowed_origins"
    ));
    let mut response: Response<Body> = status.into_http();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    Some(response)
}

fn forbidden() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, method: Method, content_type: Option<&'static str>) -> Request<()> {
        let mut request = Request::builder().version(version).method(method).uri("/x/Y");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request.body(()).expect("request")
    }

    #[test]
    fn plain_grpc_over_http2_skips_the_browser_path() {
        assert!(!from_browser(&request(
            Version::HTTP_2,
            Method::POST,
            Some("application/grpc")
        )));
        assert!(!from_browser(&request(
            Version::HTTP_2,
            Method::POST,
            Some("application/grpc+proto")
        )));
    }

    #[test]
    fn grpc_web_preflights_and_http1_take_the_browser_path() {
        assert!(from_browser(&request(
            Version::HTTP_2,
            Method::POST,
            Some("application/grpc-web+proto")
        )));
        assert!(from_browser(&request(
            Version::HTTP_11,
            Method::POST,
            Some("application/grpc-web-text")
        )));
        assert!(from_browser(&request(Version::HTTP_2, Method::OPTIONS, None)));
        assert!(from_browser(&request(
            Version::HTTP_11,
            Method::POST,
            Some("application/grpc")
        )));
    }

    #[test]
    fn only_listed_origins_pass_and_unlisted_calls_are_permission_denied() {
        let origins = Origins::Listed(vec![HeaderValue::from_static("https://portal.example.com")]);
        let call = request(Version::HTTP_11, Method::POST, Some("application/grpc-web+proto"));
        let listed = HeaderValue::from_static("https://portal.example.com");
        let other = HeaderValue::from_static("https://evil.example");

        assert!(refusal(&origins, Some(&listed), &call).is_none());
        assert!(
            refusal(&origins, None, &call).is_none(),
            "no Origin: not a browser"
        );
        let refused = refusal(&origins, Some(&other), &call).expect("refused");
        assert_eq!(refused.headers()["grpc-status"], "7");
        assert_eq!(refused.headers()["content-type"], "application/grpc-web+proto");
        let message = refused.headers()["grpc-message"].to_str().expect("ascii");
        assert!(message.contains("server.grpc_web.allowed_origins"), "{message}");

        let preflight = request(Version::HTTP_11, Method::OPTIONS, None);
        assert_eq!(
            refusal(&origins, Some(&other), &preflight).map(|r| r.status()),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            refusal(&origins, None, &preflight).map(|r| r.status()),
            Some(StatusCode::FORBIDDEN)
        );
        assert!(refusal(&origins, Some(&listed), &preflight).is_none());
        assert!(refusal(&Origins::Any, Some(&other), &preflight).is_none());
    }
}
