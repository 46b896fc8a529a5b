//! What the Redis store reports on `/metrics` (and `/healthz`): whether Redis answers, the requests sent and
//! failed, the tick writes, the stream entries applied and the tracking channels.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Default, Clone)]
pub(crate) struct RedisStats {
    /// 1 when the last command succeeded.
    pub up: Gauge,
    /// Requests sent (a pipeline counts once).
    pub round_trips: Counter,
    pub errors: Counter,
    pub pipeline_commands: Counter,
    pub flushes: Counter,
    pub flush_seconds: Counter<f64, AtomicU64>,
    pub stream_entries: Counter,
    pub track_channels: Gauge,
    /// Drivers tracked on any instance, as of the last registry read.
    pub tracked_drivers: Gauge,
    /// Other instances whose lapsed lease this one found, and whose drivers it took out of the heat.
    pub instances_reaped: Counter,
    /// Drivers those takeovers took out of the heat.
    pub drivers_reaped: Counter,
    /// Times this instance found its own share taken over (its lease had lapsed) and wrote its drivers again.
    pub rejoins: Counter,
    /// Drivers this instance stopped counting because another instance heard them later.
    pub drivers_handed_off: Counter,
    /// Times this instance found tick writes lost or doubled (its write count jumped) and started the heat over.
    pub repairs: Counter,
}

impl RedisStats {
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("redis_up", "Whether the last Redis command succeeded.", self.up.clone());
        registry.register(
            "redis_round_trips",
            "Requests sent to Redis (a pipeline counts once).",
            self.round_trips.clone(),
        );
        registry.register("redis_errors", "Redis requests that failed.", self.errors.clone());
        registry.register("redis_tick_flushes", "Tick pipelines written.", self.flushes.clone());
        registry.register(
            "redis_tick_pipeline_commands",
            "Commands in the tick pipelines (divide by flushes for the size).",
            self.pipeline_commands.clone(),
        );
        registry.register("redis_tick_flush_seconds", "Time spent writing tick pipelines.", self.flush_seconds.clone());
        registry.register(
            "redis_stream_entries",
            "Stream entries (ticks of every instance) applied here.",
            self.stream_entries.clone(),
        );
        registry.register(
            "redis_track_channels",
            "Driver channels this instance subscribes to.",
            self.track_channels.clone(),
        );
        registry.register(
            "redis_tracked_drivers",
            "Drivers tracked on any instance (only their fixes are published).",
            self.tracked_drivers.clone(),
        );
        registry.register(
            "redis_instances_reaped",
            "Other instances whose lease lapsed and whose drivers this instance took out of the heat.",
            self.instances_reaped.clone(),
        );
        registry.register(
            "redis_drivers_reaped",
            "Drivers taken out of the heat with a lapsed instance's share, by this instance.",
            self.drivers_reaped.clone(),
        );
        registry.register(
            "redis_rejoins",
            "Times this instance found its share taken over (its lease had lapsed) and wrote its drivers again.",
            self.rejoins.clone(),
        );
        registry.register(
            "redis_drivers_handed_off",
            "Drivers this instance stopped counting because another instance heard them later.",
            self.drivers_handed_off.clone(),
        );
        registry.register(
            "redis_repairs",
            "Times this instance found tick writes lost or doubled and started the heat over (every instance reseeds).",
            self.repairs.clone(),
        );
    }
}
