//! The `ecr-gateway` command: reads configuration, starts logging (and, for
//! `serve` with `telemetry.enabled`, the OTLP exporters), and runs the server
//! or one of the operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ecr_gateway::config::Config;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "ecr-gateway",
    version,
    about = "A gRPC gateway in front of Amazon ECR"
)]
struct Cli {
    /// TOML configuration file; ECR_GATEWAY__SECTION__KEY variables override it.
    #[arg(long, global = true, env = "ECR_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC until SIGTERM or SIGINT.
    Serve,
    /// Print the effective configuration (secrets redacted); exit non-zero on any problem.
    CheckConfig,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Export or verify the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write the chained events of a time range as JSON lines (CloudTrail field names, with each event's chain link).
    Export {
        /// From this time (RFC 3339), inclusive.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// To this time (RFC 3339), exclusive; default: now.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Archive and purge the events older than audit.retention now (a running gateway does this every audit.retention_interval_seconds).
    Purge {
        /// Purge events chained longer ago than this instead (e.g. 400d, 12h); audit.archive_dir is still required.
        #[arg(long)]
        older_than: Option<String>,
    },
    /// Check exports' hash chain offline; exits 1 naming the first event that was modified, removed, inserted or reordered.
    Verify {
        /// Exports or retention archives (JSON lines); several are checked as one chain, in the order given.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check the signed digests with this Ed25519 public key (64 hex characters, or a file holding them).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Write a new Ed25519 signing key for the audit digests (audit.signing_key_file) and print its public key.
    Keygen {
        /// Where to write the private key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Audit(AuditCommand::Verify { files, public_key }) => {
            ecr_gateway::telemetry::init_logs_only();
            return verify_export(files, public_key.as_deref());
        }
        Command::Audit(AuditCommand::Keygen { out }) => {
            ecr_gateway::telemetry::init_logs_only();
            return keygen(out);
        }
        _ => {}
    }
    // The configuration and what it is turned into, every problem of both at once.
    let (config, parts) = match ecr_gateway::server::parts::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Only `serve` exports telemetry; the other commands log in the configured format.
    let mut telemetry_config = config.telemetry.clone();
    telemetry_config.enabled &= matches!(cli.command, Command::Serve);
    let telemetry = {
        // The exporters' gRPC channel is created on the runtime.
        let _runtime = runtime.enter();
        match ecr_gateway::telemetry::init(&telemetry_config) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("ecr-gateway: {error:#}");
                return ExitCode::from(2);
            }
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig => {
                println!("{}", config.redacted_toml());
                check_authorization(&config)
            }
            Command::Migrate => {
                let store = ecr_gateway::store::Store::connect_lazy(&config.database)?;
                store.migrate().await?;
                println!("migrations applied");
                Ok(())
            }
            Command::Audit(AuditCommand::Export { from, to, output }) => {
                export(
                    &config,
                    from,
                    to.unwrap_or_else(chrono::Utc::now),
                    output.as_deref(),
                )
                .await
            }
            Command::Audit(AuditCommand::Purge { older_than }) => {
                purge(&config, parts.signing_key, older_than.as_deref()).await
            }
            Command::Audit(AuditCommand::Verify { .. } | AuditCommand::Keygen { .. }) => Ok(()),
            Command::Serve => {
                let shutdown = shutdown_signal()?;
                let listener = TcpListener::bind(&config.server.listen).await?;
                ecr_gateway::server::run(config, parts, listener, shutdown).await
            }
        }
    });
    // After the server drained, with the runtime still running the export.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ecr-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the chained events of `[from, to)` as JSON lines.
async fn export(
    config: &Config,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let store = ecr_gateway::store::Store::connect_lazy(&config.database)?;
    let rows = ecr_gateway::store::audit_trail::chained_between(store.pool(), from, to).await?;
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (first, last) = (
        rows.first().and_then(|r| r.seq).unwrap_or(0),
        rows.last().and_then(|r| r.seq).unwrap_or(0),
    );
    let digests = ecr_gateway::store::audit_trail::digests_between(store.pool(), first, last).await?;
    ecr_gateway::audit::chain::write_export(&mut out, &rows, &digests)?;
    out.flush()?;
    eprintln!(
        "exported {} events and {} signed digests",
        rows.len(),
        digests.len()
    );
    Ok(())
}

/// Archives and purges what has expired, step by step.
async fn purge(
    config: &Config,
    key: Option<ed25519_dalek::SigningKey>,
    older_than: Option<&str>,
) -> anyhow::Result<()> {
    use ecr_gateway::audit::retention;
    let mut audit = config.audit.clone();
    if let Some(age) = older_than {
        ecr_gateway::config::parse_age(age).map_err(|problem| anyhow::anyhow!("--older-than: {problem}"))?;
        audit.retention = Some(age.to_owned());
    }
    let Some(retention) = retention::Retention::configured(&audit, key) else {
        anyhow::bail!(
            "nothing to purge by: set audit.retention (or give --older-than) and audit.archive_dir in the configuration"
        );
    };
    let store = ecr_gateway::store::Store::connect_lazy(&config.database)?;
    let done = retention::purge_all(&store, &retention, chrono::Utc::now()).await?;
    for step in &done {
        println!(
            "purged sequences {}..={} ({} events), archived to {}",
            step.from,
            step.through,
            step.events,
            step.archive.display()
        );
    }
    if done.is_empty() {
        println!(
            "nothing to purge: no chained event is older than the retention and delivered to every sink"
        );
    }
    Ok(())
}

