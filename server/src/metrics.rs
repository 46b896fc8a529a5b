//! Counters and gauges for everything a person would graph, rendered as Prometheus text on `GET /metrics`.
//!
//! Plain atomics: every ingest task and socket bumps them without a lock, and the render reads them all.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use app::protocol::ErrorCode;

/// The kinds of WebSocket, for subscriber gauges and frame counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Heat = 0,
    Track = 1,
    Driver = 2,
}

const KINDS: [(SocketKind, &str); 3] =
    [(SocketKind::Heat, "heat"), (SocketKind::Track, "track"), (SocketKind::Driver, "driver")];

/// Tick duration histogram bucket bounds, in seconds.
const TICK_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// One counter per error code (index: position in `ErrorCode::ALL`). Arrays longer than 32 have no `Default`.
pub struct PerCode([AtomicU64; ErrorCode::ALL.len()]);

impl Default for PerCode {
    fn default() -> Self {
        PerCode(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl PerCode {
    fn add(&self, code: ErrorCode, n: u64) {
        self.0[code_index(code)].fetch_add(n, Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    pub pings_accepted: AtomicU64,
    pub orders_accepted: AtomicU64,
    /// Refusals by code: pings, orders, and credentials apart.
    pings_rejected: PerCode,
    orders_rejected: PerCode,
    auth_refused: PerCode,
    /// Heat subscriptions and snapshots refused (bad layer, window, precision or box; a box too large).
    heat_refused: PerCode,
    /// Connections refused at accept or handshake: their address already had `--max-connections-per-ip`.
    pub connections_refused: AtomicU64,
    /// WebSockets closed because nothing (not even a pong) came for `--ws-idle-secs`.
    pub ws_idle_closed: AtomicU64,
    /// WebSockets closed because a frame could not be written within the send deadline (a stalled reader).
    pub ws_stalled_closed: AtomicU64,
    /// Connections closed because their request headers did not arrive within `--header-timeout-secs`.
    pub header_timeouts: AtomicU64,
    /// WebSocket messages refused because their socket was over `--ws-messages-per-sec`.
    pub ws_messages_refused: AtomicU64,
    /// Pings and orders the engine has folded into presence and windows: equals accepted once the queue drains.
    pub pings_aggregated: AtomicU64,
    pub orders_aggregated: AtomicU64,
    /// Heat viewers that fell behind and were resynced with a snapshot.
    pub heat_resyncs: AtomicU64,
    /// WebSocket handshakes refused because of their Origin.
    pub ws_origin_refused: AtomicU64,
    pub drivers_online: AtomicU64,
    pub ticks: AtomicU64,
    subscribers: [AtomicI64; 3],
    frames_sent: [AtomicU64; 3],
    bytes_sent: [AtomicU64; 3],
    tick_buckets: [AtomicU64; TICK_BUCKETS.len()],
    tick_sum_micros: AtomicU64,
}

/// Gauges owned by other parts, read when rendering.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub heat_backlog_ticks: usize,
}

fn code_index(code: ErrorCode) -> usize {
    ErrorCode::ALL.iter().position(|c| *c == code).expect("every code is in ALL")
}

/// Keeps a subscriber gauge up while it lives.
pub struct SubscriberGuard<'a> {
    metrics: &'a Metrics,
    kind: SocketKind,
}

impl Drop for SubscriberGuard<'_> {
    fn drop(&mut self) {
        self.metrics.subscribers[self.kind as usize].fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    pub fn ping_rejected(&self, code: ErrorCode, n: u64) {
        self.pings_rejected.add(code, n);
    }

    pub fn order_rejected(&self, code: ErrorCode, n: u64) {
        self.orders_rejected.add(code, n);
    }

    /// A request or socket refused for its credential (missing, invalid, expired, revoked, or not allowed).
    pub fn auth_refused(&self, code: ErrorCode) {
        self.auth_refused.add(code, 1);
    }

    pub fn heat_refused(&self, code: ErrorCode) {
        self.heat_refused.add(code, 1);
    }

    pub fn pings_rejected(&self, code: ErrorCode) -> u64 {
        self.pings_rejected.0[code_index(code)].load(Relaxed)
    }

    pub fn subscriber(&self, kind: SocketKind) -> SubscriberGuard<'_> {
        self.subscribers[kind as usize].fetch_add(1, Relaxed);
        SubscriberGuard { metrics: self, kind }
    }

    pub fn sent(&self, kind: SocketKind, bytes: usize) {
        self.sent_many(kind, 1, bytes);
    }

    pub fn sent_many(&self, kind: SocketKind, frames: u64, bytes: usize) {
        if frames > 0 {
            self.frames_sent[kind as usize].fetch_add(frames, Relaxed);
            self.bytes_sent[kind as usize].fetch_add(bytes as u64, Relaxed);
        }
    }

    pub fn observe_tick(&self, took: Duration) {
        let secs = took.as_secs_f64();
        self.ticks.fetch_add(1, Relaxed);
        self.tick_sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
        if let Some(i) = TICK_BUCKETS.iter().position(|b| secs <= *b) {
            self.tick_buckets[i].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition of every metric, with the gauges read from their owners.
    pub fn render(&self, gauges: Gauges) -> String {
        let Gauges { queue_depth, queue_capacity, heat_backlog_ticks } = gauges;
        let mut out = String::with_capacity(8 * 1024);
        let mut counter = |name: &str, help: &str, kind: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP pulsemap_{name} {help}\n# TYPE pulsemap_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "pulsemap_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v as f64)];
        counter(
            "pings_accepted_total",
            "Pings validated and queued.",
            "counter",
            &one(self.pings_accepted.load(Relaxed)),
        );
        counter(
            "ws_origin_refused_total",
            "WebSocket handshakes refused: the page's Origin is not allowed.",
            "counter",
            &one(self.ws_origin_refused.load(Relaxed)),
        );
        counter(
            "connections_refused_total",
            "Connections refused because their address already had --max-connections-per-ip open.",
            "counter",
            &one(self.connections_refused.load(Relaxed)),
        );
        counter(
            "ws_stalled_closed_total",
            "WebSockets closed because a frame could not be written within 10 s (the client stopped reading).",
            "counter",
            &one(self.ws_stalled_closed.load(Relaxed)),
        );
        counter(
            "header_timeouts_total",
            "Connections closed because their request headers took longer than --header-timeout-secs.",
            "counter",
            &one(self.header_timeouts.load(Relaxed)),
        );
        counter(
            "ws_idle_closed_total",
            "WebSockets closed because nothing, not even a pong, came for --ws-idle-secs.",
            "counter",
            &one(self.ws_idle_closed.load(Relaxed)),
        );
        counter(
            "ws_messages_refused_total",
            "WebSocket messages refused because their socket sent faster than --ws-messages-per-sec.",
            "counter",
            &one(self.ws_messages_refused.load(Relaxed)),
        );
        counter(
            "orders_accepted_total",
            "Order events validated and queued.",
            "counter",
            &one(self.orders_accepted.load(Relaxed)),
        );
        let by_reason = |arr: &[AtomicU64]| -> Vec<(String, f64)> {
            ErrorCode::ALL
                .iter()
                .zip(arr)
                .map(|(c, v)| (format!("{{reason=\"{}\"}}", c.as_str()), v.load(Relaxed) as f64))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        };
        counter(
            "pings_rejected_total",
            "Pings refused, by reason (a refused body or socket message counts once).",
            "counter",
            &by_reason(&self.pings_rejected.0),
        );
        counter(
            "orders_rejected_total",
            "Order events refused, by reason (a refused body counts once).",
            "counter",
            &by_reason(&self.orders_rejected.0),
        );
        counter(
            "auth_refused_total",
            "Requests and sockets refused for their credential, by reason.",
            "counter",
            &by_reason(&self.auth_refused.0),
        );
        counter(
            "heat_refused_total",
            "Heat subscriptions and snapshots refused, by reason.",
            "counter",
            &by_reason(&self.heat_refused.0),
        );
        counter(
            "pings_aggregated_total",
            "Pings folded into presence and heat.",
            "counter",
            &one(self.pings_aggregated.load(Relaxed)),
        );
        counter(
            "orders_aggregated_total",
            "Order events folded into the windows.",
            "counter",
            &one(self.orders_aggregated.load(Relaxed)),
        );
        counter("queue_depth", "Items waiting in the ingest queue.", "gauge", &one(queue_depth as u64));
        counter(
            "queue_capacity",
            "Items the ingest queue holds before refusing.",
            "gauge",
            &one(queue_capacity as u64),
        );
        counter(
            "heat_backlog_ticks",
            "Ticks of heat frames held for the slowest viewer (bounded by --viewer-buffer).",
            "gauge",
            &one(heat_backlog_ticks as u64),
        );
        counter(
            "drivers_online",
            "Drivers heard from within the stale time.",
            "gauge",
            &one(self.drivers_online.load(Relaxed)),
        );
        let per_kind = |arr: &[AtomicU64]| -> Vec<(String, f64)> {
            KINDS.iter().map(|(k, n)| (format!("{{kind=\"{n}\"}}"), arr[*k as usize].load(Relaxed) as f64)).collect()
        };
        let subscribers: Vec<(String, f64)> = KINDS
            .iter()
            .map(|(k, n)| (format!("{{kind=\"{n}\"}}"), self.subscribers[*k as usize].load(Relaxed) as f64))
            .collect();
        counter("subscribers", "Open WebSockets, by kind.", "gauge", &subscribers);
        counter("frames_sent_total", "WebSocket frames sent, by kind.", "counter", &per_kind(&self.frames_sent));
        counter("bytes_sent_total", "WebSocket payload bytes sent, by kind.", "counter", &per_kind(&self.bytes_sent));
        counter(
            "heat_resyncs_total",
            "Heat viewers that fell behind and got a fresh snapshot.",
            "counter",
            &one(self.heat_resyncs.load(Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP pulsemap_tick_duration_seconds Time the engine spends on one tick.\n# TYPE pulsemap_tick_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, n) in TICK_BUCKETS.iter().zip(&self.tick_buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "pulsemap_tick_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.ticks.load(Relaxed);
        let _ = writeln!(out, "pulsemap_tick_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "pulsemap_tick_duration_seconds_sum {}", self.tick_sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "pulsemap_tick_duration_seconds_count {count}");
        out
    }
}
