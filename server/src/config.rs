//! Every setting of the server in one struct: a `--flag`, the `PULSEMAP_FLAG` environment variable, or the
//! documented default, in that order. Printed once at start.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use protocol::{heat::WINDOWS_MIN, settings::SiteSettings, validate::Limits};

/// pulsemap: live driver tracking and demand heatmaps.
#[derive(Debug, Clone, Parser)]
#[command(name = "pulsemap", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "PULSEMAP_ADDR", default_value = site::ADDR)]
    pub addr: SocketAddr,

    /// Start the built-in demo fleet (drivers and orders moving around Lagos).
    #[arg(long, env = "PULSEMAP_DEMO", default_value_t = false)]
    pub demo: bool,

    /// Drivers in the demo fleet.
    #[arg(long, env = "PULSEMAP_DEMO_DRIVERS", default_value_t = 300)]
    pub demo_drivers: usize,

    /// Orders per minute the demo fleet places.
    #[arg(long, env = "PULSEMAP_DEMO_ORDERS_PER_MIN", default_value_t = 240.0)]
    pub demo_orders_per_min: f64,

    /// Deliveries per minute the demo places as real orders (offered to the demo drivers, who drive them to
    /// the door); the rest of the demo's orders only feed the orders heat.
    #[arg(long, env = "PULSEMAP_DEMO_DELIVERIES_PER_MIN", default_value_t = 12.0)]
    pub demo_deliveries_per_min: f64,

    /// Seconds between two pings of one demo driver.
    #[arg(long, env = "PULSEMAP_DEMO_PING_SECS", default_value_t = 2.0)]
    pub demo_ping_secs: f64,

    /// How often the engine publishes changed cells to viewers, in milliseconds.
    #[arg(long, env = "PULSEMAP_TICK_MS", default_value_t = 250)]
    pub tick_ms: u64,

    /// A driver not heard from for this many seconds goes offline.
    #[arg(long, env = "PULSEMAP_STALE_AFTER_SECS", default_value_t = 30.0)]
    pub stale_after_secs: f64,

    /// An offline driver's last fix is forgotten after this many seconds.
    #[arg(long, env = "PULSEMAP_FORGET_AFTER_SECS", default_value_t = 3600.0)]
    pub forget_after_secs: f64,

    /// Pings and orders the ingest queue holds before it answers 503 / slow_down.
    #[arg(long, env = "PULSEMAP_QUEUE_CAPACITY", default_value_t = 262_144)]
    pub queue_capacity: usize,

    /// Largest HTTP body accepted, in bytes (413 above).
    #[arg(long, env = "PULSEMAP_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most items in one batch (HTTP or WebSocket; 413 above).
    #[arg(long, env = "PULSEMAP_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,

    /// Largest WebSocket message accepted, in bytes (the socket closes with 1009 above).
    #[arg(long, env = "PULSEMAP_MAX_WS_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_ws_message_bytes: usize,

    /// Sustained pings per second allowed per driver.
    #[arg(long, env = "PULSEMAP_RATE_PER_SEC", default_value_t = 10.0)]
    pub rate_per_sec: f64,

    /// Pings a driver may send at once above the sustained rate (a phone flushing its offline queue).
    #[arg(long, env = "PULSEMAP_RATE_BURST", default_value_t = 120)]
    pub rate_burst: u32,

    /// How far ahead of the server clock a timestamp may be, in seconds.
    #[arg(long, env = "PULSEMAP_MAX_FUTURE_SECS", default_value_t = 300)]
    pub max_future_secs: u64,

    /// Most cells a heat subscription's box may span at its precision (a bigger box is refused: zoom in).
    #[arg(long, env = "PULSEMAP_MAX_BBOX_CELLS", default_value_t = 262_144)]
    pub max_bbox_cells: u64,

    /// Frames a heat viewer may fall behind before its deltas are dropped and it gets a fresh snapshot.
    #[arg(long, env = "PULSEMAP_VIEWER_BUFFER", default_value_t = 64)]
    pub viewer_buffer: usize,

    /// How long a driver socket waits for queue room before refusing a ping with `queue_full`, in ms.
    #[arg(long, env = "PULSEMAP_QUEUE_WAIT_MS", default_value_t = 2_000)]
    pub queue_wait_ms: u64,

    /// Connections one client address may hold open (HTTP and WebSocket); more are refused. 0: no cap. Behind
    /// a proxy every client has the proxy's address: raise it or cap at the proxy.
    #[arg(long, env = "PULSEMAP_MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    pub max_connections_per_ip: usize,

    /// Seconds a connection has to send its request headers (slower ones are closed: slowloris).
    #[arg(long, env = "PULSEMAP_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,

    /// Messages a client may send per second on one WebSocket (twice that at once); a batch is one message.
    #[arg(long, env = "PULSEMAP_WS_MESSAGES_PER_SEC", default_value_t = 50.0)]
    pub ws_messages_per_sec: f64,

    /// Seconds between the server's pings on every WebSocket.
    #[arg(long, env = "PULSEMAP_WS_PING_SECS", default_value_t = 20.0)]
    pub ws_ping_secs: f64,

    /// A WebSocket from which nothing (data, pong, anything) came for this many seconds is closed (4408).
    #[arg(long, env = "PULSEMAP_WS_IDLE_SECS", default_value_t = 60.0)]
    pub ws_idle_secs: f64,

    /// Origins whose pages may open the WebSockets, comma-separated (`https://app.example.com`). Empty: only
    /// pages served by this host (the Origin's host:port equals the Host header). A handshake without Origin
    /// (not a browser: the fleet, the load harness, native apps) is allowed; every browser sends one.
    #[arg(long, env = "PULSEMAP_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Secret that signs driver tokens and share links: at least 32 bytes, the same on every instance. Without
    /// it a random one is made at start, so tokens and links end when the process does.
    #[arg(long, env = "PULSEMAP_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Fleet API key (16+ bytes), given as `Authorization: Bearer <key>`: pings for any driver, orders,
    /// driver tokens and share links for any driver, nearest drivers. Unset: no fleet access.
    #[arg(long, env = "PULSEMAP_FLEET_KEY", hide_env_values = true)]
    pub fleet_key: Option<String>,

    /// Admin key (16+ bytes): everything the fleet key may, plus `/metrics` and revoking any driver's links.
    /// Unset: no admin access.
    #[arg(long, env = "PULSEMAP_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Anyone may become a driver with `POST /api/drivers/enter` (the "Enter as Driver" page). Turn off when
    /// drivers get their tokens from your backend (with the fleet key).
    #[arg(long, env = "PULSEMAP_OPEN_ENTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub open_enter: bool,

    /// How long a driver token lasts, in hours (the page enters again when it ends).
    #[arg(long, env = "PULSEMAP_DRIVER_TOKEN_HOURS", default_value_t = 12.0)]
    pub driver_token_hours: f64,

    /// How long a share link lasts unless asked otherwise, in hours.
    #[arg(long, env = "PULSEMAP_SHARE_HOURS", default_value_t = 2.0)]
    pub share_hours: f64,

    /// The longest a share link may be asked to last, in hours.
    #[arg(long, env = "PULSEMAP_MAX_SHARE_HOURS", default_value_t = 24.0)]
    pub max_share_hours: f64,

    /// Anyone may place an order with `POST /api/orders` (the `/order` page). Off: only the fleet key may.
    #[arg(long, env = "PULSEMAP_OPEN_ORDERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub open_orders: bool,

    /// How long an order token (the customer's link) lasts, in hours.
    #[arg(long, env = "PULSEMAP_ORDER_TOKEN_HOURS", default_value_t = 24.0)]
    pub order_token_hours: f64,

    /// Drivers offered an order at once (the first to accept gets it).
    #[arg(long, env = "PULSEMAP_OFFER_BATCH", default_value_t = 1)]
    pub offer_batch: usize,

    /// Seconds a driver has to accept an offer before it goes to the next driver.
    #[arg(long, env = "PULSEMAP_OFFER_SECS", default_value_t = 15.0)]
    pub offer_secs: f64,

    /// An order nobody took within this many seconds of being placed ends as `no_driver`.
    #[arg(long, env = "PULSEMAP_MATCH_GIVE_UP_SECS", default_value_t = 120.0)]
    pub match_give_up_secs: f64,

    /// The first search radius around the pickup, in metres; it doubles whenever nobody free is inside it.
    #[arg(long, env = "PULSEMAP_MATCH_RADIUS_M", default_value_t = 2_000.0)]
    pub match_radius_m: f64,

    /// The widest search radius, in metres.
    #[arg(long, env = "PULSEMAP_MATCH_MAX_RADIUS_M", default_value_t = 16_000.0)]
    pub match_max_radius_m: f64,

    /// Redis URL (`redis://host:6379/0`): run as one of many instances sharing this Redis. Without it the
    /// embedded store keeps everything in this process.
    #[arg(long, env = "PULSEMAP_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes (`host:port[,host:port...]`): run as one of many instances on this cluster
    /// instead of one Redis (`--redis-url`).
    #[arg(long, env = "PULSEMAP_REDIS_CLUSTER", conflicts_with = "redis_url")]
    pub redis_cluster: Option<String>,

    /// Prefix of every Redis key and channel, so several deployments (or tests) can share one Redis.
    #[arg(long, env = "PULSEMAP_REDIS_PREFIX", default_value = "pulsemap")]
    pub redis_prefix: String,

    /// Shards the state is split into on Redis, each under a hash tag of its own, so on a Redis Cluster they
    /// spread over the masters (default: 1 on one Redis, 12 on a cluster). Every instance on one Redis must use
    /// the same count (checked at start).
    #[arg(long, env = "PULSEMAP_REDIS_SHARDS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_shards: Option<u16>,

    /// How long to keep retrying Redis at start before giving up with an error, in seconds.
    #[arg(long, env = "PULSEMAP_REDIS_CONNECT_SECS", default_value_t = 60)]
    pub redis_connect_secs: u64,

    /// How long this instance's lease in Redis outlives its last renewal (renewed every fifth of it), in seconds:
    /// once it lapses, a surviving instance takes its drivers out of the heat.
    #[arg(long, env = "PULSEMAP_INSTANCE_LEASE_SECS", default_value_t = 5.0)]
    pub instance_lease_secs: f64,

    /// Folder of the embedded history (`history.sqlite3`), created at start if missing. Relative paths are from
    /// the working directory. Not used with `--database-url`.
    #[arg(long, env = "PULSEMAP_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// PostgreSQL URL (`postgres://user@host:5432/db`): keep history there (partitioned by day, written with
    /// COPY) instead of the SQLite file. What every instance of a multi-instance deployment should use.
    #[arg(long, env = "PULSEMAP_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The PostgreSQL schema that holds the history tables (created if missing).
    #[arg(long, env = "PULSEMAP_DATABASE_SCHEMA", default_value = "pulsemap")]
    pub database_schema: String,

    /// How long to keep retrying PostgreSQL at start before giving up with an error, in seconds.
    #[arg(long, env = "PULSEMAP_DATABASE_CONNECT_SECS", default_value_t = 30)]
    pub database_connect_secs: u64,

    /// Days of history kept, today included; older days are dropped whole, hourly. 0 keeps everything.
    #[arg(long, env = "PULSEMAP_HISTORY_DAYS", default_value_t = 7)]
    pub history_days: u32,

    /// History rows held in memory while the database is slow or away (about 150 bytes each), and with Redis
    /// also in the history stream; past this, new rows are refused and counted
    /// (`pulsemap_history_rows_dropped`). The live map never waits.
    #[arg(long, env = "PULSEMAP_HISTORY_BACKLOG_ROWS", default_value_t = 2_000_000)]
    pub history_backlog_rows: u64,

    /// With Redis and `--database-url`: a history stream entry another instance's writer read and has not
    /// acknowledged for this long is taken over (that writer died or stalled).
    #[arg(long, env = "PULSEMAP_HISTORY_CLAIM_SECS", default_value_t = 30)]
    pub history_claim_secs: u64,

    /// Keep no history at all (no file, no database; `/api/history/*` answers 503).
    #[arg(long, env = "PULSEMAP_NO_HISTORY", default_value_t = false)]
    pub no_history: bool,

    /// Map tile URL template for the pages; `none` draws the maps on a plain background.
    #[arg(long, env = "PULSEMAP_TILE_URL", default_value = "https://tile.openstreetmap.org/{z}/{x}/{y}.png")]
    pub tile_url: String,

    /// Attribution shown for the map tiles.
    #[arg(long, env = "PULSEMAP_TILE_ATTRIBUTION", default_value = "&copy; OpenStreetMap contributors")]
    pub tile_attribution: String,

    /// The driver page does not send fixes less accurate than this, in metres.
    #[arg(long, env = "PULSEMAP_DRIVER_MAX_ACCURACY_M", default_value_t = 100.0)]
    pub driver_max_accuracy_m: f64,

    /// While sharing, the driver page sends at least one ping this often, in seconds.
    #[arg(long, env = "PULSEMAP_DRIVER_HEARTBEAT_SECS", default_value_t = 10.0)]
    pub driver_heartbeat_secs: f64,

    /// Folder of the built site (wasm, js, css, static files), relative to the working directory.
    #[arg(long, env = "PULSEMAP_SITE_ROOT", default_value = site::ROOT)]
    pub site_root: PathBuf,

    /// Log format: `text` for people, `json` for log pipelines. The filter is RUST_LOG (default `info`).
    #[arg(long, env = "PULSEMAP_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// A WebSocket that cannot take a frame within this time is closed (its reader is gone or stalled). Not a
    /// flag: fixed for deployments, shortened by tests.
    #[arg(skip = Duration::from_secs(10))]
    pub ws_send_timeout: Duration,

    /// How long a tracking socket that must authenticate waits for its `auth` message. Not a flag, as above.
    #[arg(skip = Duration::from_secs(10))]
    pub ws_auth_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The defaults, listening on a free loopback port: what tests and embedders start from.
    /// History goes to a fresh folder under the system's temporary one.
    pub fn for_tests() -> Config {
        static SERVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join("pulsemap-tests");
        if n == 0 {
            // The data directories of test processes that have ended.
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().unwrap_or_default();
                if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("{}-{n}", std::process::id()));
        let mut config = Config::parse_from(["pulsemap", "--addr", "127.0.0.1:0"]);
        config.data_dir = dir;
        config
    }

    /// The configuration as it may be logged: secrets shown only as set or not.
    pub fn redacted(&self) -> Config {
        let hide = |s: &Option<String>| s.as_ref().map(|_| "<set>".to_string());
        Config {
            secret: hide(&self.secret),
            fleet_key: hide(&self.fleet_key),
            admin_key: hide(&self.admin_key),
            database_url: hide(&self.database_url),
            ..self.clone()
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_future_ms: self.max_future_secs as i64 * 1000,
            max_age_ms: i64::from(*WINDOWS_MIN.iter().max().expect("windows")) * 60_000,
        }
    }

    /// What the pages are told at render time.
    pub fn site_settings(&self) -> SiteSettings {
        let tiles = self.tile_url.trim();
        SiteSettings {
            tile_url: (!tiles.is_empty() && tiles != "none").then(|| tiles.to_string()),
            tile_attribution: self.tile_attribution.clone(),
            max_accuracy_m: self.driver_max_accuracy_m,
            heartbeat_secs: self.driver_heartbeat_secs,
            stale_after_secs: self.stale_after_secs,
        }
    }

    pub fn driver_token_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.driver_token_hours.max(0.0) * 3600.0)
    }

    pub fn share_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.share_hours.clamp(0.0, self.max_share_hours) * 3600.0)
    }

    pub fn max_share_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.max_share_hours.max(0.0) * 3600.0)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout_secs.max(0.1))
    }

    pub fn ws_ping(&self) -> Duration {
        Duration::from_secs_f64(self.ws_ping_secs.max(0.05))
    }

    pub fn ws_idle(&self) -> Duration {
        Duration::from_secs_f64(self.ws_idle_secs.max(0.1))
    }

    pub fn order_token_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.order_token_hours.max(0.0) * 3600.0)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms.max(10))
    }

    pub fn stale_after_ms(&self) -> i64 {
        (self.stale_after_secs * 1000.0) as i64
    }

    /// Whether instances share their state (through one Redis or a Redis Cluster).
    pub fn shared_store(&self) -> bool {
        self.redis_url.is_some() || self.redis_cluster.is_some()
    }

    /// The lease, at least half a second (a renewal every 100 ms is the most the store should see).
    pub fn instance_lease(&self) -> Duration {
        Duration::from_secs_f64(self.instance_lease_secs.max(0.5))
    }

    pub fn forget_after_ms(&self) -> i64 {
        (self.forget_after_secs * 1000.0) as i64
    }
}
