//! The `sync` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use etcd_sync::config::{Config, DriverKind};
use etcd_sync::logging::say;
use etcd_sync_api::Driver;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// glibc's allocator spent a fifth of the agent's CPU in a catch-up (a few allocations per row
/// and per transaction, freed on another thread); mimalloc takes a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("ETCD_SYNC_GIT_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "sync",
    version = VERSION,
    about = "Keeps an etcd prefix equal to a SQL database"
)]
struct Cli {
    /// The YAML config file (required; before or after the command).
    #[arg(long, short = 'c', env = "SYNC_CONFIG_FILE", global = true)]
    config_file: Option<PathBuf>,
    /// Log level (RUST_LOG, when set, wins).
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    /// Log lines as text for people (human) or one JSON object per line for log shippers (json).
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Dump, then follow the change stream until SIGINT/SIGTERM (the default).
    Run,
    /// Check connectivity and every prerequisite; exit 1 when something is wrong.
    Check,
    /// Compare the database with etcd. Exit status: 0 equal; 1 a difference (listed); 3 no
    /// difference found, but some rows changed during every re-check and could not be compared.
    Verify,
    /// Show the stored state, how far behind the source it is, and keys per table.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show, for each selected table, the key columns, the columns kept, the filter and a few
    /// keys and values exactly as they would be written; reads the database only.
    Preview {
        /// Only this table (as `tables.include` names it).
        #[arg(long)]
        table: Option<String>,
        /// Rows shown per table.
        #[arg(long, default_value_t = 5)]
        limit: usize,
    },
}

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},h2=warn,tower=warn,hyper=warn", cli.log_level))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A failed write must not reach eprintln! (which panics on a closed pipe).
        .log_internal_errors(false)
        .with_writer(etcd_sync::logging::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Exit status after a second SIGINT (128 + SIGINT, as shells report it).
const FORCED_EXIT: i32 = 130;

/// Cancels `token` on SIGINT or SIGTERM (the clean stop); a second SIGINT exits at once.
fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Lives as long as the process: it must outlast the engine to see a second SIGINT.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if !token.is_cancelled() {
                        info!("SIGTERM: committing what was applied, then exiting");
                    }
                }
                _ = int.recv() => {
                    if token.is_cancelled() {
                        error!("second SIGINT: exiting now, without waiting for the clean stop");
                        std::process::exit(FORCED_EXIT);
                    }
                    info!("SIGINT: committing what was applied, then exiting (SIGINT again to force)");
                }
            }
            token.cancel();
        }
    });
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Some(config_file) = &cli.config_file else {
        anyhow::bail!("no config file: pass --config-file FILE (or set SYNC_CONFIG_FILE)");
    };
    let config = etcd_sync::load_config(config_file)?;
    let command = cli.command.unwrap_or(Command::Run);
    match config.database.driver {
        // Boxed: the engine's future is large, and the stack need not carry it.
        DriverKind::Postgres => {
            Box::pin(run_command(
                etcd_sync::postgres_driver(&config),
                &config,
                command,
            ))
            .await
        }
        DriverKind::Mysql => {
            Box::pin(run_command(
                etcd_sync::mysql_driver(&config),
                &config,
                command,
            ))
            .await
        }
    }
}

async fn run_command<D: Driver>(
    driver: D,
    config: &Config,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let settings = etcd_sync::engine_settings(config);
    let etcd = etcd_sync::etcd_connection(config);
    match command {
        Command::Run => {
            let cancel = CancellationToken::new();
            cancel_on_signals(cancel.clone())?;
            // Tasks beside the engine (the metrics server), joined before exiting.
            let tasks = tokio_util::task::TaskTracker::new();
            if let Some(listen) = &config.metrics.listen {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
                info!(%listen, "serving /metrics, /healthz and /readyz");
                tasks.spawn(etcd_sync::metrics::serve(
                    listener,
                    std::sync::Arc::clone(&settings.metrics),
                    config.metrics.ready_lag_seconds,
                    cancel.clone(),
                ));
            }
            info!(
                version = VERSION,
                prefix = %settings.prefix,
                state_prefix = %settings.state_prefix,
                "etcd-sync starting"
            );
            let connector = etcd_sync::etcd::EtcdConnector {
                connection: etcd.clone(),
                state_prefix: settings.state_prefix.clone(),
                metrics: std::sync::Arc::clone(&settings.metrics),
            };
            let result = etcd_sync::engine::run(driver, connector, settings, cancel.clone()).await;
            cancel.cancel();
            tasks.close();
            tasks.wait().await;
            result.map_err(|e| anyhow::anyhow!(etcd_sync::error_chain(&e)))?;
            info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let status = etcd_sync::status::status(&driver, &etcd, &settings)
                .await
                .map_err(|e| anyhow::anyhow!(etcd_sync::error_chain(&e)))
                .context("status")?;
            if json {
                say(serde_json::to_string_pretty(&status)?);
            } else {
                say(status.to_string().trim_end());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preview { table, limit } => {
            let previews = etcd_sync::preview::preview(&driver, &settings, table.as_deref(), limit)
                .await
                .map_err(|e| anyhow::anyhow!(etcd_sync::error_chain(&e)))
                .context("preview")?;
            for preview in &previews {
                say(preview.to_string().trim_end());
            }
            driver.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let ok = etcd_sync::check::run(&driver, &etcd, &settings).await;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify => {
            let reports = etcd_sync::verify::verify(driver, &etcd, &settings)
                .await
                .map_err(|e| anyhow::anyhow!(etcd_sync::error_chain(&e)))
                .context("verify")?;
            Ok(match etcd_sync::verify::report(&reports) {
                etcd_sync::verify::Verdict::Equal => ExitCode::SUCCESS,
                etcd_sync::verify::Verdict::Different => ExitCode::FAILURE,
                etcd_sync::verify::Verdict::Unsettled => ExitCode::from(3),
            })
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    // One crypto provider for every TLS connection (etcd, PostgreSQL, MySQL); an Err means one
    // is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Box::pin(run(cli)).await {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
