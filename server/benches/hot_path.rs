//! Micro-benchmarks of the per-ping and per-frame hot paths: `cargo bench -p server`.
//!
//! - `ingest/decode_validate`: one `POST /api/pings` body of 1,000 pings, decoded and validated as the handler
//!   does (per ping: divide the time by 1,000).
//! - `engine/apply`: what the aggregator does per ping on the embedded store: presence (cell change, online) and
//!   the heat counts of every precision, for a fleet whose drivers mostly stay in their cell.
//! - `frames/*`: serialising a delta (few changed cells), a city snapshot, and one tracker fix.
//!
//! These are figures to compare before and after a change, not tests: nothing here asserts a time.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protocol::{
    driver::Ping,
    geo::BBox,
    heat::{HeatDelta, HeatServerMsg, HeatSnapshot, Layer, Totals},
    track::{DriverFix, TrackMsg},
    validate::{check_ping, Limits},
};
use pulsemap::{
    ingest::decode,
    now_ms,
    state::{
        heat::{HeatState, Increment},
        presence::PresenceMap,
    },
};
use sim::Fleet;

fn fleet_pings(drivers: usize, steps: usize) -> Vec<Ping> {
    let mut fleet = Fleet::new("bench", drivers, 0.0, 1);
    let now = now_ms();
    (0..steps).flat_map(|step| fleet.step(1.0, now + step as i64)).collect()
}

fn ingest(c: &mut Criterion) {
    let pings = fleet_pings(1_000, 1);
    let body = serde_json::to_vec(&pings).expect("serialises");
    let limits = Limits::default();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(pings.len() as u64));
    group.bench_function("decode_validate", |b| {
        b.iter(|| {
            let now = now_ms();
            let items = decode::batch::<Ping>(black_box(&body), 10_000).expect("a valid body");
            items.into_iter().filter(|item| item.as_ref().is_ok_and(|p| check_ping(p, now, &limits).is_ok())).count()
        })
    });
    group.finish();
}

fn engine(c: &mut Criterion) {
    // 10,000 drivers, ten fixes each: the presence map is warm and most fixes stay in their cell.
    let pings = fleet_pings(10_000, 10);
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(pings.len() as u64));
    group.bench_function("apply", |b| {
        b.iter_batched(
            || (PresenceMap::default(), HeatState::new(now_ms()), pings.clone()),
            |(mut presence, mut heat, pings)| {
                let now = now_ms();
                for ping in pings {
                    let (change, _) = presence.apply(ping, now);
                    if let Some(cell) = change.left {
                        heat.apply(Increment::Driver { cell, delta: -1 });
                    }
                    if let Some(cell) = change.entered {
                        heat.apply(Increment::Driver { cell, delta: 1 });
                    }
                }
                (presence, heat)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let cell = |i: usize| (format!("s0{:04}", i % 10_000), (i % 7 + 1) as u32);
    let totals = Totals { drivers_online: 2_000, orders: [40, 200, 600, 2_400] };
    let delta = HeatServerMsg::Delta(HeatDelta {
        seq: 1_234,
        layer: Layer::Drivers,
        window_min: 5,
        precision: 6,
        tile: Some("s0u".into()),
        cells: (0..20).map(cell).collect(),
        totals: None,
    });
    let snapshot = HeatServerMsg::Snapshot(HeatSnapshot {
        seq: 1_234,
        layer: Layer::Drivers,
        window_min: 5,
        precision: 6,
        bbox: BBox { south: 6.35, west: 3.25, north: 6.70, east: 3.60 },
        cells: (0..600).map(cell).collect(),
        totals,
    });
    let fix = TrackMsg::Fix(DriverFix {
        driver_id: "driver-12345".into(),
        lat: 6.5244,
        lon: 3.3792,
        ts: now_ms(),
        accuracy_m: Some(8.0),
        heading_deg: Some(270.0),
        speed_mps: Some(9.5),
        online: true,
        last_seen_ms: now_ms(),
    });
    let mut group = c.benchmark_group("frames");
    group.bench_function("delta_20_cells", |b| b.iter(|| serde_json::to_string(black_box(&delta))));
    group.bench_function("snapshot_600_cells", |b| b.iter(|| serde_json::to_string(black_box(&snapshot))));
    group.bench_function("track_fix", |b| b.iter(|| serde_json::to_string(black_box(&fix))));
    group.finish();
}

criterion_group!(benches, ingest, engine, frames);
criterion_main!(benches);
