//! The only code that talks to Postgres: a pool, embedded migrations applied
//! under sqlx's advisory lock, and one file per table family.

pub mod audit_events;
pub mod audit_trail;
pub mod cache;
pub mod changes;
pub mod cleanup_runs;
pub mod compliance;
pub mod gauges;
pub mod image_reads;
pub mod images;
pub mod operations;
pub mod pins;
pub mod remediation_runs;
pub mod repositories;
pub mod scans;
pub mod secrets;
pub mod sync;
pub mod visibility;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub use crate::config::{CACHE_ENTRIES, CACHE_TTL};
pub use audit_events::insert_final_batch;
pub use operations::{Claim, StoredOperation};
pub use repositories::{CachedRepository, RepositoryFilter, RepositoryKey};
pub use visibility::{Visibility, VisibleRegistry};

use crate::config::DatabaseConfig;
use crate::domain::RegistryRef;
use cache::{Invalidations, ReadCache, RepoKey};
use image_reads::Resolution;

/// Repository changes a slow subscriber may fall behind by before it lags.
const CHANGES_BUFFER: usize = 4096;

/// The migrations embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A Postgres transaction.
pub type Tx = Transaction<'static, Postgres>;

/// What went wrong talking to Postgres. Each variant's doc names its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres cannot be reached, refuses the gateway's connections or did
    /// not answer in time ([`is_unavailable`]). → UNAVAILABLE
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken schema. → INTERNAL
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Other(error)
        }
    }
}

/// Whether `error` means that Postgres cannot serve the gateway now — an
/// outage or an operator's doing that retrying later can outlast — rather
/// than a fault of the statement. The one place that decides it: every
/// query, transaction and readiness probe gets its answer through
/// `From<sqlx::Error> for StoreError`.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        // `PoolTimedOut`: no connection within `acquire_timeout_seconds`, also
        // what sqlx answers after retrying 53300 and 57P03 while it connects.
        // `Protocol`: e.g. a connection closed during its handshake, as when
        // Postgres restarts or a proxy in front of it goes away.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| sqlstate_is_unavailable(&code)),
        _ => false,
    }
}

/// The SQLSTATEs of [`is_unavailable`]. Postgres answers most of them when
/// the pool opens a connection, so they reach whichever call needed one.
fn sqlstate_is_unavailable(code: &str) -> bool {
    // 08: connection exception. 57P: operator intervention (admin or crash
    // shutdown, 57P03 cannot connect now, database dropped, idle timeout).
    // 53: insufficient resources (53300 too many connections, disk full, out
    // of memory). 28: invalid authorization (28000: the role may not log in
    // or has no pg_hba entry; 28P01: password rejected, as after a rotation).
    const CLASSES: [&str; 4] = ["08", "57P", "53", "28"];
    // 3D000: the database does not exist (dropped, renamed). 55000: object
    // not in prerequisite state, which a connection gets when its database
    // does not accept connections (`ALTER DATABASE … ALLOW_CONNECTIONS false`).
    const CODES: [&str; 2] = ["3D000", "55000"];
    CLASSES.iter().any(|class| code.starts_with(class)) || CODES.contains(&code)
}

impl StoreError {
    /// Postgres refused the values themselves (SQLSTATE classes 22 and 23:
    /// a character it cannot store, a value out of range, a broken
    /// constraint): sending the same values again cannot succeed.
    pub fn is_data_error(&self) -> bool {
        matches!(self, StoreError::Other(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
    }
}

/// The handle every part of the gateway uses to reach Postgres, with the
/// in-process read cache in front of the hottest reads.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    invalidations: Arc<Invalidations>,
    /// ResolveImage answers by repository and `:tag` / `@digest`; `None` is "not found".
    resolutions: Arc<ReadCache<String, Option<Resolution>>>,
    /// CheckDeployment facts by repository and `:tag` / `@digest`; `None` is "not found".
    deploy_facts: Arc<ReadCache<String, Option<scans::DeployFacts>>>,
    /// Repositories' tags (for authorization), by repository; empty when not in the inventory.
    repository_tags: Arc<ReadCache<String, Tags>>,
    /// The audit chain's head as last notified (streams wait on it).
    audit_head: Arc<tokio::sync::watch::Sender<i64>>,
    /// Each notified change of a repository's rows (`None`: any may have changed).
    changes: Arc<tokio::sync::broadcast::Sender<Option<RepoKey>>>,
    /// Woken when the change log may have grown (see [`Store::change_log_wake`]).
    change_log: Arc<tokio::sync::Notify>,
}

/// A repository's tags.
pub type Tags = std::collections::BTreeMap<String, String>;

impl Store {
    /// Creates the pool without connecting; connections are made on first use.
    pub fn connect_lazy(config: &DatabaseConfig) -> Result<Store, StoreError> {
        let options: PgConnectOptions = config.url.parse().map_err(StoreError::Other)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(config.acquire_timeout_seconds.max(1)))
            .connect_lazy_with(
                options
                    .application_name("ecr-gateway")
                    // Every query is a parameterised key or keyset lookup whose generic
                    // plan is the right one; planning each execution afresh (custom
                    // plans) cost the ResolveImage fast path more than running it.
                    // JIT compilation pays off only for long analytic queries; it
                    // added tens of milliseconds to PreviewCleanup's 100,000-row read.
                    .options([("plan_cache_mode", "force_generic_plan"), ("jit", "off")]),
            );
        Ok(Store::with_cache(
            pool,
            Duration::from_secs(config.cache_ttl_seconds),
            config.cache_max_entries,
        ))
    }

