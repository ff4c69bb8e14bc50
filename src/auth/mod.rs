//! Caller identity. [`IdentityLayer`] puts a [`Caller`] into every request's
//! extensions when the configured mode can establish one; handlers ask for it
//! with [`Caller::from_request`] and answer UNAUTHENTICATED when it is absent.
//! Health and reflection need no identity. Later modes (OIDC JWT, mTLS) plug in
//! here without touching handlers.

pub mod authz;

use std::task::{Context, Poll};

use http::{HeaderMap, Request};
use tower::{Layer, Service};

use crate::config::AuthMode;
use crate::domain::Identity;

/// Header carrying the principal in `insecure-dev` mode.
pub const PRINCIPAL_HEADER: &str = "x-ecr-gateway-principal";
/// Header carrying comma-separated groups in `insecure-dev` mode.
pub const GROUPS_HEADER: &str = "x-ecr-gateway-groups";
/// Longest principal accepted, in bytes.
const MAX_PRINCIPAL_BYTES: usize = 256;
/// Most groups accepted.
const MAX_GROUPS: usize = 64;

/// The identity of the caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who is calling.
    pub identity: Identity,
}

/// Why a request carries no usable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingIdentity {
    /// Said to the caller as the UNAUTHENTICATED message.
    pub reason: String,
}

impl Caller {
    /// The caller the identity layer established, or why there is none.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Caller, MissingIdentity> {
        match request.extensions().get::<Result<Caller, MissingIdentity>>() {
            Some(result) => result.clone(),
            None => Err(MissingIdentity {
                reason: "no identity layer ran for this request".into(),
            }),
        }
    }
}

/// Establishes the caller from request metadata.
pub fn identify(mode: AuthMode, headers: &HeaderMap) -> Result<Caller, MissingIdentity> {
    match mode {
        AuthMode::InsecureDev => identify_insecure_dev(headers),
    }
}

fn identify_insecure_dev(headers: &HeaderMap) -> Result<Caller, MissingIdentity> {
    let principal = match headers.get(PRINCIPAL_HEADER) {
        None => {
            return Err(MissingIdentity {
                reason: format!(
                    "missing `{PRINCIPAL_HEADER}` metadata: auth mode insecure-dev takes the caller from it"
                ),
            });
        }
        Some(value) => value.to_str().map_err(|_| MissingIdentity {
            reason: format!("`{PRINCIPAL_HEADER}` must be printable ASCII"),
        })?,
    };
    let principal = principal.trim();
    if principal.is_empty() || principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(MissingIdentity {
            reason: format!("`{PRINCIPAL_HEADER}` must be 1-{MAX_PRINCIPAL_BYTES} characters"),
        });
    }
    let groups = match headers.get(GROUPS_HEADER) {
        None => Vec::new(),
        Some(value) => parse_groups(value.to_str().map_err(|_| MissingIdentity {
            reason: format!("`{GROUPS_HEADER}` must be printable ASCII"),
        })?)?,
    };
    Ok(Caller {
        identity: Identity {
            principal: principal.to_owned(),
            principal_type: "User".into(),
            groups,
            auth_method: "insecure-dev".into(),
        },
    })
}

fn parse_groups(text: &str) -> Result<Vec<String>, MissingIdentity> {
    let groups: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    if groups.len() > MAX_GROUPS {
        return Err(MissingIdentity {
            reason: format!("`{GROUPS_HEADER}` lists more than {MAX_GROUPS} groups"),
        });
    }
    Ok(groups)
}

/// Tower layer that runs [`identify`] on every request.
#[derive(Clone, Copy, Debug)]
pub struct IdentityLayer {
    mode: AuthMode,
}

impl IdentityLayer {
    /// A layer for the configured mode.
    pub fn new(mode: AuthMode) -> Self {
        Self { mode }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = IdentityService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IdentityService {
            inner,
            mode: self.mode,
        }
    }
}

/// The service [`IdentityLayer`] wraps around the gRPC router.
#[derive(Clone, Debug)]
pub struct IdentityService<S> {
    inner: S,
    mode: AuthMode,
}

impl<S, B> Service<Request<B>> for IdentityService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let caller = identify(self.mode, request.headers());
        request.extensions_mut().insert(caller);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn insecure_dev_reads_principal_and_groups() {
        let caller = identify(
            AuthMode::InsecureDev,
            &headers(&[
                (PRINCIPAL_HEADER, "alice@example.com"),
                (GROUPS_HEADER, "payments, search ,"),
            ]),
        )
        .expect("caller");
        assert_eq!(caller.identity.principal, "alice@example.com");
        assert_eq!(caller.identity.groups, vec!["payments", "search"]);
        assert_eq!(caller.identity.auth_method, "insecure-dev");
    }

    #[test]
    fn a_missing_principal_says_which_header_is_needed() {
        let error = identify(AuthMode::InsecureDev, &HeaderMap::new()).expect_err("no caller");
        assert!(error.reason.contains(PRINCIPAL_HEADER));
    }

    #[test]
    fn a_blank_principal_is_refused() {
        let error =
            identify(AuthMode::InsecureDev, &headers(&[(PRINCIPAL_HEADER, "   ")])).expect_err("blank");
        assert!(error.reason.contains("1-256"));
    }
}
