//! [`RateLimitLayer`]: each caller (principal) gets the rate of its role, a
//! token bucket (GCRA, from `governor`) per principal. It runs after the
//! identity layer, so it knows who calls; calls without an identity pass on
//! to be refused as UNAUTHENTICATED by their handler.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{Request, Response};
use tokio::sync::watch;
use tonic::Status;
use tower::{Layer, Service};

use super::exhausted;
use crate::auth::{Caller, MissingIdentity};
use crate::config::{Rate, RateLimitsConfig};
use crate::domain::Identity;

/// The gateway's own services; health and reflection are not limited.
const LIMITED_PREFIX: &str = "/ecrgateway.";

/// How often principals that have not called lately are forgotten.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// One configured rate and its buckets, one per principal.
struct Rule {
    /// `group deployers` or `default`, for messages.
    name: String,
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Rule {
    fn new(name: String, rate: Rate) -> Rule {
        // Checked by `Config::check`: both are at least 1.
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst()).unwrap_or(NonZeroU32::MIN);
        Rule {
            name,
            rate,
            limiter: DefaultKeyedRateLimiter::dashmap(Quota::per_second(per_second).allow_burst(burst)),
        }
    }
}

/// The configured per-caller rates.
pub struct RateLimits {
    groups: Vec<(String, Rule)>,
    default: Option<Rule>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field(
                "groups",
                &self.groups.iter().map(|(g, r)| (g, r.rate)).collect::<Vec<_>>(),
            )
            .field("default", &self.default.as_ref().map(|r| r.rate))
            .finish()
    }
}

impl RateLimits {
    /// The limits of `[rate_limits]`; `None` when it sets none.
    pub fn from_config(config: &RateLimitsConfig) -> Option<Arc<RateLimits>> {
        if config.default.is_none() && config.groups.is_empty() {
            return None;
        }
        Some(Arc::new(RateLimits {
            groups: config
                .groups
                .iter()
                .map(|g| {
                    (
                        g.group.clone(),
                        Rule::new(format!("group `{}`", g.group), g.rate()),
                    )
                })
                .collect(),
            default: config.default.map(|rate| Rule::new("default".into(), rate)),
        }))
    }

    /// The rule for this caller: the most generous of its groups' rates, else the default.
    fn rule_for(&self, identity: &Identity) -> Option<&Rule> {
        self.groups
            .iter()
            .filter(|(group, _)| identity.groups.iter().any(|g| g == group))
            .map(|(_, rule)| rule)
            .max_by_key(|rule| (rule.rate.per_second, rule.rate.burst()))
            .or(self.default.as_ref())
    }

    /// Takes one call from the caller's bucket, or says when to come back.
    pub fn check(&self, identity: &Identity) -> Result<(), Status> {
        let Some(rule) = self.rule_for(identity) else {
            return Ok(());
        };
        let key = format!("{}:{}", identity.principal_type, identity.principal);
        match rule.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(rule.limiter.clock().now());
                let limit = format!(
                    "{} calls/s with a burst of {} ({} rate in [rate_limits])",
                    rule.rate.per_second,
                    rule.rate.burst(),
                    rule.name
                );
                Err(exhausted(
                    "RATE_LIMITED",
                    format!(
                        "{} is over its rate limit of {limit}; retry in {} ms",
                        identity.principal,
                        wait.as_millis().max(1)
                    ),
                    wait,
                    Some((format!("principal:{}", identity.principal), limit)),
                ))
            }
        }
    }

    /// Forgets the buckets of principals that are full again, so that the
    /// memory held stays proportional to the recent callers.
    pub async fn forget_idle_callers(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        while crate::tasks::pause(FORGET_INTERVAL, &mut stop).await {
            for rule in self.groups.iter().map(|(_, r)| r).chain(self.default.as_ref()) {
                rule.limiter.retain_recent();
                rule.limiter.shrink_to_fit();
            }
        }
    }
}

/// Applies [`RateLimits`] to the gateway's own RPCs.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limits: Option<Arc<RateLimits>>,
}

impl RateLimitLayer {
    /// A layer applying `limits`; `None` lets every call through.
    pub fn new(limits: Option<Arc<RateLimits>>) -> RateLimitLayer {
        RateLimitLayer { limits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limits: Option<Arc<RateLimits>>,
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(limits) = &self.limits
            && request.uri().path().starts_with(LIMITED_PREFIX)
            && let Some(Ok(caller)) = request.extensions().get::<Result<Caller, MissingIdentity>>()
            && let Err(status) = limits.check(&caller.identity)
        {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupRate;

    fn identity(principal: &str, groups: &[&str]) -> Identity {
        Identity {
            principal: principal.into(),
            principal_type: "User".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            auth_method: "insecure-dev".into(),
        }
    }

    fn limits() -> Arc<RateLimits> {
        RateLimits::from_config(&RateLimitsConfig {
            default: Some(Rate {
                per_second: 1,
                burst: Some(2),
            }),
            groups: vec![
                GroupRate {
                    group: "deployers".into(),
                    per_second: 1,
                    burst: Some(5),
                },
                GroupRate {
                    group: "platform-admins".into(),
                    per_second: 1,
                    burst: Some(3),
                },
            ],
        })
        .expect("limits")
    }

    fn admitted(limits: &RateLimits, who: &Identity) -> usize {
        (0..20).take_while(|_| limits.check(who).is_ok()).count()
    }

    #[test]
    fn no_limits_configured_means_no_layer_state() {
        assert!(RateLimits::from_config(&RateLimitsConfig::default()).is_none());
    }

    #[test]
    fn each_caller_gets_the_burst_of_its_most_generous_group() {
        let limits = limits();
        assert_eq!(
            admitted(&limits, &identity("argo", &["deployers", "platform-admins"])),
            5
        );
        assert_eq!(admitted(&limits, &identity("root", &["platform-admins"])), 3);
        assert_eq!(admitted(&limits, &identity("alice", &["payments"])), 2);
    }

    #[test]
    fn callers_do_not_share_a_bucket() {
        let limits = limits();
        assert_eq!(admitted(&limits, &identity("alice", &[])), 2);
        assert_eq!(admitted(&limits, &identity("bob", &[])), 2);
    }

    #[test]
    fn a_refusal_says_whose_limit_and_when_to_retry() {
        let limits = limits();
        let alice = identity("alice", &["payments"]);
        admitted(&limits, &alice);
        let status = limits.check(&alice).expect_err("over the limit");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("alice"), "{}", status.message());
        assert!(
            status.message().contains("1 calls/s with a burst of 2"),
            "{}",
            status.message()
        );
        use tonic_types::StatusExt as _;
        let details = status.get_error_details();
        let retry = details
            .retry_info()
            .and_then(|r| r.retry_delay)
            .expect("retry info");
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        assert_eq!(details.error_info().expect("error info").reason, "RATE_LIMITED");
        let quota = details.quota_failure().expect("quota failure");
        assert_eq!(quota.violations[0].subject, "principal:alice");
    }
}
