//! The built-in demo (`--demo`): a simulated Lagos fleet feeding the same ingest path as real drivers, so the
//! homepage is alive the moment the server starts.

use std::{sync::Arc, time::Duration};

use sim::Fleet;
use tokio_util::sync::CancellationToken;

use crate::{auth::Role, clock::now_ms, config::Config, ingest::Ingest};

/// Moves the fleet every `--demo-ping-secs` until `shutdown`.
pub(crate) fn spawn(config: &Config, ingest: Arc<Ingest>, shutdown: CancellationToken) {
    let mut fleet = Fleet::new("demo", config.demo_drivers, config.demo_orders_per_min, now_ms() as u64);
    let period = Duration::from_secs_f64(config.demo_ping_secs.max(0.1));
    tracing::info!(drivers = fleet.len(), "demo fleet started around Lagos");
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = now_ms();
            let dt = period.as_secs_f64();
            let pings = fleet.step(dt, now).into_iter().map(Ok).collect();
            let orders = fleet.orders(dt, now).into_iter().map(Ok).collect();
            if let Err(e) = ingest.submit_pings(&Role::Fleet, pings).and_then(|_| ingest.submit_orders(orders)) {
                tracing::warn!(error = ?e, "demo fleet could not queue its pings; it will try next round");
            }
        }
    });
}