    /// Wraps an existing pool (tests, benchmarks), with the default cache.
    /// Nothing is cached until [`Store::listen_for_changes`] runs.
    pub fn from_pool(pool: PgPool) -> Store {
        Store::with_cache(pool, CACHE_TTL, CACHE_ENTRIES)
    }

    fn with_cache(pool: PgPool, ttl: Duration, max_entries: usize) -> Store {
        let invalidations = Arc::new(Invalidations::default());
        Store {
            pool,
            resolutions: Arc::new(ReadCache::new(invalidations.clone(), ttl, max_entries)),
            deploy_facts: Arc::new(ReadCache::new(invalidations.clone(), ttl, max_entries)),
            repository_tags: Arc::new(ReadCache::new(invalidations.clone(), ttl, max_entries)),
            invalidations,
            audit_head: Arc::new(tokio::sync::watch::Sender::new(0)),
            changes: Arc::new(tokio::sync::broadcast::Sender::new(CHANGES_BUFFER)),
            change_log: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The cache of ResolveImage answers.
    pub fn resolutions(&self) -> &ReadCache<String, Option<Resolution>> {
        &self.resolutions
    }

    /// The cache of CheckDeployment facts.
    pub fn deploy_facts(&self) -> &ReadCache<String, Option<scans::DeployFacts>> {
        &self.deploy_facts
    }

    /// A repository's tags as the inventory knows them (none when it is not
    /// there), through the read cache: authorization asks on every call.
    pub async fn repository_tags(
        &self,
        registry: &RegistryRef,
        repository: &str,
    ) -> Result<Tags, StoreError> {
        let key = RepoKey::new(registry, repository);
        if let Some(hit) = self.repository_tags.get(&key, "") {
            return Ok(hit);
        }
        let ticket = self.invalidations.ticket();
        let tags: Option<serde_json::Value> = sqlx::query_scalar!(
            "SELECT tags FROM repositories WHERE account_id = $1 AND region = $2 AND name = $3",
            registry.account_id,
            registry.region,
            repository,
        )
        .fetch_optional(&self.pool)
        .await?;
        let tags: Tags = tags
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default();
        self.repository_tags
            .insert(ticket, key, String::new(), tags.clone());
        Ok(tags)
    }

    /// The cache's invalidation state (for tickets).
    pub fn invalidations(&self) -> &Invalidations {
        &self.invalidations
    }

    /// Drops what this process cached for a repository; called right after a
    /// commit that changed it, so the writer reads its own writes without
    /// waiting for its notification.
    pub fn invalidate(&self, registry: &RegistryRef, repository: &str) {
        self.invalidations.invalidate(RepoKey::new(registry, repository));
    }

    /// Drops everything this process cached.
    pub fn invalidate_all(&self) {
        self.invalidations.flush();
    }

    /// Follows the inventory's change notifications until `shutdown` flips,
    /// reconnecting after a second when the connection is lost. The cache is
    /// in use only while this runs and is connected.
    pub async fn listen_for_changes(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.change_listener().await {
                Ok(mut listener) => {
                    self.invalidations.set_live(true);
                    // What changed while nobody listened is not known.
                    let _ = self.changes.send(None);
                    self.change_log.notify_one();
                    tracing::debug!("read cache: listening for inventory changes");
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => {
                                self.invalidations.set_live(false);
                                return;
                            }
                            notification = listener.try_recv() => match notification {
                                Ok(Some(n)) if n.channel() == audit_trail::CHANNEL => {
                                    if let Ok(seq) = n.payload().parse() {
                                        self.audit_head.send_replace(seq);
                                    }
                                }
                                Ok(Some(n)) if [changes::PENDING_CHANNEL, changes::HEAD_CHANNEL].contains(&n.channel()) => {
                                    self.change_log.notify_one();
                                }
                                Ok(Some(n)) => {
                                    let key = RepoKey::from_payload(n.payload());
                                    match &key {
                                        Some(key) => self.invalidations.invalidate(key.clone()),
                                        None => self.invalidations.flush(),
                                    }
                                    let _ = self.changes.send(key);
                                }
                                Ok(None) | Err(_) => {
                                    tracing::warn!("read cache: change notifications lost; caching paused until they resume");
                                    self.invalidations.set_live(false);
                                    break;
                                }
                            },
                        }
                    }
                }
                Err(error) => {
                    self.invalidations.set_live(false);
                    tracing::debug!("read cache: cannot listen for inventory changes yet: {error}");
                }
            }
            if !crate::tasks::pause(Duration::from_secs(1), &mut shutdown).await {
                return;
            }
        }
    }

    async fn change_listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([
                cache::CHANNEL,
                audit_trail::CHANNEL,
                changes::PENDING_CHANNEL,
                changes::HEAD_CHANNEL,
            ])
            .await?;
        Ok(listener)
    }

    /// The repositories whose cached rows change (any replica's writes, as
    /// Postgres notifies them while [`Store::listen_for_changes`] runs);
    /// `None` when any may have changed (a lost or resumed notification
    /// stream, a truncate). A receiver that lags gets `Lagged`: treat it as `None`.
    pub fn repository_changes(&self) -> tokio::sync::broadcast::Receiver<Option<RepoKey>> {
        self.changes.subscribe()
    }

    /// Woken (one permit) when changes were committed or sequenced by any
    /// replica, or the listener (re)connected, while [`Store::listen_for_changes`]
    /// runs: the change feed then sequences and reads what is new.
    pub fn change_log_wake(&self) -> Arc<tokio::sync::Notify> {
        self.change_log.clone()
    }

    /// The audit chain's head sequence, changed whenever another link is
    /// committed (by any replica) while [`Store::listen_for_changes`] runs.
    pub fn audit_head(&self) -> tokio::sync::watch::Receiver<i64> {
        self.audit_head.subscribe()
    }

    /// The pool, for queries outside a transaction.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pool of `max_connections` of its own to the same database, with the
    /// store's connection options and acquire timeout, for a task that runs
    /// on a runtime of its own (the audit writer): [`OwnPool::connect_lazy`]
    /// makes it on that runtime, to which its connections then belong.
    pub fn own_pool(&self, max_connections: u32) -> OwnPool {
        OwnPool {
            options: PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(self.pool.options().get_acquire_timeout()),
            connect: self.pool.connect_options(),
        }
    }

    /// Applies pending migrations; sqlx holds a Postgres advisory lock while it
    /// does, so replicas starting together apply each migration once.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// The versions of the embedded migrations that the database has not
    /// applied successfully (all of them when it has none).
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        // A runtime query: `_sqlx_migrations` is sqlx's own table, which the
        // database the macros are checked against (scripts/sqlx-prepare) lacks.
        let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
        {
            Ok(applied) => applied,
            // undefined_table: nothing was ever migrated.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        Ok(MIGRATOR
            .iter()
            .filter(|migration| !migration.migration_type.is_down_migration())
            .map(|migration| migration.version)
            .filter(|version| !applied.contains(version))
            .collect())
    }

    /// Checks that Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query_scalar!("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction. Code that runs one instruments it with
    /// [`transaction_span`], so traces show each transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// A pool to be made on another runtime: see [`Store::own_pool`].
