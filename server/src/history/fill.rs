//! Synthetic history for the load harness: the simulator's fleet over a past range, written straight into the
//! store a server with the same flags would use, through the backend's own batched write.

use std::time::Instant;

use super::{open_backend, replay::Model, Batch, DemandRow, FrameRow, PingRow, FRAME_MS};
use crate::config::Config;

/// Rows per write, as the writer task gathers them at most.
const FILL_BATCH_ROWS: usize = 50_000;

/// What a fill wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FillReport {
    pub pings: u64,
    pub demand: u64,
    pub frames: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

/// `drivers` of the simulated fleet, each pinging every `ping_ms`, and the fleet's orders (`orders_per_min`),
/// over `[from_ms, to_ms]`: heard 20 ms after each fix's time, as a live server would have heard them, with the
/// drivers frames a live server would have kept (the live model run over the rows).
pub async fn fill(
    config: &Config,
    drivers: usize,
    orders_per_min: f64,
    from_ms: i64,
    to_ms: i64,
    ping_ms: i64,
) -> anyhow::Result<FillReport> {
    anyhow::ensure!(ping_ms > 0 && from_ms <= to_ms, "a fill needs a range and a ping interval");
    let backend = open_backend(config).await?;
    let mut fleet = sim::Fleet::new("fill", drivers, orders_per_min, 7);
    let (mut batch, mut pings, mut demand, mut frames) = (Batch::default(), 0u64, 0u64, 0u64);
    let mut next_id = i64::from(fastrand::u32(..) & 0x7f_ffff) << 40;
    let started = Instant::now();
    let dt = ping_ms as f64 / 1000.0;
    let stale_ms = config.stale_after_ms();
    let mut model = Model::new(from_ms);
    let mut next_frame = (from_ms.div_euclid(FRAME_MS) + 1) * FRAME_MS;
    let mut t = from_ms;
    while t <= to_ms {
        let heard_ms = t + 20;
        while next_frame < heard_ms {
            model.expire(next_frame, stale_ms);
            batch.frames.push(FrameRow::new(next_frame, model.finest_drivers()));
            next_frame += FRAME_MS;
        }
        let rows: Vec<PingRow> = fleet.step(dt, t).iter().map(|p| PingRow::new(p, heard_ms)).collect();
        model.apply(rows.clone(), Vec::new());
        batch.pings.extend(rows);
        for event in fleet.orders(dt, t) {
            next_id += 1;
            let (ts, lat, lon, order_id) = (event.ts, event.lat, event.lon, event.order_id);
            batch.demand.push(DemandRow { id: next_id, ts, heard_ms, lat, lon, order_id });
        }
        t += ping_ms;
        if batch.rows() >= FILL_BATCH_ROWS || t > to_ms {
            backend.write(&batch).await?;
            pings += batch.pings.len() as u64;
            demand += batch.demand.len() as u64;
            frames += batch.frames.len() as u64;
            batch = Batch::default();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(FillReport { pings, demand, frames, seconds, rows_per_sec: (pings + demand) as f64 / seconds.max(1e-9) })
}
