//! [`ShedLayer`]: a process-wide limit of calls in flight. A call over the
//! limit is not queued (a queue only turns overload into latency for
//! everyone) but answered RESOURCE_EXHAUSTED with `RetryInfo` at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::{exhausted, is_health_check};

/// Sheds calls beyond `max_concurrent_calls` in flight, health checks excepted.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    retry_after: Duration,
}

impl ShedLayer {
    /// At most `limit` calls at once; shed calls are told to retry after `retry_after`.
    pub fn new(limit: usize, retry_after: Duration) -> ShedLayer {
        ShedLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            retry_after,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ShedLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: S,
    layer: ShedLayer,
}

impl<S, B> Service<Request<B>> for ShedService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_health_check(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            let status = exhausted(
                "OVERLOADED",
                format!(
                    "the gateway is serving its limit of {} calls at once (overload.max_concurrent_calls); retry after the RetryInfo delay",
                    self.layer.limit
                ),
                self.layer.retry_after,
                None,
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // Held until the response ends: a stream counts while it streams.
            Ok(response.map(|inner| {
                tonic::body::Body::new(PermitBody {
                    inner,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that holds its call's permit until it is dropped.
struct PermitBody {
    inner: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl Body for PermitBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
