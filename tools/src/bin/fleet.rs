//! `pulsemap-fleet`: drives a simulated fleet against a running pulsemap over HTTP (`POST /api/pings` and
//! `/api/orders/events`), the way a fleet gateway would.

use std::time::Duration;

use clap::Parser;
use protocol::batch::BatchReport;
use sim::Fleet;
use tools::now_ms;

/// Simulated drivers and orders around Lagos, posted to a pulsemap server.
#[derive(Debug, Parser)]
#[command(name = "pulsemap-fleet", version, about)]
struct Args {
    /// Base URL of the server.
    #[arg(long, env = "PULSEMAP_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// The server's fleet key (its `PULSEMAP_FLEET_KEY`): pings for any driver, and orders.
    #[arg(long, env = "PULSEMAP_FLEET_KEY", hide_env_values = true)]
    key: String,
    /// Drivers to simulate.
    #[arg(long, default_value_t = 500)]
    drivers: usize,
    /// Seconds between two pings of one driver.
    #[arg(long, default_value_t = 2.0)]
    ping_secs: f64,
    /// Orders placed per minute.
    #[arg(long, default_value_t = 240.0)]
    orders_per_min: f64,
    /// Prefix of the driver ids (`{prefix}-{n}`).
    #[arg(long, default_value = "fleet")]
    prefix: String,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0.0)]
    duration_secs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = tools::client::keyed_client(&args.key)?.build()?;
    let mut fleet = Fleet::new(&args.prefix, args.drivers, args.orders_per_min, now_ms() as u64);
    let period = Duration::from_secs_f64(args.ping_secs.max(0.05));
    let started = std::time::Instant::now();
    let mut every = tokio::time::interval(period);
    let (mut sent, mut accepted) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => {}
        }
        if args.duration_secs > 0.0 && started.elapsed().as_secs_f64() >= args.duration_secs {
            break;
        }
        let now = now_ms();
        let pings = fleet.step(period.as_secs_f64(), now);
        let orders = fleet.orders(period.as_secs_f64(), now);
        sent += pings.len() as u64;
        for (path, body) in [("pings", serde_json::to_vec(&pings)?), ("orders/events", serde_json::to_vec(&orders)?)] {
            let response = client
                .post(format!("{}/api/{path}", args.url.trim_end_matches('/')))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match response {
                Ok(r) if r.status().as_u16() == 202 => {
                    let report: BatchReport = r.json().await?;
                    if path == "pings" {
                        accepted += u64::from(report.accepted);
                    }
                    if !report.rejected.is_empty() {
                        eprintln!("{path}: {} rejected, first: {:?}", report.rejected.len(), report.rejected[0]);
                    }
                }
                Ok(r) => eprintln!("{path}: HTTP {} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => eprintln!("{path}: {e}"),
            }
        }
    }
    println!("sent {sent} pings, {accepted} accepted");
    Ok(())
}
