//! `pulsemap-load`: starts a pulsemap server on loopback, drives a scenario against it, and prints the figures
//! (with the machine, the server's CPU and peak memory) as a table and as JSON.
//!
//! Scenarios: `ingest`, `track`, `fanout`, `dispatch`, `history`. Everything is bounded in time and connections and stays on 127.0.0.1.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use serde_json::json;
use tools::{
    dispatch::{dispatch, DispatchPlan},
    fanout::{fanout, FanoutPlan},
    history::{time_replay, watch_writer, write_rates},
    ingest::{ingest, IngestPlan, Transport},
    launch::Launched,
    postgres::{unique_schema, PgServer},
    system::{process_usage, raise_open_files, Machine},
    track::{track, TrackPlan},
};

#[derive(Debug, Parser)]
#[command(name = "pulsemap-load", version, about = "Load harness for pulsemap (loopback only)")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// The server binary to start (default: `pulsemap` next to this binary).
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Run the server on this Redis instead of the embedded store (a fresh key prefix per run).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// Run the server on this Redis Cluster (seed `host:port`s), or `own` for a cluster of three masters this run
    /// starts and removes; the result then has each master's commands and the busiest/quietest ratio.
    #[arg(long, global = true, conflicts_with = "redis_url")]
    redis_cluster: Option<String>,
    /// Extra argument for the server (repeat for several).
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Where to write the JSON result.
    #[arg(long, global = true, default_value = "target/load-results.json")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Pings in as fast as the server takes them (or at --rate): pings/s sent, accepted, aggregated, lost.
    Ingest {
        #[arg(long, value_enum, default_value = "http")]
        transport: Transport,
        #[arg(long, default_value_t = 100_000)]
        drivers: usize,
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Target pings per second; 0 = flat out.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 2.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
    },
    /// Drivers at 1 Hz, trackers following one driver each: ping -> tracker latency, delivery, duplicates.
    Track {
        #[arg(long, default_value_t = 10_000)]
        drivers: usize,
        #[arg(long, default_value_t = 10_000)]
        trackers: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
    },
    /// Drivers on their own sockets, orders placed at a steady rate: order placed -> offer on a driver's socket
    /// latency, offers per order, double assignments (must be 0).
    Dispatch {
        #[arg(long, default_value_t = 10_000)]
        drivers: usize,
        #[arg(long, default_value_t = 100.0)]
        orders_per_sec: f64,
        #[arg(long, default_value_t = 3.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 15.0)]
        duration_secs: f64,
    },
    /// History: rows/s into the store while live ingest runs flat out (beside the same ingest without
    /// history), the writer's backlog over time, and the replay of an hour of a fleet (first frame, whole).
    History {
        #[arg(long, value_enum, default_value = "sqlite")]
        store: HistoryStore,
        /// PostgreSQL for `--store postgres` (default: DATABASE_URL, else a throwaway cluster).
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        drivers: usize,
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Pings/s offered in both ingest runs (0: as fast as the server takes them). At a rate the writer
        /// sustains, the two runs show what history costs the live path there.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
        /// The fleet whose history is replayed, pinging once a second for `replay_minutes`.
        #[arg(long, default_value_t = 1_000)]
        replay_drivers: usize,
        #[arg(long, default_value_t = 60.0)]
        replay_minutes: f64,
        #[arg(long, default_value_t = 6)]
        precision: u8,
    },
    /// Heat viewers watching the whole city at one frame a second while a fleet moves: per-tick spread from
    /// the first to the last viewer, snapshot vs delta bytes, server memory per viewer.
    Fanout {
        /// Capped by the open-files limit of this process and the server's (each holds one socket per viewer).
        #[arg(long, default_value_t = 20_000)]
        viewers: usize,
        #[arg(long, default_value_t = 2_000)]
        drivers: usize,
        /// How many of the drivers move (default: all); the rest are parked, still pinging.
        #[arg(long)]
        moving: Option<usize>,
        #[arg(long, default_value_t = 6)]
        precision: u8,
        /// The server's tick: one frame per viewer per tick.
        #[arg(long, default_value_t = 1_000)]
        tick_ms: u64,
        #[arg(long, default_value_t = 3.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 20.0)]
        duration_secs: f64,
    },
}

