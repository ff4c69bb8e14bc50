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

mod sections;
pub use sections::*;

mod access;
mod auth;
mod breaker;
mod events;
mod grpc_web;
mod overload;
mod policy;
mod telemetry;

pub use access::{AccessConfig, MAX_CREDENTIAL_SECONDS, MIN_CREDENTIAL_SECONDS};
pub use auth::{AuthConfig, AuthMode, MtlsConfig, OIDC_ALGORITHMS, OidcConfig, is_loopback_host};
pub use breaker::BreakerConfig;
pub use events::{EventsConfig, WatchConfig};
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
    /// The file it was read from (`--config`), for a reload on SIGHUP; not a setting.
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
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
    /// The change log that WatchImages streams.
    pub watch: WatchConfig,
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
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::one(describe_figment_error(e)))?;
        config.source = path.map(Path::to_path_buf);
        Ok(config)
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
        problems.extend(self.watch.problems());
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
            if let Some(events) = &registry.events {
                problems.extend(events.problems(&format!("{key}.events")));
            }
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
