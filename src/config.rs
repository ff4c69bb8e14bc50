//! Typed, layered settings: built-in defaults, then a TOML file (`--config`),
//! then environment variables `ECR_GATEWAY__SECTION__KEY`. Unknown keys are an
//! error naming the key; every other problem is collected and reported at once.
//!
//! A leaf: it imports nothing of the crate but `domain`. The rules here need
//! no file and build nothing; what the settings are turned into (the
//! authenticator, the serving TLS identity, the compiled org policy, the
//! signing and page-token keys) is built, and its problems found, by
//! `server::parts`, which every command starts with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::AccountId;

mod access;
mod auth;
mod breaker;
mod grpc_web;
mod overload;
mod policy;
mod telemetry;

pub use access::{AccessConfig, MAX_CREDENTIAL_SECONDS, MIN_CREDENTIAL_SECONDS};
pub use auth::{AuthConfig, AuthMode, MtlsConfig, OIDC_ALGORITHMS, OidcConfig, is_loopback_host};
pub use breaker::BreakerConfig;
pub use grpc_web::{ANY_ORIGIN, GrpcWebConfig};
pub use overload::{GroupRate, OverloadConfig, Rate, RateLimitsConfig};
pub use policy::{
    AllowedValues, CleanupConfig, DEFAULT_NAMING_PATTERN, DeployConfig, EncryptionConfig, EncryptionType,
    EnvironmentRules, LifecycleTemplates, NamespaceCleanup, NamingConfig, OrgPolicyConfig,
    RepositoryPolicyConfig, RetentionFloor, SettingsConfig, TagConfig,
};
pub use telemetry::{LogFormat, TelemetryConfig};

/// The environment-variable prefix; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "ECR_GATEWAY__";