/// Writes a new signing key and prints its public key.
fn keygen(out: &std::path::Path) -> ExitCode {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = ecr_gateway::audit::digest::generate();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| writeln!(f, "{}", hex::encode(key.to_bytes())));
    match written {
        Ok(()) => {
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
            eprintln!(
                "wrote the private key to {}; the line above is the public key (for audit verify --public-key)",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot write {}: {error}", out.display());
            ExitCode::from(2)
        }
    }
}

/// Checks an export's chain (and its signed digests with `public_key`); 0
/// when every event fits, 1 naming the first problem, 2 when unreadable.
fn verify_export(files: &[PathBuf], public_key: Option<&str>) -> ExitCode {
    use ecr_gateway::audit::chain::{Link, Problem, check_digests, settle_contest, verify};
    use ecr_gateway::audit::digest;
    use std::io::BufRead as _;
    let trusted = match public_key.map(digest::parse_public_key).transpose() {
        Ok(key) => key,
        Err(problem) => {
            eprintln!("--public-key: {problem}");
            return ExitCode::from(2);
        }
    };
    let mut digests = Vec::new();
    let mut links = Vec::new();
    for file in files {
        let reader = match std::fs::File::open(file) {
            Ok(f) => std::io::BufReader::new(f),
            Err(error) => {
                eprintln!("cannot read {}: {error}", file.display());
                return ExitCode::from(2);
            }
        };
        for (number, line) in reader.lines().enumerate() {
            let parsed = line
                .map_err(|e| e.to_string())
                .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).map_err(|e| e.to_string()));
            match parsed {
                Ok(value) => match digest::from_export(&value) {
                    Some(Ok(signed)) => digests.push(signed),
                    Some(Err(problem)) => {
                        eprintln!("{}:{}: {problem}", file.display(), number + 1);
                        return ExitCode::from(2);
                    }
                    None => links.push(Link::from_export(value)),
                },
                Err(error) => {
                    eprintln!("{}:{}: not a JSON event: {error}", file.display(), number + 1);
                    return ExitCode::from(2);
                }
            }
        }
    }
    let mut verification = verify(&links, None);
    if let Some(trusted) = &trusted {
        // Two events claiming one place: a signed digest of it tells which is genuine.
        verification = settle_contest(verification, &links, &digests, trusted);
    }
    match verification.first_bad {
        None => {
            println!(
                "ok: {} events, chain intact; last hash {}",
                verification.checked,
                hex::encode(&verification.last_hash)
            );
            let Some(trusted) = trusted else {
                println!("signatures not checked (give --public-key to check the signed digests)");
                return ExitCode::SUCCESS;
            };
            let signed = check_digests(&links, &digests, &trusted);
            match signed.problem {
                None => {
                    println!(
                        "ok: {} signed digests match; {} newest events are not covered by a digest yet",
                        signed.matched, signed.unsigned_tail
                    );
                    ExitCode::SUCCESS
                }
                Some(problem) => {
                    println!("broken (signature): {problem}");
                    ExitCode::FAILURE
                }
            }
        }
        Some((sequence, event_id, Problem::Contested)) => {
            let (rival, rival_line) = verification.rival.unwrap_or_default();
            println!(
                "broken (contested): events {event_id} (line {}) and {rival} (line {rival_line}) both claim sequence \
                 {sequence} after the same previous hash, and no later event or signed digest shows which is \
                 genuine: one of them was inserted",
                rival_line.saturating_sub(1),
            );
            ExitCode::FAILURE
        }
        Some((sequence, event_id, problem)) => {
            println!(
                "broken ({}): event {event_id} (sequence {sequence}, line {}) {}",
                problem.as_str(),
                verification.checked,
                problem.describe()
            );
            ExitCode::FAILURE
        }
    }
}

/// Registers the SIGTERM/SIGINT handlers now (so a signal that arrives during
/// start-up is not fatal) and returns a future that completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Loads `[authz]` the way `serve` does, so a policy change can be checked
/// before it is deployed or signalled (SIGHUP) into a running gateway.
fn check_authorization(config: &Config) -> anyhow::Result<()> {
    let authorizer = ecr_gateway::auth::authz::Authorizer::for_config(config)
        .map_err(|problems| anyhow::anyhow!("authorization:\n  {}", problems.join("\n  ")))?;
    let summary = authorizer.summary();
    eprintln!(
        "authorization: {} policies and {} entities valid against the schema",
        summary.policies, summary.entities
    );
    Ok(())
}
