//! The only code that talks to Postgres: a pool, embedded migrations applied
//! under sqlx's advisory lock, and one file per table family.

pub mod audit_events;
pub mod image_reads;
pub mod images;
pub mod operations;
pub mod repositories;
pub mod sync;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub use audit_events::insert_final_batch;
pub use operations::{Claim, StoredOperation};
pub use repositories::{CachedRepository, RepositoryFilter, RepositoryKey};

use crate::config::DatabaseConfig;

/// A Postgres transaction.
pub type Tx = Transaction<'static, Postgres>;

/// What went wrong talking to Postgres. Each variant's doc names its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres cannot be reached or did not answer in time. → UNAVAILABLE
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken schema. → INTERNAL
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(error),
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                StoreError::Unavailable(error)
            }
            _ => StoreError::Other(error),
        }
    }
}

/// The handle every part of the gateway uses to reach Postgres.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

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
                    .options([("plan_cache_mode", "force_generic_plan")]),
            );
        Ok(Store { pool })
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    /// The pool, for queries outside a transaction.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; sqlx holds a Postgres advisory lock while it
    /// does, so replicas starting together apply each migration once.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations").run(&self.pool).await
    }

    /// Checks that Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin().await?)
    }
}