/// Default TTL of a cached read (a bound; invalidation is by notification):
/// `database.cache_ttl_seconds`.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Default number of cached reads, per cache (ResolveImage answers, gate
/// facts): `database.cache_max_entries`.
pub const CACHE_ENTRIES: usize = 20_000;

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC listener and its limits.
    pub server: ServerConfig,
    /// The Postgres connection.
    pub database: DatabaseConfig,
    /// How callers are identified.
    pub auth: AuthConfig,
    /// The ECR registries the gateway manages; the first is the default unless one says `default = true`.
    pub registries: Vec<RegistryConfig>,
    /// The organisation's rules for repositories.
    pub policy: OrgPolicyConfig,
    /// Background inventory refresh.
    pub sync: SyncConfig,
    /// The worker that carries out cleanup runs.
    pub cleanup: CleanupRunConfig,
    /// The audit trail's signed digests.
    pub audit: AuditConfig,
    /// Who may do what: the Cedar policies and entity data.
    pub authz: AuthzConfig,
    /// The HTTP admin listener (health probes, Prometheus metrics).
    pub admin: AdminConfig,
    /// Load shedding: calls served at once before the rest are refused.
    pub overload: OverloadConfig,
    /// Per-caller rate limits, by group.
    pub rate_limits: RateLimitsConfig,
    /// OpenTelemetry traces and metrics (OTLP), and the log format.
    pub telemetry: TelemetryConfig,
    /// Scoped docker credentials (`RegistryAccessService`).
    pub access: AccessConfig,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the HTTP/1.1 listener for `/healthz`, `/readyz` and
    /// `/metrics`, e.g. `127.0.0.1:9090`; unset serves no admin endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// How often the gauges read from Postgres (audit events pending, sync
    /// lag, cache age, cleanup progress) are refreshed, for `/metrics` and OTLP.
    pub gauge_refresh_seconds: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            gauge_refresh_seconds: 15,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the gRPC listener.
    pub listen: String,
    /// Upper bound of a call's duration; a shorter `grpc-timeout` from the caller wins.
    pub request_timeout_seconds: u64,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_seconds: u64,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent calls served per connection.
    pub concurrency_limit_per_connection: usize,
    /// `[server.tls]`: serve TLS (required by auth mode `mtls`); unset serves plaintext h2c.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// `[server.grpc_web]`: gRPC-Web and CORS for browser portals; off by default.
    pub grpc_web: GrpcWebConfig,
    /// The key that seals page tokens and audit stream cursors: a file
    /// holding 32 bytes as 64 hex characters, the same on every replica.
    /// Unset: a random key generated once and kept in Postgres.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_token_key_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            request_timeout_seconds: 30,
            shutdown_grace_seconds: 20,
            max_message_bytes: 4 * 1024 * 1024,
            concurrency_limit_per_connection: 256,
            tls: None,
            grpc_web: GrpcWebConfig::default(),
            page_token_key_file: None,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`; the password is redacted in `check-config`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a connection before answering UNAVAILABLE.
    pub acquire_timeout_seconds: u64,
    /// Apply pending migrations at start (under an advisory lock).
    pub migrate_on_start: bool,
    /// Upper bound of a cached read's age (ResolveImage). Entries are dropped
    /// as soon as Postgres notifies a change; this bounds the rest. 0 disables
    /// the cache.
    pub cache_ttl_seconds: u64,
    /// How many reads the cache holds (about 200 bytes each).
    pub cache_max_entries: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/ecr_gateway".into(),
            max_connections: 16,
            acquire_timeout_seconds: 3,
            migrate_on_start: true,
            cache_ttl_seconds: CACHE_TTL.as_secs(),
            cache_max_entries: CACHE_ENTRIES,
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
}

/// `[[registries]]`: one ECR registry (an AWS account in a region).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The name callers use in `registry` fields.
    pub alias: String,
    /// The AWS account id that owns the registry (12 digits).
    pub account_id: String,
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint override: a VPC endpoint or an emulator.
    pub endpoint_url: Option<String>,
    /// Role to assume for calls into this registry's account.
    pub role_arn: Option<String>,
    /// Role that `GetRegistryCredentials` assumes, with a session policy that
    /// narrows it to the caller's scope, to make docker credentials.
    pub credentials_role_arn: Option<String>,
    /// Marks the registry used when a request leaves `registry` empty.
    pub default: bool,
    /// Timeout of one ECR API attempt.
    pub attempt_timeout_seconds: Option<u64>,
    /// Timeout of one ECR operation, retries included.
    pub operation_timeout_seconds: Option<u64>,
    /// Attempts per ECR operation (adaptive retry).
    pub max_attempts: Option<u32>,
    /// Request budget: calls per second by ECR action, e.g. `DescribeImages = 5.0`.
    /// Actions not named get the defaults of [`RegistryConfig::rates_with_defaults`].
    pub rates: BTreeMap<String, f64>,
    /// `[registries.breaker]`: when to stop calling an ECR that is down.
    pub breaker: BreakerConfig,
}

impl RegistryConfig {
    /// The configured rates over the defaults, which stay well under ECR's
    /// published limits (BatchGetImage 2,000/s) and budget the unpublished ones.
    pub fn rates_with_defaults(&self) -> BTreeMap<String, f64> {
        let mut rates: BTreeMap<String, f64> = [
            ("DescribeRepositories", 5.0),
            ("DescribeImages", 10.0),
            ("ListTagsForResource", 10.0),
            ("BatchGetImage", 100.0),
            // ECR allows 10/s; PromoteImage is its only caller.
            ("PutImage", 5.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        rates.extend(self.rates.clone());
        rates
    }
}

/// `[sync]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Interval of the background reconcile (repositories, then each repository's
    /// images) per registry; 0 disables the background loop.
    pub interval_seconds: u64,
    /// How long a replica's lease on a repository holds; another replica may
    /// take over a repository whose lease expired (its holder died).
    pub lease_seconds: u64,
    /// Repositories of one registry reconciled at once by this replica (the
    /// per-registry request budget still bounds the ECR calls).
    pub concurrency: usize,
    /// Scans read from ECR per repository and pass (images never read first,
    /// then unfinished ones); 0 turns scan syncing off.
    pub scans_per_pass: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 300,
            lease_seconds: 120,
            concurrency: 4,
            scans_per_pass: 50,
        }
    }
}

