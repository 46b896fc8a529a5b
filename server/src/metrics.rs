//! Counters and gauges for everything a person would graph, exposed on `GET /metrics` in the Prometheus text
//! format by the Prometheus project's own client library.
//!
//! Every metric is registered once, here (the Redis store adds its own through [`Metrics::register`] before the
//! server starts). Hot paths touch plain atomics: the per-socket-kind counters are fetched from their families
//! once, at start, so counting a frame takes no lock.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use protocol::problem::ErrorCode;

/// The kinds of WebSocket, for subscriber gauges and frame counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    Heat = 0,
    Track = 1,
    Driver = 2,
    Order = 3,
}

const KINDS: [(SocketKind, &str); 4] = [
    (SocketKind::Heat, "heat"),
    (SocketKind::Track, "track"),
    (SocketKind::Driver, "driver"),
    (SocketKind::Order, "order"),
];

impl SocketKind {
    /// The kind's label in metrics and logs.
    pub fn name(self) -> &'static str {
        KINDS[self as usize].1
    }
}

/// Tick duration histogram bucket bounds, in seconds.
const TICK_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// Refusals counted by their error code.
type ByReason = Family<Reason, Counter>;

pub(crate) struct Metrics {
    registry: Registry,
    pub pings_accepted: Counter,
    pub orders_accepted: Counter,
    /// Refusals by code: pings, orders, credentials and heat subscriptions apart.
    pings_rejected: ByReason,
    orders_rejected: ByReason,
    auth_refused: ByReason,
    heat_refused: ByReason,
    /// Connections refused at accept: their address already had `--max-connections-per-ip`.
    pub connections_refused: Counter,
    /// WebSockets closed because nothing (not even a pong) came for `--ws-idle-secs`.
    pub ws_idle_closed: Counter,
    /// WebSockets closed because a frame could not be written within the send deadline (a stalled reader).
    pub ws_stalled_closed: Counter,
    /// Connections closed because their request headers did not arrive within `--header-timeout-secs`.
    pub header_timeouts: Counter,
    /// WebSocket messages refused because their socket was over `--ws-messages-per-sec`.
    pub ws_messages_refused: Counter,
    /// Pings and orders the engine has folded into presence and windows: equals accepted once the queue drains.
    pub pings_aggregated: Counter,
    pub orders_aggregated: Counter,
    /// Heat viewers that fell behind and were resynced with a snapshot.
    pub heat_resyncs: Counter,
    /// WebSocket handshakes refused because of their Origin.
    pub ws_origin_refused: Counter,
    pub drivers_online: Gauge,
    /// The delivery loop: orders placed, offers sent, and how orders ended up.
    pub orders_placed: Counter,
    pub offers_sent: Counter,
    pub orders_assigned: Counter,
    pub orders_delivered: Counter,
    pub orders_no_driver: Counter,
    queue_depth: Gauge,
    queue_capacity: Gauge,
    heat_backlog_ticks: Gauge,
    /// Per socket kind (by `SocketKind as usize`), fetched from their families once.
    subscribers: [Gauge; 4],
    frames_sent: [Counter; 4],
    bytes_sent: [Counter; 4],
    tick_duration: Histogram,
}

/// Gauges owned by other parts, read when rendering.
pub(crate) struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub heat_backlog_ticks: usize,
}

