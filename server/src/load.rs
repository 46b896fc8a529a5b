//! The load harness's scenarios, as a library: `pulsemap-load` runs them against a server it starts (so it can
//! read the server's CPU and memory), and the test suite runs each once at a tiny size so they cannot rot.
//!
//! Everything stays on loopback and is bounded in time and connections. Counts are confirmed end to end: a
//! scenario waits for the server's `pings_aggregated_total` to reach what it accepted, and reports the
//! difference as lost.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use app::protocol::{BatchReport, DriverClientMsg, DriverServerMsg, Ping};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::{fleet::Fleet, now_ms};

/// How pings reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `POST /api/pings` with JSON arrays.
    Http,
    /// `/ws/driver` with `batch` messages, each acknowledged.
    Ws,
}

#[derive(Debug, Clone)]
pub struct IngestPlan {
    /// `http://host:port` of the server.
    pub url: String,
    /// The server's admin key: it sends pings for every driver and reads `/metrics`.
    pub key: String,
    pub transport: Transport,
    /// Distinct drivers the pings come from (spread so no driver exceeds the per-driver rate limit).
    pub drivers: usize,
    /// Pings per request or message.
    pub batch: usize,
    /// Requests or sockets in flight at once.
    pub connections: usize,
    /// Pings per second to aim for; 0 = as fast as the server takes them.
    pub rate: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What an ingest run measured (after warm-up).
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub transport: Transport,
    pub seconds: f64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Batches the server answered with 503 / `queue_full` (sent again after a pause: back-pressure, not loss).
    pub refused_busy: u64,
    /// Confirmed by the server's own count once its queue drained.
    pub aggregated: u64,
    /// Accepted but never aggregated: must be 0.
    pub lost: i64,
    pub sent_per_sec: f64,
    pub accepted_per_sec: f64,
}

/// Shared counters of a run.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    busy: AtomicU64,
}

/// Pre-built request bodies: generating and serialising pings is not what is measured.
fn bodies(plan: &IngestPlan) -> Vec<Vec<Ping>> {
    let mut fleet = Fleet::new("load", plan.drivers, 0.0, 42);
    let now = now_ms();
    let mut pings = Vec::new();
    // A few positions per driver, so cells change as in a real fleet.
    for step in 0..4 {
        pings.extend(fleet.step(2.0, now + step));
    }
    pings.chunks(plan.batch.max(1)).map(<[Ping]>::to_vec).collect()
}

/// An HTTP client that sends `key` with every request.
pub fn keyed_client(key: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().default_headers(headers))
}

/// A WebSocket handshake to `url` that carries `key`.
fn keyed_request(url: &str, key: &str) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {key}").parse()?);
    Ok(request)
}

/// Reads one counter from `/metrics`.
pub async fn server_metric(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0))
}