/// `[cleanup]`: the worker that carries out RunCleanup. (What cleanup may
/// delete is org policy: `[policy.cleanup]`.)
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupRunConfig {
    /// Whether this replica carries out runs (any replica may; one holds a run at a time).
    pub worker: bool,
    /// Images per BatchDeleteImage call (1-100, ECR's limit).
    pub batch_size: usize,
    /// How long a worker's hold on a run lasts without renewal; a run whose
    /// worker died is resumed by another (or a restarted) replica after this.
    pub lease_seconds: u64,
    /// How often an idle worker looks for runs (RunCleanup also wakes it).
    pub poll_interval_seconds: u64,
}

impl Default for CleanupRunConfig {
    fn default() -> Self {
        Self {
            worker: true,
            batch_size: 100,
            lease_seconds: 60,
            poll_interval_seconds: 5,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The Ed25519 key that signs the chain's digests: a file holding the
    /// 32-byte seed as hex (`ecr-gateway audit keygen` writes one). Unset:
    /// the chain is kept but no digest is signed.
    pub signing_key_file: Option<std::path::PathBuf>,
    /// How often the chain's head is signed (when it moved).
    pub digest_interval_seconds: u64,
    /// Ship the chain as JSON lines: `-` for standard output, or a file to append to.
    pub jsonl: Option<String>,
    /// Publish the chain to NATS JetStream at this URL, e.g. nats://127.0.0.1:4222.
    pub nats_url: Option<String>,
    /// The subject events are published on.
    pub nats_subject: String,
    /// The JetStream stream that holds the subject (created when missing).
    pub nats_stream: String,
    /// Purge chained events older than this (`400d`, `12h`, `30m`, `45s`)
    /// after archiving them to `archive_dir`. Unset: keep every event.
    pub retention: Option<String>,
    /// Where purged events are archived, one JSON lines file per purge.
    pub archive_dir: Option<std::path::PathBuf>,
    /// How often a replica looks for events to purge.
    pub retention_interval_seconds: u64,
}

impl AuditConfig {
    /// The configured retention, if any (checked by [`Config::check`]).
    pub fn retention_age(&self) -> Option<std::time::Duration> {
        self.retention.as_deref().and_then(|text| parse_age(text).ok())
    }
}

/// Reads an age such as `400d`, `12h`, `30m` or `45s`.
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` is not an age: give a whole number and a unit, s, m, h or d (e.g. 400d)"
            ));
        }
    };
    let number: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not an age: give a whole number and a unit, s, m, h or d (e.g. 400d)")
    })?;
    match number.checked_mul(seconds_per) {
        Some(0) => Err("must be longer than zero; leave it unset to keep every event".into()),
        Some(seconds) if seconds <= 100 * 365 * 86_400 => Ok(std::time::Duration::from_secs(seconds)),
        _ => Err(format!(
            "`{text}` is longer than 100 years; leave it unset to keep every event"
        )),
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            digest_interval_seconds: 60,
            jsonl: None,
            nats_url: None,
            nats_subject: "ecr-gateway.audit".into(),
            nats_stream: "ECR_GATEWAY_AUDIT".into(),
            retention: None,
            archive_dir: None,
            retention_interval_seconds: 3600,
        }
    }
}

/// A configuration that failed to load or check; each line names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `ECR_GATEWAY__*`
    /// variables, and checks the result by the rules of [`Config::check`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.check()?;
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (no environment) and
    /// checks it by the rules of [`Config::check`]; for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config = Config::read_toml(text)?;
        config.check()?;
        Ok(config)
    }

    /// [`Config::load`] without the checks: defaults, the TOML file (if any),
    /// then `ECR_GATEWAY__*` variables. Only a missing file, an unknown key or
    /// a value of the wrong type is an error.
    pub fn read(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::one(format!(
                    "--config {}: no such file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").lowercase(true));
        figment
            .extract()
            .map_err(|e| ConfigError::one(describe_figment_error(e)))
    }

    /// [`Config::from_toml`] without the checks.
    pub fn read_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::one(describe_figment_error(e)))
    }

    /// Every cross-field rule of [`Config::problems`], reported together.
    pub fn check(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Every problem of the settings that needs no file and builds nothing,
    /// each naming its key. (What building the parts finds is added by
    /// `server::parts`.)
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "server.listen: `{}` is not an address like 127.0.0.1:50051",
                self.server.listen
            ));
        }
        if let Some(listen) = &self.admin.listen
            && listen.parse::<SocketAddr>().is_err()
        {
            problems.push(format!(
                "admin.listen: `{listen}` is not an address like 127.0.0.1:9090"
            ));
        }
        if self.admin.gauge_refresh_seconds == 0 {
            problems.push("admin.gauge_refresh_seconds: must be at least 1".into());
        }
        if self.server.request_timeout_seconds == 0 {
            problems.push("server.request_timeout_seconds: must be at least 1".into());
        }
        problems.extend(overload::problems(&self.overload, &self.rate_limits));
        let roles: Vec<(String, Option<String>)> = self
            .registries
            .iter()
            .map(|r| (r.alias.clone(), r.credentials_role_arn.clone()))
            .collect();
        problems.extend(access::problems(&self.access, &roles));
        if self.server.max_message_bytes < 1024 {
            problems.push("server.max_message_bytes: must be at least 1024".into());
        }
        if !self.database.url.starts_with("postgres://") && !self.database.url.starts_with("postgresql://") {
            problems.push("database.url: must start with postgres:// or postgresql://".into());
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be at least 1".into());
        }
        if !(1..=64).contains(&self.sync.concurrency) {
            problems.push(format!(
                "sync.concurrency: {} is out of range; use 1 to 64 repositories at once",
                self.sync.concurrency
            ));
        }
        if !(1..=100).contains(&self.cleanup.batch_size) {
            problems.push(format!(
                "cleanup.batch_size: {} is out of range; BatchDeleteImage takes 1 to 100 images",
                self.cleanup.batch_size
            ));
        }
        if self.cleanup.lease_seconds == 0 || self.cleanup.poll_interval_seconds == 0 {
            problems
                .push("cleanup.lease_seconds and cleanup.poll_interval_seconds: must be at least 1".into());
        }
        if self.audit.nats_url.is_some() && self.audit.nats_subject.trim().is_empty() {
            problems.push("audit.nats_subject: must not be empty".into());
        }
        if self.audit.jsonl.as_deref().is_some_and(|p| p.trim().is_empty()) {
            problems.push("audit.jsonl: give `-` for standard output or a file path".into());
        }
        if let Some(retention) = &self.audit.retention {
            if let Err(problem) = parse_age(retention) {
                problems.push(format!("audit.retention: {problem}"));
            }
            match &self.audit.archive_dir {
                None => problems.push(
                    "audit.archive_dir: required with audit.retention: purged events are archived there first".into(),
                ),
                Some(dir) if !dir.is_dir() => problems.push(format!(
                    "audit.archive_dir: {} is not a directory; create it (the gateway writes one file per purge)",
                    dir.display()
                )),
                Some(_) => {}
            }
        }
        if self.audit.retention_interval_seconds == 0 {
            problems.push("audit.retention_interval_seconds: must be at least 1".into());
        }
        if self.audit.digest_interval_seconds == 0 {
            problems.push("audit.digest_interval_seconds: must be at least 1".into());
        }
        problems.extend(self.telemetry.problems());
        if self.server.tls.is_none() && self.auth.has(AuthMode::Mtls) {
            problems.push(
                "server.tls: required when auth.modes has \"mtls\"; add [server.tls] with cert_file and key_file".into(),
            );
        }
        problems.extend(self.server.grpc_web.problems());
        problems.extend(self.auth.problems(&self.server.listen));
        problems.extend(self.registry_problems());
        problems
    }

    fn registry_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.registries.is_empty() {
            problems.push("registries: at least one [[registries]] entry is required".into());
        }
        let mut aliases = std::collections::BTreeSet::new();
        let mut places = std::collections::BTreeSet::new();
        for (i, registry) in self.registries.iter().enumerate() {
            let key = format!("registries[{i}]");
            if !is_valid_alias(&registry.alias) {
                problems.push(format!(
                    "{key}.alias: `{}` must be 1-63 characters of [a-z0-9-]",
                    registry.alias
                ));
            } else if !aliases.insert(registry.alias.clone()) {
                problems.push(format!("{key}.alias: `{}` is used twice", registry.alias));
            }
            if AccountId::parse(&registry.account_id).is_err() {
                problems.push(format!(
                    "{key}.account_id: `{}` must be a 12-digit AWS account id",
                    registry.account_id
                ));
            }
            if registry.region.is_empty() {
                problems.push(format!("{key}.region: required, e.g. \"eu-west-1\""));
            }
            if !places.insert((registry.account_id.clone(), registry.region.clone())) {
                problems.push(format!(
                    "{key}: account {} in {} is configured twice",
                    registry.account_id, registry.region
                ));
            }
            if let Some(url) = &registry.endpoint_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problems.push(format!(
                    "{key}.endpoint_url: `{url}` must start with http:// or https://"
                ));
            }
            for (action, rate) in &registry.rates {
                if !(rate.is_finite() && *rate > 0.0) {
                    problems.push(format!(
                        "{key}.rates.{action}: must be a positive number of calls per second"
                    ));
                }
            }
            problems.extend(registry.breaker.problems(&format!("{key}.breaker")));
            if let Some(arn) = &registry.role_arn
                && !arn.starts_with("arn:aws")
            {
                problems.push(format!("{key}.role_arn: `{arn}` is not an IAM role ARN"));
            }
        }
        if self.registries.iter().filter(|r| r.default).count() > 1 {
            problems.push("registries: more than one entry says default = true".into());
        }
        problems
    }

    /// The registry used when a request leaves `registry` empty.
    pub fn default_registry(&self) -> Option<&RegistryConfig> {
        self.registries
            .iter()
            .find(|r| r.default)
            .or_else(|| self.registries.first())
    }

    /// Listener timeout as a `Duration`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.server.request_timeout_seconds)
    }

    /// The configuration as TOML with secrets (the database password) redacted.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url_password(&shown.database.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn is_valid_alias(alias: &str) -> bool {
    (1..=63).contains(&alias.len())
        && alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("{key}: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `[authz]`: the authorization policies (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// A `.cedar` file, or a directory whose `.cedar` files are read in name order. Required to serve.
    pub policies: Option<std::path::PathBuf>,
    /// Entity data in Cedar's JSON format: groups, namespaces and who owns them, principals' groups.
    pub entities: Option<std::path::PathBuf>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest configuration that loads (the unit tests of `config::auth` share it).
    pub(crate) const MINIMAL: &str = r#"
        [auth]
        mode = "insecure-dev"
        [[registries]]
        alias = "main"
        account_id = "123456789012"
        region = "us-east-1"
    "#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(config.server.listen, "127.0.0.1:50051");
        assert_eq!(config.default_registry().map(|r| r.alias.as_str()), Some("main"));
        assert_eq!(config.auth.mode, Some(AuthMode::InsecureDev));
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let text = format!("{MINIMAL}\n[server]\nlisten_adress = \"x\"\n");
        let err = Config::from_toml(&text).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("listen_adress"), "{message}");
    }

    #[test]
    fn admin_listener_is_optional_and_a_bad_address_names_admin_listen() {
        assert_eq!(Config::from_toml(MINIMAL).expect("valid").admin.listen, None);
        let text = format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        assert_eq!(
            Config::from_toml(&text)
                .expect("port 0 is allowed")
                .admin
                .listen
                .as_deref(),
            Some("127.0.0.1:0")
        );
        let text = format!("{MINIMAL}\n[admin]\nlisten = \"localhost\"\n");
        let err = Config::from_toml(&text).expect_err("no port");
        assert!(err.to_string().contains("admin.listen"), "{err}");
    }

    #[test]
    fn grpc_web_is_off_by_default_and_its_origins_are_checked_at_load() {
        assert!(!Config::from_toml(MINIMAL).expect("valid").server.grpc_web.enabled);
        let text = format!(
            "{MINIMAL}\n[server.grpc_web]\nenabled = true\nallowed_origins = [\"https://portal.example.com\"]\n"
        );
        let config = Config::from_toml(&text).expect("valid");
        assert_eq!(
            config.server.grpc_web.allowed_origins,
            ["https://portal.example.com"]
        );
        let text = format!(
            "{MINIMAL}\n[server.grpc_web]\nenabled = true\nallowed_origins = [\"*\"]\nallow_credentials = true\n"
        );
        let err = Config::from_toml(&text).expect_err("wildcard with credentials");
        assert!(
            err.to_string().contains("server.grpc_web.allowed_origins[0]"),
            "{err}"
        );
    }

    #[test]
    fn missing_auth_mode_refuses_to_start() {
        let text = MINIMAL.replace("mode = \"insecure-dev\"", "");
        let err = Config::from_toml(&text).expect_err("no auth");
        assert!(err.to_string().contains("auth.mode"), "{err}");
    }

    #[test]
    fn ages_read_each_unit_and_refuse_the_rest() {
        assert_eq!(parse_age("45s"), Ok(std::time::Duration::from_secs(45)));
        assert_eq!(parse_age("30m"), Ok(std::time::Duration::from_secs(1800)));
        assert_eq!(parse_age("12h"), Ok(std::time::Duration::from_secs(43_200)));
        assert_eq!(
            parse_age(" 400d "),
            Ok(std::time::Duration::from_secs(400 * 86_400))
        );
        for bad in [
            "",
            "d",
            "12",
            "1.5d",
            "-1d",
            "12w",
            "0d",
            "99999999999999999999d",
            "40000d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn retention_needs_an_archive_directory() {
        let text = format!("{MINIMAL}\n[audit]\nretention = \"400 days\"\n");
        let err = Config::from_toml(&text).expect_err("bad retention");
        let joined = err.problems.join("\n");
        assert!(joined.contains("audit.retention:"), "{joined}");
        assert!(joined.contains("audit.archive_dir: required"), "{joined}");

        let text =
            format!("{MINIMAL}\n[audit]\nretention = \"400d\"\narchive_dir = \"/nonexistent/archive\"\n");
        let err = Config::from_toml(&text).expect_err("missing directory");
        assert!(err.problems.join("\n").contains("is not a directory"), "{err}");

        let dir = std::env::temp_dir();
        let text = format!(
            "{MINIMAL}\n[audit]\nretention = \"400d\"\narchive_dir = \"{}\"\n",
            dir.display()
        );
        let config = Config::from_toml(&text).expect("valid");
        assert_eq!(
            config.audit.retention_age(),
            Some(std::time::Duration::from_secs(400 * 86_400))
        );
    }

    #[test]
    fn a_registry_breaker_is_read_from_its_table_and_checked_by_key() {
        let good = Config::from_toml(&format!(
            "{MINIMAL}\n[registries.breaker]\nfailure_threshold = 3\nopen_seconds = 10\n"
        ))
        .expect("valid");
        let bad = Config::from_toml(&format!("{MINIMAL}\n[registries.breaker]\nopen_seconds = 0\n"))
            .expect_err("zero cool-down");

        assert_eq!(good.registries[0].breaker.failure_threshold, 3);
        assert_eq!(good.registries[0].breaker.open_seconds, 10);
        assert!(
            bad.problems
                .iter()
                .any(|p| p.starts_with("registries[0].breaker.open_seconds")),
            "{:?}",
            bad.problems
        );
    }

    #[test]
    fn every_registry_problem_is_reported_at_once() {
        let text = r#"
            [auth]
            mode = "insecure-dev"
            [[registries]]
            alias = "Main"
            account_id = "12345"
            region = ""
            endpoint_url = "localhost:5000"
        "#;
        let err = Config::from_toml(text).expect_err("bad registry");
        let joined = err.problems.join("\n");
        for key in ["alias", "account_id", "region", "endpoint_url"] {
            assert!(joined.contains(&format!("registries[0].{key}")), "{joined}");
        }
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_url_password("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url_password("postgres://app@db/x"), "postgres://app@db/x");
    }
}
