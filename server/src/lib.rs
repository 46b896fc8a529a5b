//! pulsemap's server as a library: `main.rs` parses the configuration and calls [`start`]; the tests call the
//! same function on a free port and talk to it over real sockets.
//!
//! A ping's path, one direction each, module by module (an order's is `web::orders` | `web::ws::driver` ->
//! `dispatch` -> the store's orders -> `web::ws::order` customers and the drivers' sockets):
//!
//! ```text
//! web::api (POST /api/pings) | web::ws::driver | the send_ping server fn
//!   -> ingest (decode, validate, rate-limit, bounded queue)
//!   -> engine (one task; state::presence, state::heat through the store's state of record)
//!   -> hub (each tick's frames, serialised once per key and tile)
//!   -> web::ws::heat viewers;  engine::tracking -> web::ws::track trackers
//! ```
//!
//! With Redis the store's feed brings every instance's ticks back into the engine, and its tracking bus carries
//! fixes to trackers on other instances (`store`). `demo` feeds the same ingest path with a simulated fleet.
//!
//! Exported, and why: [`start`], [`Running`] and [`Config`] for the binary and the tests; [`state`] (the pure
//! model), [`ingest::decode`] and [`auth`]'s tokens for the benchmarks and property tests; [`now_ms`], the clock
//! they share. Everything else is `pub(crate)`.

pub mod auth;
pub mod config;
pub mod ingest;
pub mod state;

mod clock;
mod demo;
mod dispatch;
mod engine;
mod frame;
mod history;
mod hub;
mod metrics;
mod store;
mod task;
mod web;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use leptos::config::LeptosOptions;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use clock::now_ms;
pub use config::Config;
use engine::EngineTask;
pub use history::fill::{fill as fill_history, FillReport};
use ingest::Ingest;
use metrics::Metrics;
pub use web::AppState;

/// The Leptos options, from the same names the site build uses (the `site` crate).
fn leptos_options(config: &Config, addr: SocketAddr) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name(site::NAME)
        .site_root(config.site_root.to_string_lossy().to_string())
        .site_pkg_dir(site::PKG_DIR)
        .site_addr(addr)
        .build()
}

/// A running server: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    state: AppState,
    serve: JoinHandle<()>,
    engine: EngineTask,
    /// Finishes once the store has written the last ticks (Redis).
    written: Option<JoinHandle<()>>,
    /// The history writer, flushed last.
    history: Option<history::History>,
}

/// What a stopped server did, for its last log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Items the engine applied after the stop began (queued before it, or by requests in flight).
    pub drained: u64,
    pub pings_accepted: u64,
    pub pings_aggregated: u64,
    pub orders_accepted: u64,
    pub orders_aggregated: u64,
}

impl Running {
    /// The name of the store the server runs on (`embedded (in-memory)` or `redis`).
    pub fn store_name(&self) -> &'static str {
        self.state.store_name
    }

    /// Graceful stop: close sockets, finish in-flight requests, then drain the queue into the engine and write
    /// the store's last ticks.
    pub async fn stop(self) -> Stopped {
        self.state.shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(15), self.serve).await.is_err() {
            tracing::warn!("connections did not close within 15 s; stopping anyway");
        }
        let drained = self.engine.drain().await;
        if let Some(written) = self.written {
            if tokio::time::timeout(Duration::from_secs(10), written).await.is_err() {
                tracing::warn!("the last ticks could not be written to the store within 10 s");
            }
        }
        if let Some(history) = self.history {
            history.finish(Duration::from_secs(20)).await;
        }
        let metrics = &self.state.metrics;
        Stopped {
            drained,
            pings_accepted: metrics.pings_accepted.get(),
            pings_aggregated: metrics.pings_aggregated.get(),
            orders_accepted: metrics.orders_accepted.get(),
            orders_aggregated: metrics.orders_aggregated.get(),
        }
    }
}

/// Binds, opens the store, spawns the engine (and the demo fleet if asked), and serves until [`Running::stop`].
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let listener =
        TcpListener::bind(config.addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener.local_addr()?;
    let Assembled { state, engine, written, history } = assemble(config, addr).await?;
    let app = web::router(state.clone());
    let serve = tokio::spawn(web::serve::run(
        listener,
        app,
        state.config.header_timeout(),
        state.connections.clone(),
        state.metrics.clone(),
        state.shutdown.clone(),
    ));
    Ok(Running { addr, state, serve, engine, written, history })
}

/// A server but for its listener.
struct Assembled {
    state: AppState,
    engine: EngineTask,
    written: Option<JoinHandle<()>>,
    history: Option<history::History>,
}

