//! `fanout`: heat viewers watch the whole city while a fleet moves; per tick, the spread from the first viewer's
//! arrival to the last, the bytes of snapshots and deltas, and the server's memory per viewer.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use protocol::{
    geo::BBox,
    heat::{HeatClientMsg, HeatSubscription, Layer, DEFAULT_WINDOW_MIN},
};
use serde::Serialize;
use sim::Fleet;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::small_buffers,
    fleet::drive_fleet,
    stats::percentile,
    system::{process_usage, rss_kib},
};

#[derive(Debug, Clone)]
pub struct FanoutPlan {
    pub url: String,
    /// The server's admin key (see [`crate::ingest::IngestPlan::key`]).
    pub key: String,
    /// Heat viewers, all subscribed to the whole city.
    pub viewers: usize,
    /// Drivers pinging once a second each while the viewers watch.
    pub drivers: usize,
    /// How many of them move (the others are parked): few moving drivers = few changed cells per tick.
    pub moving: usize,
    /// Geohash precision the viewers ask for (6 = the homepage at city zoom).
    pub precision: u8,
    /// The server whose memory is read (its pid), when the harness started it.
    pub server_pid: Option<u32>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// How a tick's frames reached the viewers, and what they cost, measured after warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub viewers: usize,
    pub drivers: usize,
    pub moving: usize,
    /// Ticks seen in the window.
    pub ticks: usize,
    /// Viewer-ticks received / (ticks x viewers).
    pub delivery_ratio: f64,
    /// Per tick: last viewer's arrival - first viewer's arrival.
    pub spread_ms_p50: f64,
    pub spread_ms_p99: f64,
    pub spread_ms_max: f64,
    /// Bytes of the snapshot each viewer got on subscribing (mean over viewers).
    pub snapshot_bytes: f64,
    /// Bytes of one tick's delta frames to one viewer (median and 99th percentile over viewer-ticks).
    pub delta_bytes_p50: f64,
    pub delta_bytes_p99: f64,
    /// Median delta bytes / snapshot bytes.
    pub delta_to_snapshot: f64,
    /// Cells a tick changed for one viewer (median over viewer-ticks).
    pub delta_cells_p50: f64,
    /// Cells in the snapshot (mean over viewers).
    pub snapshot_cells: f64,
    /// Snapshots sent again because a viewer fell behind.
    pub resyncs: u64,
    /// Server RSS growth over the viewers, per viewer (KiB), at the end of the window; `None` without a pid.
    pub server_rss_kib_per_viewer: Option<f64>,
    /// Server CPU (user + system) over the measured window divided by the viewer-ticks delivered in it (a tick's
    /// frames to one viewer), in microseconds: what one viewer costs per frame.
    pub server_cpu_us_per_viewer_frame: Option<f64>,
    /// Viewer-ticks delivered in the measured window.
    pub viewer_frames: u64,
}

/// The city the fan-out viewers watch: the demo fleet's Lagos, with a margin.
const CITY: BBox = BBox { south: 6.35, west: 3.25, north: 6.70, east: 3.60 };

/// What one viewer saw.
#[derive(Default)]
struct ViewerLog {
    snapshots: Vec<(usize, usize)>,
    /// Per tick: seq, first frame's arrival (ms), bytes, cells.
    ticks: Vec<(u64, f64, usize, usize)>,
}

/// The type, seq and cell count of a heat frame, read without decoding it: with tens of thousands of viewers in
/// one process, a full JSON parse per frame would make the harness, not the server, what the spread measures.
fn frame_head(text: &str) -> Option<(&str, Option<u64>, usize)> {
    let after = |key: &str| text.find(key).map(|i| &text[i + key.len()..]);
    let kind = after("\"type\":\"")?.split('"').next()?;
    let seq = after("\"seq\":").and_then(|rest| {
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..end].parse().ok()
    });
    // Each cell is `["geohash",n]`; nothing else in a frame opens an array with a string.
    Some((kind, seq, text.matches("[\"").count()))
}

