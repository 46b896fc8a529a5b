//! The `pulsemap` binary: configuration, logging, serve, stop on SIGTERM or Ctrl-C.

use clap::Parser;
use pulsemap::{config::LogFormat, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init()
        }
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    tracing::info!(config = ?config.redacted(), "configuration");
    let running = pulsemap::start(config).await?;
    // The line supervisors read the address from (`protocol::ops::listening_addr`).
    tracing::info!(addr = %running.addr, store = running.store_name(), "{}", protocol::ops::listening_line(running.addr));
    shutdown_signal().await;
    tracing::info!("shutting down: closing sockets, draining the ingest queue");
    let stopped = running.stop().await;
    tracing::info!(
        drained = stopped.drained,
        pings_accepted = stopped.pings_accepted,
        pings_aggregated = stopped.pings_aggregated,
        orders_accepted = stopped.orders_accepted,
        orders_aggregated = stopped.orders_aggregated,
        "stopped"
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
