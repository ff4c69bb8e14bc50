//! The `ecr-gateway` command: reads configuration, starts logging, and runs
//! the server or one of the operator commands.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
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
    let result = runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig => {
                println!("{}", config.redacted_toml());
                Ok(())
            }
            Command::Migrate => {
                let store = ecr_gateway::store::Store::connect_lazy(&config.database)?;
                store.migrate().await?;
                println!("migrations applied");
                Ok(())
            }
            Command::Serve => {
                let shutdown = shutdown_signal()?;
                let listener = TcpListener::bind(&config.server.listen).await?;
                ecr_gateway::server::run(config, listener, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ecr-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn")
    });
    let json = std::env::var("ECR_GATEWAY_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
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
