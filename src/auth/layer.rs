//! [`IdentityLayer`]: the tower layer that asks the [`Authenticator`] who
//! calls, for every request, and puts the answer (a [`super::Caller`] or why
//! there is none) into the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::Authenticator;

/// Tower layer that runs [`Authenticator::identify`] on every request.
#[derive(Clone, Debug)]
pub struct IdentityLayer {
    authenticator: Arc<Authenticator>,
}

impl IdentityLayer {
    /// A layer asking `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = IdentityService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IdentityService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`IdentityLayer`] wraps around the gRPC router.
#[derive(Clone, Debug)]
pub struct IdentityService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> Service<Request<B>> for IdentityService<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The ready service goes with this call; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let caller = authenticator
                .identify(request.headers(), request.extensions())
                .await;
            request.extensions_mut().insert(caller);
            inner.call(request).await
        })
    }
}
