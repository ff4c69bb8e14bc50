//! The only code that talks to AWS. One [`Registry`] per configured registry,
//! each with its own SDK client (credentials, optional assumed role, optional
//! endpoint), typed calls and error classification ([`EcrError`]), a request
//! budget ([`Budget`]) and a circuit breaker ([`Breaker`]) hooked into the
//! client, so that every call goes through it. Every client also counts and
//! traces its operations ([`Registries::observed`], in `telemetry.rs`).

pub mod breaker;
mod budget;
mod credentials;
mod error;
mod images;
mod queue;
mod repositories;
mod scans;
mod telemetry;
mod templates;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ecr::config::Region;
use aws_sdk_ecr::config::retry::RetryPartition;
use aws_smithy_types::retry::RetrySpec;

pub use breaker::{Breaker, BreakerOpen, BreakerStatus, Phase};
pub use budget::Budget;
pub use credentials::{DockerLogin, SessionRequest};
pub use error::{EcrError, classify, classify_code};
pub use images::{DeleteOutcome, PutOutcome, RawManifest, image_from_detail};
pub use queue::{EventQueue, QueueError, QueueMessage, QueueState, RECEIVE_BATCH};
pub use repositories::{collect_pages, state_from_detail};
pub use scans::{ScanFinding, ScanReport, ScanStart, ScanningSettings};
pub use telemetry::{EcrCallOutcome, EcrObserver};

use crate::config::RegistryConfig;
use crate::domain::RegistryRef;

/// The ECR request ids a call caused, collected for its audit record.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    ids: Arc<Mutex<Vec<String>>>,
}

impl CallLog {
    /// Remembers one ECR request id.
    pub fn record(&self, request_id: Option<&str>) {
        if let Some(id) = request_id
            && let Ok(mut ids) = self.ids.lock()
        {
            ids.push(id.to_owned());
        }
    }

    /// All ids recorded so far.
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }
}

/// One configured registry and its client.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Alias, account and region.
    pub reference: RegistryRef,
    client: aws_sdk_ecr::Client,
    /// STS with the same credentials, for the scoped docker credentials.
    sts: aws_sdk_sts::Client,
    budget: Arc<Budget>,
    breaker: Arc<Breaker>,
    /// The SQS queue of the registry's EventBridge events, when configured.
    events: Option<EventQueue>,
}

impl Registry {
    /// Builds the SDK client: the default credential chain, then the role to assume, if any.
    pub async fn connect(config: &RegistryConfig) -> Registry {
        let region = Region::new(config.region.clone());
        let operation_timeout = Duration::from_secs(config.operation_timeout_seconds.unwrap_or(25));
        let breaker = Arc::new(Breaker::new(
            &config.alias,
            config.breaker.clone(),
            operation_timeout,
        ));
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(region.clone())
            .load()
            .await;
        let mut builder = aws_sdk_ecr::config::Builder::from(&base)
            // Retry Behavior 2.1 (what AWS_NEW_RETRIES_2026=true selects): under
            // the 2.0 rules a retry after throttling costs 5 adaptive tokens
            // at a floor rate of 0.5/s, so at a low call rate each throttled
            // call waited 8-10 s; 2.1 takes one token per attempt.
            .retry_config(
                RetryConfig::adaptive()
                    .with_max_attempts(config.max_attempts.unwrap_or(3))
                    .with_retry_spec(RetrySpec::v2_1()),
            )
            // ECR throttles per account and region: one registry's throttling
            // must not slow the others (the SDK shares one limiter per name).
            .retry_partition(RetryPartition::new(format!(
                "ecr-{}-{}",
                config.account_id, config.region
            )))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(
                        config.attempt_timeout_seconds.unwrap_or(10),
                    ))
                    .operation_timeout(operation_timeout)
                    .build(),
            )
            .interceptor(breaker::interceptor::BreakerInterceptor::new(breaker.clone()));
        // What the ECR client signs with: the assumed registry role, else the default chain.
        let mut credentials = base.credentials_provider();
        if let Some(role_arn) = &config.role_arn {
            let sts_config = match &config.endpoint_url {
                // An emulator or private endpoint that also serves STS.
                Some(url) => base.to_builder().endpoint_url(url).build(),
                None => base.clone(),
            };
            let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                .session_name("ecr-gateway")
                .region(region)
                .configure(&sts_config)
                .build()
                .await;
            let provider = aws_sdk_ecr::config::SharedCredentialsProvider::new(provider);
            builder = builder.credentials_provider(provider.clone());
            credentials = Some(provider);
        }
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let client = aws_sdk_ecr::Client::from_conf(builder.build());
        let sts = sts_client(&base, credentials.clone(), config);
        let events = config
            .events
            .as_ref()
            .map(|events| event_queue(&base, credentials, events));
        Registry {
            reference: RegistryRef {
                alias: config.alias.clone(),
                account_id: config.account_id.clone(),
                region: config.region.clone(),
            },
            client,
            sts,
            budget: Arc::new(Budget::new(config.rates_with_defaults())),
            breaker,
            events,
        }
    }

    /// The queue of the registry's EventBridge events, when configured.
    pub fn events(&self) -> Option<&EventQueue> {
        self.events.as_ref()
    }

    /// The registry's circuit breaker, whose state health reports.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

