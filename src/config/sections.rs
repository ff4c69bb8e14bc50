//! The plain sections of the configuration: `[admin]`, `[server]` (and its TLS), `[database]`, `[[registries]]`, `[sync]`, `[cleanup]`, `[audit]` and `[authz]`, with their defaults.

use super::*;

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
    /// `[registries.events]`: the SQS queue of ECR's EventBridge events; set,
    /// the inventory follows them and the reconcile becomes a backstop.
    pub events: Option<super::EventsConfig>,
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
    /// Interval of the reconcile of a registry whose events the gateway
    /// follows (`[registries.events]`): the backstop; 0 disables it.
    pub backstop_interval_seconds: u64,
    /// With events, a repository's images are read by the backstop when it
    /// is dirty (an event failed or said too little, the listing saw it
    /// change) and otherwise at least once in this many days, a share each pass.
    pub full_resync_days: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 300,
            lease_seconds: 120,
            concurrency: 4,
            scans_per_pass: 50,
            backstop_interval_seconds: 86_400,
            full_resync_days: 7,
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

/// `[authz]`: the authorization policies (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// A `.cedar` file, or a directory whose `.cedar` files are read in name order. Required to serve.
    pub policies: Option<std::path::PathBuf>,
    /// Entity data in Cedar's JSON format: groups, namespaces and who owns them, principals' groups.
    pub entities: Option<std::path::PathBuf>,
}