/// `viewers` heat sockets subscribe to the city while `drivers` drivers move; every viewer logs when each tick's
/// frames arrive and their size. Reports the per-tick spread (first to last viewer), snapshot vs delta bytes and
/// the server's memory per viewer.
pub async fn fanout(plan: &FanoutPlan) -> anyhow::Result<FanoutReport> {
    let stop = tokio_util::sync::CancellationToken::new();
    let fleet = Fleet::new("fan", plan.drivers, 0.0, 11);
    let fleet = tokio::spawn({
        let (url, key, stop, moving) = (plan.url.clone(), plan.key.clone(), stop.clone(), plan.moving);
        async move { drive_fleet(&url, &key, fleet, moving, stop, |_| {}).await }
    });
    // Let the fleet fill the map before taking the memory baseline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = plan.server_pid.and_then(rss_kib);
    let url = format!("{}/ws/heat", plan.url.replacen("http", "ws", 1));
    let subscribe = serde_json::to_string(&HeatClientMsg::Subscribe(HeatSubscription {
        layer: Layer::Drivers,
        window_min: DEFAULT_WINDOW_MIN,
        precision: Some(plan.precision),
        zoom: None,
        bbox: CITY,
        since: None,
    }))?;
    // Connect in waves (the listen backlog is finite); each viewer is subscribed once its snapshot is in.
    let window = Arc::new(std::sync::OnceLock::<(Instant, Instant)>::new());
    let mut viewers = Vec::with_capacity(plan.viewers);
    let mut ready = Vec::with_capacity(plan.viewers);
    for wave in (0..plan.viewers).collect::<Vec<_>>().chunks(256) {
        let mut joins = Vec::new();
        for _ in wave {
            let (url, subscribe) = (url.clone(), subscribe.clone());
            joins.push(tokio::spawn(async move {
                let (mut socket, _) =
                    tokio_tungstenite::connect_async_with_config(url, Some(small_buffers()), false).await?;
                socket.send(Message::Text(subscribe.into())).await?;
                anyhow::Ok(socket)
            }));
        }
        for join in joins {
            let socket = join.await??;
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.push(ready_rx);
            viewers.push(tokio::spawn(watch_heat(socket, window.clone(), ready_tx)));
        }
    }
    for r in ready {
        r.await?;
    }
    let measure_from = Instant::now() + plan.warmup;
    let stop_at = measure_from + plan.duration;
    window.set((measure_from, stop_at)).expect("set once");
    let cpu_seconds = || plan.server_pid.and_then(process_usage).map(|(seconds, _)| seconds);
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = cpu_seconds();
    tokio::time::sleep_until(stop_at.into()).await;
    let cpu_window = cpu_seconds().zip(cpu_from).map(|(to, from)| to - from);
    let rss_after = plan.server_pid.and_then(rss_kib);
    stop.cancel();
    fleet.await??;
    let mut logs = Vec::with_capacity(viewers.len());
    for viewer in viewers {
        logs.push(viewer.await?);
    }
    Ok(fanout_report(plan, &logs, rss_before.zip(rss_after), cpu_window))
}