/// STS with the credentials the ECR client uses (the assumed registry role,
/// if any), at the registry's endpoint override when one is set.
fn sts_client(
    base: &aws_config::SdkConfig,
    credentials: Option<aws_sdk_ecr::config::SharedCredentialsProvider>,
    config: &RegistryConfig,
) -> aws_sdk_sts::Client {
    let mut builder =
        aws_sdk_sts::config::Builder::from(base).retry_config(RetryConfig::standard().with_max_attempts(2));
    if let Some(provider) = credentials {
        builder = builder.credentials_provider(provider);
    }
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    aws_sdk_sts::Client::from_conf(builder.build())
}

/// SQS with the credentials the ECR client uses, in the queue's region, at
/// its endpoint override when one is set.
fn event_queue(
    base: &aws_config::SdkConfig,
    credentials: Option<aws_sdk_ecr::config::SharedCredentialsProvider>,
    config: &crate::config::EventsConfig,
) -> EventQueue {
    let mut builder = aws_sdk_sqs::config::Builder::from(base)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // A long poll waits up to 20 s for messages.
                .operation_attempt_timeout(Duration::from_secs(config.wait_seconds as u64 + 10))
                .build(),
        );
    if let Some(region) = &config.region {
        builder = builder.region(Region::new(region.clone()));
    }
    if let Some(provider) = credentials {
        builder = builder.credentials_provider(provider);
    }
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    EventQueue::new(
        aws_sdk_sqs::Client::from_conf(builder.build()),
        config.queue_url.clone(),
        config.wait_seconds,
        config.visibility_timeout_seconds,
    )
}

/// Every configured registry, by alias.
#[derive(Clone, Debug)]
pub struct Registries {
    by_alias: BTreeMap<String, Registry>,
    default_alias: String,
}

impl Registries {
    /// Connects a client per configured registry.
    pub async fn connect(configs: &[RegistryConfig]) -> Registries {
        let mut by_alias = BTreeMap::new();
        for config in configs {
            by_alias.insert(config.alias.clone(), Registry::connect(config).await);
        }
        let default_alias = configs
            .iter()
            .find(|c| c.default)
            .or_else(|| configs.first())
            .map(|c| c.alias.clone())
            .unwrap_or_default();
        Registries {
            by_alias,
            default_alias,
        }
    }

    /// The registry for `alias`; empty means the default.
    pub fn get(&self, alias: &str) -> Option<&Registry> {
        let alias = if alias.is_empty() {
            self.default_alias.as_str()
        } else {
            alias
        };
        self.by_alias.get(alias)
    }

    /// All registries, by alias.
    pub fn all(&self) -> impl Iterator<Item = &Registry> {
        self.by_alias.values()
    }

    /// The registry with this account and region, if configured.
    pub fn at(&self, account_id: &str, region: &str) -> Option<&Registry> {
        self.all()
            .find(|r| r.reference.account_id == account_id && r.reference.region == region)
    }

    /// The alias of the registry with this account and region, if configured.
    pub fn alias_of(&self, account_id: &str, region: &str) -> Option<&str> {
        self.at(account_id, region).map(|r| r.reference.alias.as_str())
    }

    /// The configured aliases, for error messages.
    pub fn aliases(&self) -> Vec<String> {
        self.by_alias.keys().cloned().collect()
    }
}
