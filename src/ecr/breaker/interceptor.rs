//! The SDK hook: every call through a registry's client asks its [`Breaker`]
//! before anything is sent (refused calls never reach the network or the
//! retry loop) and reports how the operation ended, after the SDK's retries.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ecr::config::interceptors::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_ecr::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use super::{Admission, Breaker, Failure, Outcome};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Puts a registry's breaker in front of its SDK client.
#[derive(Debug)]
pub struct BreakerInterceptor {
    breaker: Arc<Breaker>,
}

impl BreakerInterceptor {
    /// Guards every call of the client it is added to with `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> BreakerInterceptor {
        BreakerInterceptor { breaker }
    }
}

/// Marks an operation the breaker let through, so that its end is counted
/// (a refused operation reaches `read_after_execution` too, without it).
#[derive(Debug, Clone)]
struct Admitted(Admission);

impl Storable for Admitted {
    type Storer = StoreReplace<Self>;
}

impl Intercept for BreakerInterceptor {
    fn name(&self) -> &'static str {
        "CircuitBreaker"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let admission = self.breaker.admit(Instant::now())?;
        cfg.interceptor_state().store_put(Admitted(admission));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Admitted(admission)) = cfg.load::<Admitted>().cloned() {
            let optional = cfg
                .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
                .is_some_and(|m| crate::ecr::error::OPTIONAL_OPERATIONS.contains(&m.name()));
            let outcome = match outcome(context) {
                // An endpoint without the operation answers 5xx for it; that says nothing of ECR's health.
                Outcome::Down(_) if optional => Outcome::Unknown,
                outcome => outcome,
            };
            self.breaker.settle(admission, outcome, Instant::now());
        }
        Ok(())
    }
}

/// Whether ECR answered: any HTTP answer below 500 (NotFound, AccessDenied,
/// validation, throttling) proves it is up.
fn outcome(context: &FinalizerInterceptorContextRef<'_>) -> Outcome {
    let Some(result) = context.output_or_error() else {
        return Outcome::Unknown;
    };
    let Err(error) = result else {
        return Outcome::Answered;
    };
    if let Some(status) = context.response().map(|r| r.status().as_u16()) {
        return if status >= 500 {
            Outcome::Down(Failure::plain(format!("HTTP {status} from ECR")))
        } else {
            Outcome::Answered
        };
    }
    // The summary names the kind of failure only: the transport's own words
    // (addresses, OS errors) go to the log with the breaker's transition.
    let summary = if error.is_timeout_error() {
        "ECR did not answer in time"
    } else if error.is_connector_error() {
        "no connection to ECR"
    } else if error.is_response_error() {
        "ECR's response was cut off or unreadable"
    } else {
        return Outcome::Unknown;
    };
    Outcome::Down(Failure {
        summary: summary.to_owned(),
        detail: error_text(error),
    })
}

fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