/// Everything but the listener: credentials, the store, history, the engine, the background tasks. The
/// router's tests use it without a socket.
async fn assemble(config: Config, addr: SocketAddr) -> anyhow::Result<Assembled> {
    let (auth, source) = auth::Auth::new(
        config.secret.as_deref(),
        config.fleet_key.as_deref(),
        config.admin_key.as_deref(),
        config.max_share_ttl(),
    )?;
    if source == auth::SecretSource::Generated {
        let redis_note = if config.shared_store() { " Other instances will not accept them." } else { "" };
        tracing::warn!(
            "no PULSEMAP_SECRET: made a random one for this process, so driver tokens and share links end when \
             it stops.{redis_note} Set PULSEMAP_SECRET (32+ bytes, the same on every instance) to keep them."
        );
    }
    if !auth.admin_enabled() {
        tracing::info!("no PULSEMAP_ADMIN_KEY: /metrics and revoking other drivers' links are off");
    }
    let mut metrics = Metrics::new();
    let mut store = store::open(&config, &mut metrics).await?;
    let history = history::open(&config, &mut metrics).await?;
    if history.is_some() && config.shared_store() && config.database_url.is_none() {
        tracing::warn!(
            "history goes to this instance's own SQLite file: with several instances each keeps only its own \
             drivers. Give every instance the same --database-url to keep the whole city's."
        );
    }
    let metrics = Arc::new(metrics);
    let (ingest, queue) = Ingest::new(&config, metrics.clone());
    let ingest = Arc::new(ingest);
    let (store_name, lookups, written) = (store.name, store.lookups.clone(), store.written.take());
    let (orders, mail) = (store.orders.clone(), store.mail.take());
    let shutdown = CancellationToken::new();
    let sink = history.as_ref().map(|h| h.sink.clone());
    let recorder = history::Recorder::new(sink.clone());
    let (engine, engine_task) = engine::spawn(&config, queue, metrics.clone(), store, recorder, shutdown.clone());
    let dispatch = dispatch::Dispatch::spawn(
        dispatch::Policy::new(&config),
        dispatch::Seams { orders, mail, history: sink },
        engine.clone(),
        ingest.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let state = AppState {
        leptos: leptos_options(&config, addr),
        connections: web::serve::Connections::new(config.max_connections_per_ip),
        config: Arc::new(config),
        ingest,
        engine,
        dispatch,
        showcase: demo::Showcase::default(),
        lookups,
        history: history.as_ref().map(|h| h.backend.clone()),
        metrics,
        store_name,
        auth: Arc::new(auth),
        shutdown,
        started: std::time::Instant::now(),
    };
    spawn_housekeeping(&state);
    if state.config.demo {
        let demo = demo::Demo {
            ingest: state.ingest.clone(),
            dispatch: state.dispatch.clone(),
            auth: state.auth.clone(),
            showcase: state.showcase.clone(),
        };
        demo::spawn(&state.config, demo, state.shutdown.clone());
    }
    Ok(Assembled { state, engine: engine_task, written, history })
}

/// Periodic chores: keep the rate limiter's memory bounded, and log a one-line summary for operators.
fn spawn_housekeeping(state: &AppState) {
    let ingest = state.ingest.clone();
    let metrics = state.metrics.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let period = Duration::from_secs(60);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut last_pings = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            ingest.purge_idle_rate_limits();
            let pings = metrics.pings_aggregated.get();
            tracing::info!(
                pings_per_sec = (pings - last_pings) as f64 / period.as_secs_f64(),
                drivers_online = metrics.drivers_online.get(),
                queue_depth = ingest.queue_depth(),
                "engine summary"
            );
            last_pings = pings;
        }
    });
}

#[cfg(test)]
mod tests {
    use protocol::driver::Ping;

    use super::*;

    /// Pings still queued when the stop begins are applied before it returns, and reported as drained. The test
    /// runtime has one thread, so the engine cannot run while the queue is being filled: the queue is full when
    /// the stop begins.
    #[tokio::test]
    async fn stopping_drains_every_queued_ping_into_the_engine() {
        let server = start(Config::for_tests()).await.unwrap();
        let ingest = server.state.ingest.clone();
        let mut accepted = 0;
        for round in 0..20 {
            let pings = (0..500)
                .map(|i| {
                    let driver_id = format!("drain-{round}-{i}");
                    Ok(Ping {
                        driver_id,
                        lat: 6.5,
                        lon: 3.3,
                        ts: now_ms(),
                        accuracy_m: None,
                        heading_deg: None,
                        speed_mps: None,
                    })
                })
                .collect();
            accepted += ingest.submit_pings(&auth::Role::Fleet, pings).unwrap().accepted;
        }
        assert_eq!(accepted, 10_000);
        assert_eq!(ingest.queue_depth(), 10_000, "queued, not applied yet");
        let stopped = server.stop().await;
        assert_eq!(stopped.drained, 10_000, "every queued ping was applied by the drain");
        assert_eq!(stopped.pings_aggregated, 10_000, "every accepted ping reached the engine before the stop returned");
        assert_eq!(ingest.queue_depth(), 0);
    }
}