/// Where the `history` scenario keeps history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HistoryStore {
    Sqlite,
    Postgres,
}

/// Starts the server for `args`' scenario: the binary beside this one unless told otherwise, on Redis when
/// asked (under a fresh key prefix), at one frame a second for `fanout`.
fn start_server(args: &Args) -> anyhow::Result<Launched> {
    let bin = server_bin(args)?;
    let mut extra = Vec::new();
    let shared = match (&args.redis_url, &args.redis_cluster) {
        (Some(url), _) => Some(("--redis-url", url.clone())),
        (None, Some(seeds)) => Some(("--redis-cluster", seeds.clone())),
        _ => None,
    };
    if let Some((flag, at)) = shared {
        extra.extend([flag.into(), at, "--redis-prefix".into(), format!("load-{:08x}", fastrand::u32(..))]);
    }
    if let Scenario::Fanout { tick_ms, .. } = &args.scenario {
        extra.extend(["--tick-ms".into(), tick_ms.to_string()]);
    }
    // The live scenarios measure the live paths, comparable from run to run; `history` measures what keeping
    // history costs them. `--server-arg --data-dir ...` (or `--database-url ...`) keeps it here too.
    let keeps_history = args.server_args.iter().any(|a| a == "--data-dir" || a == "--database-url");
    if !keeps_history {
        extra.push("--no-history".into());
    }
    extra.extend(args.server_args.iter().cloned());
    Launched::start(&bin, &extra)
}

/// Runs a scenario and reads what it cost the server: CPU (% of one core over the run) and peak RSS (KiB).
async fn measure_server<T>(
    pid: u32,
    scenario: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64, u64)> {
    let cpu_before = process_usage(pid).map_or(0.0, |u| u.0);
    let started = Instant::now();
    let report = scenario.await?;
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, peak_rss_kib) = process_usage(pid).unwrap_or((cpu_before, 0));
    Ok((report, (cpu_after - cpu_before) / wall * 100.0, peak_rss_kib))
}

/// File descriptors each process keeps for itself besides the viewers' sockets (listener, epoll, stdio, pools).
const SPARE_FDS: usize = 64;

fn server_bin(args: &Args) -> anyhow::Result<PathBuf> {
    Ok(match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("pulsemap"),
    })
}