/// One viewer: records its snapshots and, inside the window, when each tick's frames arrived and their size.
async fn watch_heat(
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    window: Arc<std::sync::OnceLock<(Instant, Instant)>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> ViewerLog {
    let mut log = ViewerLog::default();
    let mut ready = Some(ready);
    let mut incoming = socket;
    loop {
        // Until the window is set, read without a deadline; then until its end.
        let next = match window.get() {
            Some(&(_, stop_at)) => match tokio::time::timeout_at(stop_at.into(), incoming.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => incoming.next().await,
        };
        let Some(Ok(Message::Text(text))) = next else {
            if next.is_none() || matches!(next, Some(Err(_))) {
                break;
            }
            continue;
        };
        let arrived = Instant::now();
        let Some((kind, seq, cells)) = frame_head(&text) else { continue };
        match kind {
            "snapshot" => {
                log.snapshots.push((text.len(), cells));
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            "delta" => {
                let Some(&(measure_from, _)) = window.get() else { continue };
                if arrived < measure_from {
                    continue;
                }
                let seq = seq.unwrap_or(0);
                match log.ticks.last_mut() {
                    Some(last) if last.0 == seq => {
                        last.2 += text.len();
                        last.3 += cells;
                    }
                    _ => log.ticks.push((seq, ms_since(arrived), text.len(), cells)),
                }
            }
            _ => {}
        }
    }
    log
}

/// Milliseconds from a process-wide origin to `t` (all viewers share it, so arrivals compare).
fn ms_since(t: Instant) -> f64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    t.saturating_duration_since(*ORIGIN.get_or_init(Instant::now)).as_secs_f64() * 1000.0
}

fn fanout_report(
    plan: &FanoutPlan,
    logs: &[ViewerLog],
    rss: Option<(u64, u64)>,
    cpu_window: Option<f64>,
) -> FanoutReport {
    let mut per_tick: std::collections::BTreeMap<u64, (f64, f64, usize)> = Default::default();
    let (mut delta_bytes, mut delta_cells) = (Vec::new(), Vec::new());
    for log in logs {
        for &(seq, at, bytes, cells) in &log.ticks {
            let entry = per_tick.entry(seq).or_insert((f64::MAX, f64::MIN, 0));
            entry.0 = entry.0.min(at);
            entry.1 = entry.1.max(at);
            entry.2 += 1;
            delta_bytes.push(bytes as f64);
            delta_cells.push(cells as f64);
        }
    }
    // The first and last ticks of the window may be cut by its edges: only the ticks between them count.
    let whole: Vec<_> = per_tick.values().skip(1).collect();
    let whole = &whole[..whole.len().saturating_sub(1)];
    let mut spreads: Vec<f64> = whole.iter().map(|t| t.1 - t.0).collect();
    spreads.sort_by(f64::total_cmp);
    delta_bytes.sort_by(f64::total_cmp);
    delta_cells.sort_by(f64::total_cmp);
    let first = |log: &ViewerLog| log.snapshots.first().copied().unwrap_or_default();
    let mean = |f: &dyn Fn(&ViewerLog) -> f64| logs.iter().map(f).sum::<f64>() / logs.len().max(1) as f64;
    let snapshot_bytes = mean(&|l| first(l).0 as f64);
    let received: usize = whole.iter().map(|t| t.2).sum();
    let viewer_frames: u64 = logs.iter().map(|l| l.ticks.len() as u64).sum();
    FanoutReport {
        viewers: logs.len(),
        drivers: plan.drivers,
        moving: plan.moving,
        ticks: whole.len(),
        delivery_ratio: received as f64 / (whole.len() * logs.len()).max(1) as f64,
        spread_ms_p50: percentile(&spreads, 0.50),
        spread_ms_p99: percentile(&spreads, 0.99),
        spread_ms_max: spreads.last().copied().unwrap_or(f64::NAN),
        snapshot_bytes,
        delta_bytes_p50: percentile(&delta_bytes, 0.50),
        delta_bytes_p99: percentile(&delta_bytes, 0.99),
        delta_to_snapshot: percentile(&delta_bytes, 0.50) / snapshot_bytes,
        delta_cells_p50: percentile(&delta_cells, 0.50),
        snapshot_cells: mean(&|l| first(l).1 as f64),
        resyncs: logs.iter().map(|l| l.snapshots.len().saturating_sub(1) as u64).sum(),
        server_rss_kib_per_viewer: rss.map(|(before, after)| after.saturating_sub(before) as f64 / logs.len() as f64),
        server_cpu_us_per_viewer_frame: cpu_window.map(|s| s * 1e6 / viewer_frames.max(1) as f64),
        viewer_frames,
    }
}
