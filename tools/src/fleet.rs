//! A simulated fleet driven against a server over `POST /api/pings`, paced as a real fleet is: every driver once a
//! second at its own phase.

use std::time::Duration;

use protocol::driver::Ping;
use sim::Fleet;

use crate::{client::keyed_client, now_ms};

/// Slices of each second the fleet's pings are spread over: every driver pings once a second at its own phase,
/// so the server sees a steady stream (a few pings every 10 ms), not one burst per second.
const FLEET_SLICES_PER_SEC: usize = 100;

/// Drives `fleet` over `POST /api/pings`, every driver once a second (each at its own phase, in
/// [`FLEET_SLICES_PER_SEC`] batches), until `stop` is cancelled. Only the first `moving` drivers move; the
/// others are parked (they keep pinging where they are). Each ping carries its send time as `ts`; `on_sent` sees
/// every batch the server took.
pub async fn drive_fleet(
    url: &str,
    key: &str,
    mut fleet: Fleet,
    moving: usize,
    stop: tokio_util::sync::CancellationToken,
    mut on_sent: impl FnMut(&[Ping]),
) -> anyhow::Result<()> {
    let client = keyed_client(key)?.build()?;
    let url = format!("{url}/api/pings");
    let slices = FLEET_SLICES_PER_SEC;
    let chunk = fleet.len().div_ceil(slices);
    let mut every = tokio::time::interval(Duration::from_secs(1) / slices as u32);
    let mut positions = fleet.step(0.0, 0);
    for slice in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        if slice % slices == 0 && slice > 0 {
            for (i, next) in fleet.step(1.0, 0).into_iter().enumerate().take(moving) {
                positions[i] = next;
            }
        }
        let from = (slice % slices) * chunk;
        let batch: Vec<Ping> =
            positions.iter().skip(from).take(chunk).map(|p| Ping { ts: now_ms(), ..p.clone() }).collect();
        if batch.is_empty() {
            continue;
        }
        client.post(&url).json(&batch).send().await?.error_for_status()?;
        on_sent(&batch);
    }
    Ok(())
}
