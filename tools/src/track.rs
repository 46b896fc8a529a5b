//! `track`: drivers ping at 1 Hz while trackers follow one driver each; every fix is timed from its `ts` (when
//! the fleet sent it) to its arrival at the tracker.

use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::{driver::Ping, track::TrackMsg};
use serde::Serialize;
use sim::Fleet;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{keyed_request, small_buffers},
    fleet::drive_fleet,
    stats::percentile,
};

#[derive(Debug, Clone)]
pub struct TrackPlan {
    pub url: String,
    /// The server's admin key (see [`crate::ingest::IngestPlan::key`]).
    pub key: String,
    /// Drivers pinging once a second each.
    pub drivers: usize,
    /// Trackers, each following one driver (`trackers <= drivers`).
    pub trackers: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Ping -> tracker latency and delivery, measured after warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct TrackReport {
    pub drivers: usize,
    pub trackers: usize,
    /// Fixes of tracked drivers sent during the window.
    pub sent: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub delivery_ratio: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// Wall clock in fractional milliseconds (the pings carry their send time; harness and server share the clock).
fn now_ms_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `drivers` drivers ping at 1 Hz (see [`drive_fleet`]); `trackers` sockets each follow one of them and time
/// every fix from its `ts` (the send time, in ms) to its arrival. A fix belongs to the measured window by its
/// `ts`, on both sides of the count, so what is delivered is a part of what was sent.
pub async fn track(plan: &TrackPlan) -> anyhow::Result<TrackReport> {
    let tracked = plan.trackers.min(plan.drivers);
    let start = Instant::now();
    let stop_at = start + plan.warmup + plan.duration;
    let from_ms = crate::now_ms() + plan.warmup.as_millis() as i64;
    let window = from_ms..from_ms + plan.duration.as_millis() as i64;
    let in_window = move |ts: i64| window.contains(&ts);
    // Trackers first, so their joins are done before the warm-up ends.
    let mut listeners = Vec::new();
    for i in 0..tracked {
        let url = format!("{}/ws/track/trk-{i}", plan.url.replacen("http", "ws", 1));
        let request = keyed_request(&url, &plan.key)?;
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(small_buffers()), false).await?;
        let in_window = in_window.clone();
        listeners.push(tokio::spawn(async move {
            let (_, mut incoming) = socket.split();
            let (mut latencies, mut delivered, mut duplicates) = (Vec::new(), 0u64, 0u64);
            let mut seen = std::collections::HashSet::new();
            let deadline = stop_at + Duration::from_millis(500);
            while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline.into(), incoming.next()).await {
                let Message::Text(text) = message else { continue };
                let Ok(TrackMsg::Fix(fix)) = serde_json::from_str(&text) else { continue };
                let arrived = now_ms_f64();
                if !in_window(fix.ts) {
                    continue;
                }
                if !seen.insert(fix.ts) {
                    duplicates += 1;
                    continue;
                }
                delivered += 1;
                latencies.push((arrived - fix.ts as f64).max(0.0));
            }
            (latencies, delivered, duplicates)
        }));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sent = 0u64;
    let fleet = drive_fleet(
        &plan.url,
        &plan.key,
        Fleet::new("trk", plan.drivers, 0.0, 7),
        plan.drivers,
        stop.clone(),
        |batch| {
            let is_tracked = |p: &&Ping| {
                in_window(p.ts)
                    && p.driver_id
                        .strip_prefix("trk-")
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n < tracked)
            };
            sent += batch.iter().filter(is_tracked).count() as u64;
        },
    );
    {
        let mut fleet = std::pin::pin!(fleet);
        tokio::select! {
            result = &mut fleet => result?,
            // The fleet stops between batches, not in the middle of one: a batch the server may already have
            // applied is always counted as sent.
            _ = tokio::time::sleep_until(stop_at.into()) => {
                stop.cancel();
                fleet.await?;
            }
        }
    }
    let mut latencies = Vec::new();
    let (mut delivered, mut duplicates) = (0, 0);
    for listener in listeners {
        let (l, d, dup) = listener.await?;
        latencies.extend(l);
        delivered += d;
        duplicates += dup;
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&latencies, p);
    Ok(TrackReport {
        drivers: plan.drivers,
        trackers: tracked,
        sent,
        delivered,
        duplicates,
        delivery_ratio: if sent == 0 { 0.0 } else { delivered as f64 / sent as f64 },
        latency_ms_p50: pct(0.50),
        latency_ms_p95: pct(0.95),
        latency_ms_p99: pct(0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(f64::NAN),
    })
}