/// Sends pings flat out (or at `rate`) for warm-up + duration, then confirms the server aggregated every one it
/// accepted.
pub async fn ingest(plan: &IngestPlan) -> anyhow::Result<IngestReport> {
    let bodies = Arc::new(bodies(plan));
    let counts = Arc::new(Counts::default());
    let client = keyed_client(&plan.key)?.pool_max_idle_per_host(plan.connections).build()?;
    let aggregated_before = server_metric(&client, &plan.url, "pulsemap_pings_aggregated_total").await?;
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let stop_at = measure_from + plan.duration;
    let measured = Arc::new(Counts::default());
    let mut workers = Vec::new();
    for worker in 0..plan.connections.max(1) {
        let (bodies, counts, measured, client, plan) =
            (bodies.clone(), counts.clone(), measured.clone(), client.clone(), plan.clone());
        workers.push(tokio::spawn(async move {
            // Each worker's share of the target rate, in batches per second.
            let pace = (plan.rate > 0).then(|| {
                let per_worker = plan.rate as f64 / plan.connections.max(1) as f64;
                Duration::from_secs_f64(plan.batch as f64 / per_worker)
            });
            let turns = Turns::new(worker, &plan, &bodies, &counts, &measured, pace, measure_from, stop_at);
            let result = match plan.transport {
                Transport::Http => http_worker(&plan, &client, turns).await,
                Transport::Ws => ws_worker(&plan, turns).await,
            };
            if let Err(error) = result {
                eprintln!("worker {worker}: {error:#}");
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    // Every accepted ping must show up in the server's own count once its queue drains.
    let accepted_total = counts.accepted.load(Relaxed) as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut aggregated;
    loop {
        aggregated = server_metric(&client, &plan.url, "pulsemap_pings_aggregated_total").await? - aggregated_before;
        if aggregated >= accepted_total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = plan.duration.as_secs_f64();
    let m = |c: &AtomicU64| c.load(Relaxed);
    Ok(IngestReport {
        transport: plan.transport,
        seconds,
        sent: m(&measured.sent),
        accepted: m(&measured.accepted),
        rejected: m(&measured.rejected),
        refused_busy: m(&measured.busy),
        aggregated: aggregated as u64,
        lost: accepted_total as i64 - aggregated as i64,
        sent_per_sec: m(&measured.sent) as f64 / seconds,
        accepted_per_sec: m(&measured.accepted) as f64 / seconds,
    })
}

/// One worker's share of a run: its pace, its turn through the pre-built batches, and its counts.
struct Turns<'a> {
    bodies: &'a [Vec<Ping>],
    counts: &'a Counts,
    measured: &'a Counts,
    /// Time between two of this worker's batches; `None` = flat out.
    pace: Option<Duration>,
    next_send: Instant,
    measure_from: Instant,
    stop_at: Instant,
    /// Index of the next batch; workers interleave by stepping over each other's.
    next: usize,
    step: usize,
}

impl<'a> Turns<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        worker: usize,
        plan: &IngestPlan,
        bodies: &'a [Vec<Ping>],
        counts: &'a Counts,
        measured: &'a Counts,
        pace: Option<Duration>,
        measure_from: Instant,
        stop_at: Instant,
    ) -> Turns<'a> {
        let step = plan.connections.max(1);
        Turns { bodies, counts, measured, pace, next_send: Instant::now(), measure_from, stop_at, next: worker, step }
    }

    /// Waits for this worker's next slot and returns the index of the batch to send, or `None` when time is up.
    async fn next(&mut self) -> Option<usize> {
        if let Some(pace) = self.pace {
            tokio::time::sleep_until(self.next_send.into()).await;
            self.next_send += pace;
        }
        if Instant::now() >= self.stop_at {
            return None;
        }
        let index = self.next % self.bodies.len();
        self.next += self.step;
        Some(index)
    }

    /// Records an answer: always in the run's totals, and in the measured window once warm-up is over.
    fn record(&self, sent: u64, accepted: u64, rejected: u64, busy: u64) {
        let in_window = Instant::now() >= self.measure_from;
        for c in std::iter::once(self.counts).chain(in_window.then_some(self.measured)) {
            c.sent.fetch_add(sent, Relaxed);
            c.accepted.fetch_add(accepted, Relaxed);
            c.rejected.fetch_add(rejected, Relaxed);
            c.busy.fetch_add(busy, Relaxed);
        }
    }
}

async fn http_worker(plan: &IngestPlan, client: &reqwest::Client, mut turns: Turns<'_>) -> anyhow::Result<()> {
    let encoded: Vec<Vec<u8>> = turns.bodies.iter().map(|b| serde_json::to_vec(b).expect("pings serialise")).collect();
    let url = format!("{}/api/pings", plan.url);
    while let Some(i) = turns.next().await {
        let n = turns.bodies[i].len() as u64;
        let response =
            client.post(&url).header("content-type", "application/json").body(encoded[i].clone()).send().await?;
        if response.status().as_u16() == 503 {
            turns.record(0, 0, 0, 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let report: BatchReport = response.json().await?;
        turns.record(n, u64::from(report.accepted), report.rejected.len() as u64, 0);
    }
    Ok(())
}

async fn ws_worker(plan: &IngestPlan, mut turns: Turns<'_>) -> anyhow::Result<()> {
    let url = format!("{}/ws/driver", plan.url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(keyed_request(&url, &plan.key)?).await?;
    let mut seq = 0;
    while let Some(i) = turns.next().await {
        let pings = turns.bodies[i].clone();
        let n = pings.len() as u64;
        seq += 1;
        let text = serde_json::to_string(&DriverClientMsg::Batch { seq: Some(seq), pings })?;
        socket.send(Message::Text(text.into())).await?;
        // Read until this message's ack (errors for single pings come first; a whole-message error means busy).
        let mut rejected = 0;
        let accepted = loop {
            let Some(message) = socket.next().await else { anyhow::bail!("the server closed the socket") };
            let Message::Text(text) = message? else { continue };
            match serde_json::from_str::<DriverServerMsg>(&text)? {
                DriverServerMsg::Ack { seq: Some(s), accepted } if s == seq => break Some(u64::from(accepted)),
                DriverServerMsg::Error { seq: Some(s), index: None, .. } if s == seq => break None,
                DriverServerMsg::Error { .. } => rejected += 1,
                _ => {}
            }
        };
        match accepted {
            Some(accepted) => turns.record(n, accepted, rejected, 0),
            None => turns.record(0, 0, 0, 1),
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// What the harness reports about the machine with every result.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
}

impl Machine {
    pub fn here() -> Machine {
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: memory_kib / 1024.0 / 1024.0,
        }
    }
}

/// CPU time (user + system, seconds) and peak RSS (KiB) of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    Some((ticks / 100.0, hwm))
}

#[derive(Debug, Clone)]
pub struct TrackPlan {
    pub url: String,
    /// The server's admin key (see [`IngestPlan::key`]).
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

/// Slices of each second the fleet's pings are spread over: every driver pings once a second at its own phase,
/// so the server sees a steady stream (a few pings every 10 ms), not one burst per second.
const FLEET_SLICES_PER_SEC: usize = 100;

/// Drives `fleet` over `POST /api/pings`, every driver once a second (each at its own phase, in
/// [`FLEET_SLICES_PER_SEC`] batches), until `stop` is cancelled. Only the first `moving` drivers move; the
/// others are parked (they keep pinging where they are). Each ping carries its send time as `ts`; `on_sent` sees
/// every batch the server took.
async fn drive_fleet(
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

/// `drivers` drivers ping at 1 Hz (see [`drive_fleet`]); `trackers` sockets each follow one of them and time
/// every fix from its `ts` (the send time, in ms) to its arrival.
pub async fn track(plan: &TrackPlan) -> anyhow::Result<TrackReport> {
    let tracked = plan.trackers.min(plan.drivers);
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let stop_at = measure_from + plan.duration;
    // Trackers first, so their joins are done before the warm-up ends.
    let mut listeners = Vec::new();
    for i in 0..tracked {
        let url = format!("{}/ws/track/trk-{i}", plan.url.replacen("http", "ws", 1));
        let request = keyed_request(&url, &plan.key)?;
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(small_buffers()), false).await?;
        listeners.push(tokio::spawn(async move {
            let (_, mut incoming) = socket.split();
            let (mut latencies, mut delivered, mut duplicates) = (Vec::new(), 0u64, 0u64);
            let mut seen = std::collections::HashSet::new();
            let deadline = stop_at + Duration::from_millis(500);
            while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline.into(), incoming.next()).await {
                let Message::Text(text) = message else { continue };
                let Ok(app::protocol::TrackMsg::Fix(fix)) = serde_json::from_str(&text) else { continue };
                let arrived = now_ms_f64();
                if Instant::now() < measure_from || fix.ts <= 0 {
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
            if Instant::now() >= measure_from {
                let is_tracked = |p: &&Ping| {
                    p.driver_id.strip_prefix("trk-").and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n < tracked)
                };
                sent += batch.iter().filter(is_tracked).count() as u64;
            }
        },
    );
    tokio::select! {
        result = fleet => result?,
        _ = tokio::time::sleep_until(stop_at.into()) => stop.cancel(),
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

/// The `p` quantile (0..=1) of sorted values, NaN when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Client sockets with small buffers: tungstenite's 128 KiB default read buffer would make 20,000 harness
/// sockets cost 2.5 GiB.
fn small_buffers() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

#[derive(Debug, Clone)]
pub struct FanoutPlan {
    pub url: String,
    /// The server's admin key (see [`IngestPlan::key`]).
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
}

/// The city the fan-out viewers watch: the demo fleet's Lagos, with a margin.
const CITY: app::protocol::BBox = app::protocol::BBox { south: 6.35, west: 3.25, north: 6.70, east: 3.60 };

/// What one viewer saw.
#[derive(Default)]
struct ViewerLog {
    snapshots: Vec<(usize, usize)>,
    /// Per tick: seq, first frame's arrival (ms), bytes, cells.
    ticks: Vec<(u64, f64, usize, usize)>,
}

/// The type, seq and cell count of a heat frame, read without decoding it: with 20,000 viewers in one process,
/// a full JSON parse per frame would make the harness, not the server, what the spread measures.
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

/// Resident memory (KiB) of a process now.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
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
    let subscribe = serde_json::to_string(&app::protocol::HeatClientMsg::Subscribe(app::protocol::HeatSubscription {
        layer: app::protocol::Layer::Drivers,
        window_min: app::protocol::DEFAULT_WINDOW_MIN,
        precision: Some(plan.precision),
        zoom: None,
        bbox: CITY,
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
    tokio::time::sleep_until(stop_at.into()).await;
    let rss_after = plan.server_pid.and_then(rss_kib);
    stop.cancel();
    fleet.await??;
    let mut logs = Vec::with_capacity(viewers.len());
    for viewer in viewers {
        logs.push(viewer.await?);
    }
    Ok(fanout_report(plan, &logs, rss_before.zip(rss_after)))
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

fn fanout_report(plan: &FanoutPlan, logs: &[ViewerLog], rss: Option<(u64, u64)>) -> FanoutReport {
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
    }
}
