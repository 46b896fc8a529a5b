//! pulsemap's server as a library: `main.rs` parses the configuration and calls [`start`]; the tests call the
//! same function on a free port and talk to it over real sockets.
//!
//! Data flows one way: `http`/`ws` -> `ingest` (validate, rate-limit, bounded queue) -> `engine` (presence,
//! heat windows, trackers; through `store`) -> `hub` (frames per tick) -> sockets.

pub mod auth;
pub mod cell;
pub mod config;
pub mod decode;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod heat;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod load;
pub mod metrics;
pub mod presence;
pub mod serve;
pub mod store;
pub mod viewport;
pub mod window;
pub mod ws;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::extract::FromRef;
use leptos::config::LeptosOptions;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use engine::{EngineHandle, EngineTask};
use ingest::Ingest;
use metrics::Metrics;

/// The server clock, unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub leptos: LeptosOptions,
    pub config: Arc<Config>,
    pub ingest: Arc<Ingest>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub store_name: &'static str,
    /// The shared store, when this instance runs on Redis.
    pub redis: Option<store::redis::RedisHandle>,
    /// Tokens, keys and revoked share links.
    pub auth: Arc<auth::Auth>,
    /// Open connections per client address (the accept loop's and the WebSockets').
    pub connections: serve::Connections,
    /// Cancelled when the server begins to shut down: sockets close, the demo fleet stops.
    pub shutdown: CancellationToken,
    pub started: std::time::Instant,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos.clone()
    }
}

/// The Leptos options, from the same names the site build uses (the root Cargo.toml's leptos metadata).
pub fn leptos_options(config: &Config, addr: SocketAddr) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name(env!("PULSEMAP_SITE_NAME"))
        .site_root(config.site_root.to_string_lossy().to_string())
        .site_pkg_dir(env!("PULSEMAP_SITE_PKG_DIR_DEFAULT"))
        .site_addr(addr)
        .build()
}

/// A running server: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    serve: JoinHandle<()>,
    engine: EngineTask,
    /// Finishes once the last tick is written to Redis.
    redis_writer: Option<JoinHandle<()>>,
}

impl Running {
    /// Graceful stop: close sockets, finish in-flight requests, then drain the queue into the engine.
    /// Returns how many items the engine applied after the stop began (queued before it, or by requests in
    /// flight).
    pub async fn stop(self) -> u64 {
        self.state.shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(15), self.serve).await.is_err() {
            tracing::warn!("connections did not close within 15 s; stopping anyway");
        }
        let drained = self.engine.drain().await;
        if let Some(writer) = self.redis_writer {
            if tokio::time::timeout(Duration::from_secs(10), writer).await.is_err() {
                tracing::warn!("the last ticks could not be written to Redis within 10 s");
            }
        }
        drained
    }
}

/// Binds, spawns the engine (and the demo fleet if asked), and serves until [`Running::stop`].
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let (auth, source) = auth::Auth::new(
        config.secret.as_deref(),
        config.fleet_key.as_deref(),
        config.admin_key.as_deref(),
        config.max_share_ttl(),
    )?;
    if source == auth::SecretSource::Generated {
        let redis_note = if config.redis_url.is_some() { " Other instances will not accept them." } else { "" };
        tracing::warn!(
            "no PULSEMAP_SECRET: made a random one for this process, so driver tokens and share links end when \
             it stops.{redis_note} Set PULSEMAP_SECRET (32+ bytes, the same on every instance) to keep them."
        );
    }
    if !auth.admin_enabled() {
        tracing::info!("no PULSEMAP_ADMIN_KEY: /metrics and revoking other drivers' links are off");
    }
    let listener =
        TcpListener::bind(config.addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let (ingest, queue) = Ingest::new(&config, metrics.clone());
    let ingest = Arc::new(ingest);
    let (store, remote, redis_writer) = match &config.redis_url {
        None => (store::Store::Memory, None, None),
        Some(url) => {
            let started = connect_redis(url, &config).await?;
            let remote =
                engine::Remote { loaded: started.loaded, increments: started.remote, tracking: started.tracking };
            let store = store::Store::Redis(Box::new(store::RedisStore::new(started.handle, started.writer)));
            (store, Some(remote), Some(started.writer_done))
        }
    };
    let store_name = store.describe();
    let config_per_ip = config.max_connections_per_ip;
    let redis = store.redis().cloned();
    let shutdown = CancellationToken::new();
    let (engine, engine_task) = engine::spawn(&config, queue, metrics.clone(), store, remote, shutdown.clone());
    let state = AppState {
        leptos: leptos_options(&config, addr),
        config: Arc::new(config),
        ingest,
        engine,
        metrics,
        store_name,
        redis,
        auth: Arc::new(auth),
        connections: serve::Connections::new(config_per_ip),
        shutdown,
        started: std::time::Instant::now(),
    };
    spawn_housekeeping(&state);
    if state.config.demo {
        spawn_demo_fleet(&state);
    }
    let app = http::router(state.clone());
    let serve = tokio::spawn(serve::run(
        listener,
        app,
        state.config.header_timeout(),
        state.connections.clone(),
        state.metrics.clone(),
        state.shutdown.clone(),
    ));
    Ok(Running { addr, state, serve, engine: engine_task, redis_writer })
}

/// Connects to Redis, retrying with backoff for `--redis-connect-secs` before giving up with the last error.
async fn connect_redis(url: &str, config: &Config) -> anyhow::Result<store::redis::Started> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.redis_connect_secs);
    let mut backoff = Duration::from_millis(200);
    loop {
        match store::redis::start(url, &config.redis_prefix).await {
            Ok(started) => return Ok(started),
            Err(error) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Redis is not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(error.context(format!(
                    "gave up on Redis after {} s (--redis-connect-secs); is it running at {url}?",
                    config.redis_connect_secs
                )))
            }
        }
    }
}

/// Periodic chores: keep the rate limiter's memory bounded, and log a one-line summary for operators.
fn spawn_housekeeping(state: &AppState) {
    let ingest = state.ingest.clone();
    let metrics = state.metrics.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let period = Duration::from_secs(60);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let mut last_pings = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            ingest.purge_idle_rate_limits();
            let pings = count(&metrics.pings_aggregated);
            tracing::info!(
                pings_per_sec = (pings - last_pings) as f64 / period.as_secs_f64(),
                drivers_online = count(&metrics.drivers_online),
                queue_depth = ingest.queue_depth(),
                "engine summary"
            );
            last_pings = pings;
        }
    });
}

/// The built-in demo: a simulated fleet feeding the same ingest path as real drivers.
fn spawn_demo_fleet(state: &AppState) {
    let config = &state.config;
    let mut fleet = fleet::Fleet::new("demo", config.demo_drivers, config.demo_orders_per_min, now_ms() as u64);
    let period = Duration::from_secs_f64(config.demo_ping_secs.max(0.1));
    let ingest = state.ingest.clone();
    let shutdown = state.shutdown.clone();
    tracing::info!(drivers = fleet.len(), "demo fleet started around Lagos");
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {
                    let now = now_ms();
                    let dt = period.as_secs_f64();
                    let pings = fleet.step(dt, now).into_iter().map(Ok).collect();
                    let orders = fleet.orders(dt, now).into_iter().map(Ok).collect();
                    if let Err(e) = ingest.submit_pings(&auth::Role::Fleet, pings).and_then(|_| ingest.submit_orders(orders)) {
                        tracing::warn!(error = ?e, "demo fleet could not queue its pings; it will try next round");
                    }
                }
            }
        }
    });
}
