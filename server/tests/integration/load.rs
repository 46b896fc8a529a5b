//! The load harness's scenarios, once each at a tiny size: they must keep working (the figures come from
//! `pulsemap-load`, not from here; nothing is timed).

use std::time::Duration;

use tools::ingest::{ingest, IngestPlan, Transport};

use crate::common::*;

#[tokio::test]
async fn the_ingest_scenario_runs_on_both_transports_and_loses_nothing() {
    let server = start(config()).await;
    for transport in [Transport::Http, Transport::Ws] {
        let plan = IngestPlan {
            url: url(&server, ""),
            key: ADMIN_KEY.into(),
            transport,
            drivers: 200,
            batch: 50,
            connections: 2,
            // A rot check, not a benchmark: a modest rate keeps the parallel suite from starving.
            rate: 5_000,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
            fresh_ts: transport == Transport::Http,
        };
        let report = ingest(&plan).await.expect("the scenario runs");
        assert!(report.accepted > 0, "{transport:?}: {report:?}");
        assert_eq!(report.sent, report.accepted + report.rejected, "{report:?}");
        assert_eq!(report.lost, 0, "{report:?}");
        assert!(report.aggregated >= report.accepted, "{report:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_track_scenario_measures_delivery_without_duplicates() {
    use tools::track::{track, TrackPlan};
    let server = start(config()).await;
    let plan = TrackPlan {
        url: url(&server, ""),
        key: ADMIN_KEY.into(),
        drivers: 30,
        trackers: 10,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(2_200),
    };
    let report = track(&plan).await.expect("the scenario runs");
    assert!(report.sent >= 10, "{report:?}");
    assert!(report.delivered > 0 && report.delivered <= report.sent, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert!(report.latency_ms_p50.is_finite() && report.latency_ms_max >= report.latency_ms_p50, "{report:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_fanout_scenario_delivers_every_tick_to_every_viewer() {
    use tools::fanout::{fanout, FanoutPlan};
    let mut config = config();
    config.tick_ms = 200;
    let server = start(config).await;
    let plan = FanoutPlan {
        url: url(&server, ""),
        key: ADMIN_KEY.into(),
        viewers: 20,
        drivers: 300,
        moving: 300,
        precision: 6,
        server_pid: Some(std::process::id()),
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(1_500),
    };
    let report = fanout(&plan).await.expect("the scenario runs");
    assert_eq!(report.viewers, 20, "{report:?}");
    assert!(report.ticks >= 3, "{report:?}");
    assert_eq!(report.delivery_ratio, 1.0, "{report:?}");
    assert_eq!(report.resyncs, 0, "{report:?}");
    assert!(report.snapshot_cells > 0.0 && report.snapshot_bytes > 0.0, "{report:?}");
    assert!(report.delta_bytes_p50 > 0.0 && report.delta_bytes_p50 < report.snapshot_bytes * 2.0, "{report:?}");
    assert!(report.spread_ms_p50.is_finite() && report.spread_ms_max >= report.spread_ms_p50, "{report:?}");
    assert!(report.server_rss_kib_per_viewer.is_some(), "{report:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_dispatch_scenario_offers_every_order_and_never_double_assigns() {
    use tools::dispatch::{dispatch, DispatchPlan};
    let server = start(config()).await;
    let plan = DispatchPlan {
        url: url(&server, ""),
        key: ADMIN_KEY.into(),
        drivers: 40,
        orders_per_sec: 10.0,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(1_500),
    };
    let report = dispatch(&plan).await.expect("the scenario runs");
    assert!(report.placed >= 5, "{report:?}");
    assert_eq!(report.offered, report.placed, "every order offered: {report:?}");
    assert_eq!(report.double_assignments, 0, "{report:?}");
    assert_eq!(report.offers_to_busy_drivers, 0, "{report:?}");
    assert!(report.offers_per_order >= 1.0, "{report:?}");
    assert!(report.latency_ms_p50.is_finite() && report.latency_ms_max >= report.latency_ms_p50, "{report:?}");
    server.stop().await;
}