/// The `history` scenario: three servers one after the other on the same store settings (ingest without
/// history, ingest with it, replay of a filled hour).
async fn history_scenario(args: &Args, machine: Machine) -> anyhow::Result<serde_json::Value> {
    let Scenario::History {
        store,
        database_url,
        drivers,
        batch,
        connections,
        rate,
        warmup_secs,
        duration_secs,
        replay_drivers,
        replay_minutes,
        precision,
    } = &args.scenario
    else {
        unreachable!("called for the history scenario")
    };
    let bin = server_bin(args)?;
    // The store: a fresh directory, or a fresh schema of a PostgreSQL.
    let pg = match (store, database_url) {
        (HistoryStore::Postgres, None) => Some(PgServer::start()?),
        _ => None,
    };
    // A fresh store for each phase: the replay reads only the filled hour.
    let mut data_dirs = Vec::new();
    let mut fresh_store = || -> Vec<String> {
        match store {
            HistoryStore::Sqlite => {
                let dir = std::env::temp_dir().join(format!("pulsemap-load-history-{:08x}", fastrand::u32(..)));
                data_dirs.push(dir.clone());
                vec!["--data-dir".into(), dir.display().to_string()]
            }
            HistoryStore::Postgres => {
                let url = database_url.clone().or_else(|| pg.as_ref().map(|p| p.url().to_string())).expect("a url");
                vec!["--database-url".into(), url, "--database-schema".into(), unique_schema("load")]
            }
        }
    };
    let (store_args, replay_store) = (fresh_store(), fresh_store());
    let with = |extra: &[String]| -> Vec<String> {
        let mut all: Vec<String> = extra.to_vec();
        all.extend(args.server_args.iter().cloned());
        all
    };
    let plan = |server: &Launched| IngestPlan {
        url: server.url.clone(),
        key: server.key.clone(),
        transport: Transport::Http,
        drivers: *drivers,
        batch: *batch,
        connections: *connections,
        rate: *rate,
        warmup: Duration::from_secs_f64(*warmup_secs),
        duration: Duration::from_secs_f64(*duration_secs),
        fresh_ts: true,
    };

    println!("pulsemap-load history: {} cores, {:.1} GiB; store {store:?}", machine.cores, machine.memory_gib);
    // 1. The same ingest with no history: the baseline.
    let baseline = {
        let server = Launched::start(&bin, &with(&["--no-history".into()]))?;
        let (report, cpu, _) = measure_server(server.pid(), ingest(&plan(&server))).await?;
        (report, cpu)
    };
    // 2. Ingest with history, the writer watched until its backlog is empty again.
    let server = Launched::start(&bin, &with(&store_args))?;
    let client = tools::client::keyed_client(&server.key)?.build()?;
    let loaded = plan(&server);
    let run = measure_server(server.pid(), ingest(&loaded));
    let (ran, samples) =
        watch_writer(&client, &server.url, Duration::from_millis(200), Duration::from_secs(300), run).await?;
    let (with_history, cpu, peak_rss_kib) = ran?;
    let (peak_rows_per_sec, sustained_rows_per_sec) = write_rates(&samples, 2.0);
    let last = samples.last().copied().expect("samples");
    drop(server);

    // 3. An hour of a fleet, written straight into the store, then replayed by a server on it.
    let fill_bin = bin.with_file_name("pulsemap-history-fill");
    let mut fill_args = replay_store.clone();
    fill_args.extend([
        "--fill-drivers".into(),
        replay_drivers.to_string(),
        "--fill-minutes".into(),
        replay_minutes.to_string(),
    ]);
    let filled = std::process::Command::new(&fill_bin).args(&fill_args).output()?;
    anyhow::ensure!(filled.status.success(), "the fill failed: {}", String::from_utf8_lossy(&filled.stderr));
    let fill: serde_json::Value = serde_json::from_slice(&filled.stdout)?;
    let (from, to) = (fill["from_ms"].as_i64().unwrap_or(0), fill["to_ms"].as_i64().unwrap_or(0));
    // On the heat's 10 s rhythm, as the replay page asks for a long range: the kept drivers frames are read.
    let from = from + (10_000 - from.rem_euclid(10_000)) % 10_000;
    let server = Launched::start(&bin, &with(&replay_store))?;
    let lagos = "6.38,3.25,6.70,3.60";
    let mut replays = Vec::new();
    for (layer, extra) in [("drivers", ""), ("orders", "&window_min=5")] {
        let query = format!("layer={layer}{extra}&precision={precision}&bbox={lagos}&from={from}&to={to}");
        let cpu_before = process_usage(server.pid()).map_or(0.0, |u| u.0);
        let timing = time_replay(&server.url, &query).await?;
        let cpu_seconds = process_usage(server.pid()).map_or(0.0, |u| u.0) - cpu_before;
        replays.push((layer, timing, cpu_seconds));
    }
    drop(server);
    for dir in data_dirs {
        let _ = std::fs::remove_dir_all(dir);
    }

    println!();
    let offered = if *rate == 0 { "flat out".to_string() } else { format!("{rate}/s") };
    println!("| store | offered | ingest accepted/s without history | with history | rows written/s (peak 2 s) | rows/s until the backlog emptied | backlog max | rows dropped | server CPU without / with | server peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let backlog_max = samples.iter().map(|s| s.backlog_rows).fold(0.0, f64::max);
    println!(
        "| {store:?} | {offered} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% / {:.0}% | {:.0} MiB |",
        baseline.0.accepted_per_sec,
        with_history.accepted_per_sec,
        peak_rows_per_sec,
        sustained_rows_per_sec,
        backlog_max,
        last.rows_dropped,
        baseline.1,
        cpu,
        peak_rss_kib as f64 / 1024.0
    );
    println!();
    println!(
        "fill: {} pings + {} order events (and {} drivers frames) in {:.1} s straight into the store ({:.0} rows/s)",
        fill["report"]["pings"],
        fill["report"]["demand"],
        fill["report"]["frames"],
        fill["report"]["seconds"].as_f64().unwrap_or(0.0),
        fill["report"]["rows_per_sec"].as_f64().unwrap_or(0.0)
    );
    println!("| replay of {replay_minutes} min, {replay_drivers} drivers | frames | rows read | first frame ms | whole ms | server CPU s | bytes |");
    println!("|---|---|---|---|---|---|---|");
    for (layer, t, cpu_s) in &replays {
        println!(
            "| {layer}, precision {precision} | {} | {} | {:.0} | {:.0} | {:.2} | {} |",
            t.frames, t.rows, t.first_frame_ms, t.total_ms, cpu_s, t.bytes
        );
    }
    Ok(json!({
        "scenario": "history", "store": format!("{store:?}"), "machine": machine,
        "offered_per_sec": rate, "ingest_without_history": baseline.0, "ingest_with_history": with_history,
        "server_cpu_percent_without_history": baseline.1,
        "server_cpu_percent": cpu, "server_peak_rss_kib": peak_rss_kib,
        "rows_per_sec_peak_2s": peak_rows_per_sec, "rows_per_sec_until_drained": sustained_rows_per_sec,
        "writer_samples": samples, "fill": fill,
        "replays": replays.iter().map(|(layer, t, cpu_s)| json!({"layer": layer, "timing": t, "server_cpu_seconds": cpu_s})).collect::<Vec<_>>(),
        "note": "ingest pings carry fresh times (each a new row); rows/s from /metrics samples every 0.5 s",
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let machine = Machine::here();
    if let Scenario::History { .. } = &args.scenario {
        raise_open_files(1 << 16);
        let result = history_scenario(&args, machine).await?;
        if let Some(parent) = args.out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)?;
        println!("\nwrote {}", args.out.display());
        return Ok(());
    }
    // The server inherits this limit: as many sockets as the hard limit allows, for both processes.
    let open_files = raise_open_files(1 << 20);
    let mut args = args;
    // A cluster of its own, kept for the run.
    let own_cluster = match args.redis_cluster.as_deref() {
        Some("own") => Some(tools::redis_cluster::RedisCluster::start_own(3, 0)?),
        _ => None,
    };
    if let Some(cluster) = &own_cluster {
        args.redis_cluster = Some(cluster.seeds());
    }
    let masters = args.redis_cluster.as_deref().map(tools::redis_cluster::masters_of).transpose()?;
    let calls_before = masters.as_ref().map(|m| {
        let crossslot: u64 = tools::redis_cluster::error_counts(m, "CROSSSLOT").iter().sum();
        (tools::redis_cluster::command_calls(m), crossslot, std::time::Instant::now())
    });
    let server = start_server(&args)?;
    let pid = server.pid();
    let store = match (&args.redis_url, &args.redis_cluster) {
        (Some(_), _) => "redis",
        (None, Some(_)) => "redis-cluster",
        _ => "embedded",
    };
    println!(
        "pulsemap-load: {} cores, {:.1} GiB; server pid {pid} ({store} store) at {}; open-files limit {}",
        machine.cores, machine.memory_gib, server.url, open_files
    );
    let result = match &args.scenario {
        Scenario::Ingest { transport, drivers, batch, connections, rate, warmup_secs, duration_secs } => {
            let plan = IngestPlan {
                url: server.url.clone(),
                key: server.key.clone(),
                transport: *transport,
                drivers: *drivers,
                batch: *batch,
                connections: *connections,
                rate: *rate,
                warmup: Duration::from_secs_f64(*warmup_secs),
                duration: Duration::from_secs_f64(*duration_secs),
                fresh_ts: false,
            };
            let (report, cpu_percent, peak_rss_kib) = measure_server(pid, ingest(&plan)).await?;
            println!();
            println!("| scenario | store | transport | batch | conns | sent/s | accepted/s | accepted | aggregated | lost | rejected | 503s | server CPU | server peak RSS |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            println!(
                "| ingest | {store} | {:?} | {batch} | {connections} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.0}% | {:.0} MiB |",
                report.transport,
                report.sent_per_sec,
                report.accepted_per_sec,
                report.accepted,
                report.aggregated,
                report.lost,
                report.rejected,
                report.refused_busy,
                cpu_percent,
                peak_rss_kib as f64 / 1024.0
            );
            json!({
                "scenario": "ingest", "store": store, "machine": machine, "plan": {
                    "drivers": drivers, "batch": batch, "connections": connections, "rate": rate,
                    "warmup_secs": warmup_secs, "duration_secs": duration_secs,
                },
                "report": report, "server_cpu_percent": cpu_percent, "server_peak_rss_kib": peak_rss_kib,
                "note": "harness and server share the machine; CPU% is of one core (200% = both cores)",
            })
        }
        Scenario::Track { drivers, trackers, warmup_secs, duration_secs } => {
            let plan = TrackPlan {
                url: server.url.clone(),
                key: server.key.clone(),
                drivers: *drivers,
                trackers: *trackers,
                warmup: Duration::from_secs_f64(*warmup_secs),
                duration: Duration::from_secs_f64(*duration_secs),
            };
            let (report, cpu_percent, peak_rss_kib) = measure_server(pid, track(&plan)).await?;
            println!();
            println!("| scenario | store | drivers | trackers | fixes sent | delivered | ratio | dups | p50 ms | p95 ms | p99 ms | max ms | server CPU | server peak RSS |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            println!(
                "| track | {store} | {} | {} | {} | {} | {:.4} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.0} MiB |",
                report.drivers,
                report.trackers,
                report.sent,
                report.delivered,
                report.delivery_ratio,
                report.duplicates,
                report.latency_ms_p50,
                report.latency_ms_p95,
                report.latency_ms_p99,
                report.latency_ms_max,
                cpu_percent,
                peak_rss_kib as f64 / 1024.0
            );
            json!({
                "scenario": "track", "store": store, "machine": machine, "report": report,
                "server_cpu_percent": cpu_percent, "server_peak_rss_kib": peak_rss_kib,
                "note": "latency = arrival (harness clock) - ping ts (ms, truncated: up to +1 ms); all on one machine",
            })
        }
        Scenario::Dispatch { drivers, orders_per_sec, warmup_secs, duration_secs } => {
            let plan = DispatchPlan {
                url: server.url.clone(),
                key: server.key.clone(),
                drivers: *drivers,
                orders_per_sec: *orders_per_sec,
                warmup: Duration::from_secs_f64(*warmup_secs),
                duration: Duration::from_secs_f64(*duration_secs),
            };
            let (report, cpu_percent, peak_rss_kib) = measure_server(pid, dispatch(&plan)).await?;
            println!();
            println!("| scenario | store | drivers | orders/s | placed | offered | assigned | offers/order | double assignments | offers to busy drivers | p50 ms | p95 ms | p99 ms | max ms | server CPU | server peak RSS |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            println!(
                "| dispatch | {store} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.0} MiB |",
                report.drivers,
                report.orders_per_sec,
                report.placed,
                report.offered,
                report.assigned,
                report.offers_per_order,
                report.double_assignments,
                report.offers_to_busy_drivers,
                report.latency_ms_p50,
                report.latency_ms_p95,
                report.latency_ms_p99,
                report.latency_ms_max,
                cpu_percent,
                peak_rss_kib as f64 / 1024.0
            );
            json!({
                "scenario": "dispatch", "store": store, "machine": machine, "report": report,
                "server_cpu_percent": cpu_percent, "server_peak_rss_kib": peak_rss_kib,
                "note": "latency = first offer at a driver socket - just before the order's POST went out (harness clock)",
            })
        }
        Scenario::History { .. } => unreachable!("the history scenario runs its own servers"),
        Scenario::Fanout { viewers, drivers, moving, precision, tick_ms, warmup_secs, duration_secs } => {
            let limit = open_files as usize;
            let viewers = if viewers + SPARE_FDS > limit {
                let capped = limit - SPARE_FDS;
                println!(
                    "open-files limit {limit} (the hard limit; this process may not raise it): {capped} viewers, \
                     not {viewers}"
                );
                capped
            } else {
                *viewers
            };
            let plan = FanoutPlan {
                url: server.url.clone(),
                key: server.key.clone(),
                viewers,
                drivers: *drivers,
                moving: moving.unwrap_or(*drivers),
                precision: *precision,
                server_pid: Some(pid),
                warmup: Duration::from_secs_f64(*warmup_secs),
                duration: Duration::from_secs_f64(*duration_secs),
            };
            let (report, cpu_percent, peak_rss_kib) = measure_server(pid, fanout(&plan)).await?;
            println!();
            println!("| scenario | store | viewers | drivers (moving) | tick | ticks | delivered | spread p50 ms | p99 ms | max ms | snapshot B | delta B p50 | delta/snapshot | resyncs | server KiB/viewer | server CPU | server CPU µs/viewer-frame | server peak RSS |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            println!(
                "| fanout | {store} | {} | {} ({}) | {tick_ms} ms | {} | {:.4} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.3} | {} | {:.1} | {:.0}% | {:.1} | {:.0} MiB |",
                report.viewers,
                report.drivers,
                report.moving,
                report.ticks,
                report.delivery_ratio,
                report.spread_ms_p50,
                report.spread_ms_p99,
                report.spread_ms_max,
                report.snapshot_bytes,
                report.delta_bytes_p50,
                report.delta_to_snapshot,
                report.resyncs,
                report.server_rss_kib_per_viewer.unwrap_or(f64::NAN),
                cpu_percent,
                report.server_cpu_us_per_viewer_frame.unwrap_or(f64::NAN),
                peak_rss_kib as f64 / 1024.0
            );
            json!({
                "scenario": "fanout", "store": store, "machine": machine, "tick_ms": tick_ms, "report": report,
                "plan": { "precision": precision, "warmup_secs": warmup_secs, "duration_secs": duration_secs },
                "server_cpu_percent": cpu_percent, "server_peak_rss_kib": peak_rss_kib,
                "open_files_limit": limit,
                "note": "spread = last viewer's arrival - first viewer's arrival of a tick's first frame, harness clock",
            })
        }
    };
    let mut result = result;
    if let (Some(masters), Some((before, crossslot_before, since))) = (&masters, &calls_before) {
        let after = tools::redis_cluster::command_calls(masters);
        let per_master: Vec<u64> = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).collect();
        let (busiest, quietest) =
            (per_master.iter().max().copied().unwrap_or(0), per_master.iter().min().copied().unwrap_or(0));
        let ratio = busiest as f64 / quietest.max(1) as f64;
        // At the server's default tick (250 ms), over the time from before the server started to now.
        let ticks = since.elapsed().as_secs_f64() / 0.25;
        let per_tick: Vec<f64> = per_master.iter().map(|n| (*n as f64 / ticks * 10.0).round() / 10.0).collect();
        let crossslot = tools::redis_cluster::error_counts(masters, "CROSSSLOT").iter().sum::<u64>() - crossslot_before;
        println!(
            "Redis Cluster commands per master over the run: {per_master:?} (ports {masters:?}), per 250 ms tick \
             {per_tick:?}; busiest/quietest {ratio:.1}; CROSSSLOT errors {crossslot}"
        );
        result["cluster"] = serde_json::json!({
            "masters": masters, "commands": per_master, "commands_per_tick": per_tick,
            "busiest_over_quietest": ratio, "crossslot_errors": crossslot,
        });
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)?;
    println!("\nwrote {}", args.out.display());
    drop(server);
    drop(own_cluster);
    Ok(())
}