/// Keeps a subscriber gauge up while it lives.
pub(crate) struct SubscriberGuard {
    gauge: Gauge,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pulsemap");
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let pings_accepted = counter("pings_accepted", "Pings validated and queued.");
        let ws_origin_refused =
            counter("ws_origin_refused", "WebSocket handshakes refused: the page's Origin is not allowed.");
        let connections_refused = counter(
            "connections_refused",
            "Connections refused because their address already had --max-connections-per-ip open.",
        );
        let ws_stalled_closed = counter(
            "ws_stalled_closed",
            "WebSockets closed because a frame could not be written within 10 s (the client stopped reading).",
        );
        let header_timeouts = counter(
            "header_timeouts",
            "Connections closed because their request headers took longer than --header-timeout-secs.",
        );
        let ws_idle_closed =
            counter("ws_idle_closed", "WebSockets closed because nothing, not even a pong, came for --ws-idle-secs.");
        let ws_messages_refused = counter(
            "ws_messages_refused",
            "WebSocket messages refused because their socket sent faster than --ws-messages-per-sec.",
        );
        let orders_accepted = counter("orders_accepted", "Order events validated and queued.");
        let pings_aggregated = counter("pings_aggregated", "Pings folded into presence and heat.");
        let orders_aggregated = counter("orders_aggregated", "Order events folded into the windows.");
        let heat_resyncs = counter("heat_resyncs", "Heat viewers that fell behind and got a fresh snapshot.");
        let orders_placed = counter("orders_placed", "Orders placed for delivery (POST /api/orders).");
        let offers_sent = counter("offers_sent", "Job offers sent to drivers.");
        let orders_assigned = counter("orders_assigned", "Orders a driver accepted.");
        let orders_delivered = counter("orders_delivered", "Orders delivered.");
        let orders_no_driver = counter("orders_no_driver", "Orders no driver took within --match-give-up-secs.");
        let mut by_reason = |name: &str, help: &str| {
            let family = ByReason::default();
            registry.register(name, help, family.clone());
            family
        };
        let pings_rejected =
            by_reason("pings_rejected", "Pings refused, by reason (a refused body or socket message counts once).");
        let orders_rejected =
            by_reason("orders_rejected", "Order events refused, by reason (a refused body counts once).");
        let auth_refused = by_reason("auth_refused", "Requests and sockets refused for their credential, by reason.");
        let heat_refused = by_reason("heat_refused", "Heat subscriptions and snapshots refused, by reason.");
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let queue_depth = gauge("queue_depth", "Items waiting in the ingest queue.");
        let queue_capacity = gauge("queue_capacity", "Items the ingest queue holds before refusing.");
        let heat_backlog_ticks = gauge(
            "heat_backlog_ticks",
            "Ticks of heat frames held for the slowest viewer (bounded by --viewer-buffer).",
        );
        let drivers_online = gauge("drivers_online", "Drivers heard from within the stale time.");
        let subscribers = Family::<Kind, Gauge>::default();
        registry.register("subscribers", "Open WebSockets, by kind.", subscribers.clone());
        let frames_sent = Family::<Kind, Counter>::default();
        registry.register("frames_sent", "WebSocket frames sent, by kind.", frames_sent.clone());
        let bytes_sent = Family::<Kind, Counter>::default();
        registry.register("bytes_sent", "WebSocket payload bytes sent, by kind.", bytes_sent.clone());
        let tick_duration = Histogram::new(TICK_BUCKETS);
        registry.register("tick_duration_seconds", "Time the engine spends on one tick.", tick_duration.clone());
        let per_kind =
            |family: &Family<Kind, Counter>| KINDS.map(|(_, kind)| family.get_or_create(&Kind { kind }).clone());
        Metrics {
            pings_accepted,
            orders_accepted,
            pings_rejected,
            orders_rejected,
            auth_refused,
            heat_refused,
            connections_refused,
            ws_idle_closed,
            ws_stalled_closed,
            header_timeouts,
            ws_messages_refused,
            pings_aggregated,
            orders_aggregated,
            heat_resyncs,
            ws_origin_refused,
            drivers_online,
            orders_placed,
            offers_sent,
            orders_assigned,
            orders_delivered,
            orders_no_driver,
            queue_depth,
            queue_capacity,
            heat_backlog_ticks,
            subscribers: KINDS.map(|(_, kind)| subscribers.get_or_create(&Kind { kind }).clone()),
            frames_sent: per_kind(&frames_sent),
            bytes_sent: per_kind(&bytes_sent),
            tick_duration,
            registry,
        }
    }

    /// Adds metrics owned by another part (the Redis store's); before the metrics are shared.
    pub fn register(&mut self, add: impl FnOnce(&mut Registry)) {
        add(&mut self.registry);
    }

    fn count(family: &ByReason, code: ErrorCode, n: u64) {
        family.get_or_create(&Reason { reason: code.as_str() }).inc_by(n);
    }

    pub fn ping_rejected(&self, code: ErrorCode, n: u64) {
        Self::count(&self.pings_rejected, code, n);
    }

    pub fn order_rejected(&self, code: ErrorCode, n: u64) {
        Self::count(&self.orders_rejected, code, n);
    }

    /// A request or socket refused for its credential (missing, invalid, expired, revoked, or not allowed).
    pub fn auth_refused(&self, code: ErrorCode) {
        Self::count(&self.auth_refused, code, 1);
    }

    pub fn heat_refused(&self, code: ErrorCode) {
        Self::count(&self.heat_refused, code, 1);
    }

    pub fn subscriber(&self, kind: SocketKind) -> SubscriberGuard {
        let gauge = self.subscribers[kind as usize].clone();
        gauge.inc();
        SubscriberGuard { gauge }
    }

    pub fn sent_many(&self, kind: SocketKind, frames: u64, bytes: usize) {
        if frames > 0 {
            self.frames_sent[kind as usize].inc_by(frames);
            self.bytes_sent[kind as usize].inc_by(bytes as u64);
        }
    }

    pub fn observe_tick(&self, took: Duration) {
        self.tick_duration.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric, with the gauges read from their owners.
    pub fn render(&self, gauges: Gauges) -> String {
        let Gauges { queue_depth, queue_capacity, heat_backlog_ticks } = gauges;
        self.queue_depth.set(queue_depth as i64);
        self.queue_capacity.set(queue_capacity as i64);
        self.heat_backlog_ticks.set(heat_backlog_ticks as i64);
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_as_before() {
        let metrics = Metrics::new();
        metrics.pings_accepted.inc_by(3);
        metrics.ping_rejected(ErrorCode::NullIsland, 2);
        metrics.sent_many(SocketKind::Track, 4, 100);
        let _viewer = metrics.subscriber(SocketKind::Heat);
        metrics.observe_tick(Duration::from_micros(700));
        let text = metrics.render(Gauges { queue_depth: 5, queue_capacity: 10, heat_backlog_ticks: 1 });
        for line in [
            "# TYPE pulsemap_pings_accepted counter",
            "pulsemap_pings_accepted_total 3",
            "pulsemap_pings_rejected_total{reason=\"null_island\"} 2",
            "pulsemap_frames_sent_total{kind=\"track\"} 4",
            "pulsemap_bytes_sent_total{kind=\"track\"} 100",
            "pulsemap_subscribers{kind=\"heat\"} 1",
            "pulsemap_subscribers{kind=\"driver\"} 0",
            "pulsemap_queue_depth 5",
            "# TYPE pulsemap_tick_duration_seconds histogram",
            "pulsemap_tick_duration_seconds_bucket{le=\"0.001\"} 1",
            "pulsemap_tick_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