#[derive(Debug)]
pub struct OwnPool {
    options: PgPoolOptions,
    connect: Arc<PgConnectOptions>,
}

impl OwnPool {
    /// The pool, without connecting: connections are made on first use, on
    /// the runtime this is called on.
    pub fn connect_lazy(self) -> PgPool {
        self.options.connect_lazy_with((*self.connect).clone())
    }
}

/// The span of one database transaction, for traces: `db.system =
/// postgresql` and `db.operation.name`, named after the operation.
pub fn transaction_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.transaction",
        otel.name = %format_args!("postgresql {operation}"),
        otel.kind = "client",
        db.system = "postgresql",
        db.operation.name = operation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_refused_connections_are_unavailable_and_statement_faults_are_not() {
        let unavailable = [
            ("08006", "connection failure"),
            ("08001", "cannot establish connection"),
            ("57P01", "admin shutdown (pg_terminate_backend)"),
            ("57P02", "crash shutdown"),
            ("57P03", "cannot connect now (starting up, recovering)"),
            ("57P04", "database dropped"),
            ("53300", "too many connections"),
            ("53100", "disk full"),
            ("53200", "out of memory"),
            ("28000", "role may not log in"),
            ("28P01", "password authentication failed"),
            ("3D000", "database does not exist"),
            ("55000", "database does not accept connections"),
        ];
        let statement_faults = [
            ("42P01", "undefined table"),
            ("42501", "insufficient privilege"),
            ("23505", "unique violation"),
            ("22P02", "invalid text representation"),
            ("40001", "serialization failure"),
            ("55P03", "lock not available"),
            ("3F000", "schema does not exist"),
            ("XX000", "internal error"),
        ];

        for (code, what) in unavailable {
            assert!(sqlstate_is_unavailable(code), "{code} ({what}) is an outage");
        }
        for (code, what) in statement_faults {
            assert!(!sqlstate_is_unavailable(code), "{code} ({what}) is not an outage");
        }
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    }
}
