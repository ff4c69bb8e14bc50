//! Benchmarks of the inventory (see docs/benchmarks.md for results and commands).
//!
//! - `seed`: fills a database with N images over M repositories through the
//!   real ingest path (deterministic names, tags and digests, push times
//!   spread over two years), so the load commands can build valid requests
//!   without reading the database.
//! - `ingest`: feeds recorded-shape `DescribeImages` pages (SDK `ImageDetail`s)
//!   through the sync's ingest path and reports images per second.
//! - `load`: drives one RPC of a running gateway from C concurrent workers,
//!   closed loop or paced to a target rate, and reports the rate, latency
//!   percentiles, gRPC status codes, the server's RSS and the CPU time the
//!   server and Postgres spent per call.
//!
//! The parts: `seed.rs`, the seeded inventory (`seed`, `seed-preview`,
//! `ingest`); `audit_seed.rs`, the seeded audit trail (`seed-audit`);
//! `load.rs`, the `load` run and its report; `rpc.rs`, the calls it makes;
//! `procfs.rs`, the CPU time and RSS read from /proc.

mod audit_seed;
mod compliance;
mod load;
mod procfs;
mod rpc;
mod seed;

use clap::{Parser, Subcommand};

use load::LoadArgs;

#[derive(Parser)]
#[command(about = "ecr-gateway benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seed a database (migrated first) with images.
    Seed {
        /// Postgres URL of the database to fill.
        #[arg(long)]
        database_url: String,
        /// Repositories.
        #[arg(long, default_value_t = 1000)]
        repositories: usize,
        /// Images per repository.
        #[arg(long, default_value_t = 1000)]
        images_per_repository: usize,
    },
    /// Add one big repository (`payments/svc-5000`, cached with a lifecycle
    /// policy) for the PreviewCleanup benchmark.
    SeedPreview {
        /// Postgres URL of the seeded database.
        #[arg(long)]
        database_url: String,
        /// Images in the repository.
        #[arg(long, default_value_t = 100_000)]
        images: usize,
    },
    /// Seed a database (migrated first) with audit events straight in SQL,
    /// spread over 30 days, 1,000 principals, 20 event names and 1,000
    /// repositories in 50 namespaces (the LookupAuditEvents benchmark).
    SeedAudit {
        /// Postgres URL of the database to fill.
        #[arg(long)]
        database_url: String,
        /// Events.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
    },
    /// Seed a database (migrated first) with cached repositories, half of
    /// them breaking one org rule each, and time the compliance evaluation
    /// (first, unchanged, 1 % changed) under the policy of a gateway config.
    SeedCompliance {
        /// Postgres URL of the database to fill.
        #[arg(long)]
        database_url: String,
        /// The gateway configuration whose `[policy]` judges them.
        #[arg(long)]
        config: String,
        /// Repositories.
        #[arg(long, default_value_t = 100_000)]
        repositories: usize,
    },
    /// Measure ingest throughput of DescribeImages pages into Postgres.
    Ingest {
        /// Postgres URL of a scratch database.
        #[arg(long)]
        database_url: String,
        /// Repositories to ingest.
        #[arg(long, default_value_t = 100)]
        repositories: usize,
        /// Images per repository.
        #[arg(long, default_value_t = 1000)]
        images_per_repository: usize,
        /// Repositories ingested at once (the sync's `sync.concurrency`).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Drive one RPC of a running gateway.
    Load(LoadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Seed {
            database_url,
            repositories,
            images_per_repository,
        } => seed::seed(&database_url, repositories, images_per_repository).await,
        Command::SeedPreview { database_url, images } => seed::seed_preview(&database_url, images).await,
        Command::SeedAudit { database_url, events } => audit_seed::seed_audit(&database_url, events).await,
        Command::SeedCompliance {
            database_url,
            config,
            repositories,
        } => compliance::seed_compliance(&database_url, &config, repositories).await,
        Command::Ingest {
            database_url,
            repositories,
            images_per_repository,
            concurrency,
        } => seed::ingest(&database_url, repositories, images_per_repository, concurrency).await,
        Command::Load(args) => load::load(args).await,
    }
}
