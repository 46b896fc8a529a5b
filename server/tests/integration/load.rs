//! The load harness's scenarios, once each at a tiny size: they must keep working (the figures come from
//! `pulsemap-load`, not from here; nothing is timed).

use std::time::Duration;

use pulsemap::load::{ingest, IngestPlan, Transport};

use crate::common::*;

#[tokio::test]
async fn the_ingest_scenario_runs_on_both_transports_and_loses_nothing() {
    let server = start(config()).await;
    for transport in [Transport::Http, Transport::Ws] {
        let plan = IngestPlan {
            url: url(&server, ""),
            transport,
            drivers: 200,
            batch: 50,
            connections: 2,
            rate: 0,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
        };
        let report = ingest(&plan).await.expect("the scenario runs");
        assert!(report.accepted > 0, "{transport:?}: {report:?}");
        assert_eq!(report.sent, report.accepted + report.rejected, "{report:?}");
        assert_eq!(report.lost, 0, "{report:?}");
        assert!(report.aggregated >= report.accepted, "{report:?}");
    }
    server.stop().await;
}
