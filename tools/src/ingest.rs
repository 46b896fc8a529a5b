//! `ingest`: pings in as fast as the server takes them (or at a set rate), over `POST /api/pings` or `/ws/driver`
//! batches; counts confirmed end to end (the server's `pulsemap_pings_aggregated_total` must reach every ping it
//! accepted, and the difference is reported as lost).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use protocol::{
    batch::BatchReport,
    driver::{DriverClientMsg, DriverServerMsg, Ping},
};
use serde::Serialize;
use sim::Fleet;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{keyed_client, keyed_request, server_metric},
    now_ms,
};

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
    /// Every batch stamped with the time it is sent (HTTP only): each ping is then a new fix, as history must
    /// keep it, not the same one again. Costs the harness a serialisation per batch.
    pub fresh_ts: bool,
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
        let body = if plan.fresh_ts {
            let now = now_ms();
            let pings: Vec<Ping> = turns.bodies[i].iter().map(|p| Ping { ts: now, ..p.clone() }).collect();
            serde_json::to_vec(&pings).expect("pings serialise")
        } else {
            encoded[i].clone()
        };
        let response = client.post(&url).header("content-type", "application/json").body(body).send().await?;
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
