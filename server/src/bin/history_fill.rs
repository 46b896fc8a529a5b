//! `pulsemap-history-fill`: writes a simulated fleet's history over the last minutes into the store a pulsemap
//! server with the same flags would use (`--data-dir`, or `--database-url` and `--database-schema`), then
//! prints what it wrote as JSON. The load harness fills an hour with it to time replays.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "pulsemap-history-fill", about = "Fill pulsemap's history with a simulated fleet")]
struct Args {
    #[command(flatten)]
    config: pulsemap::Config,
    /// Drivers in the fleet.
    #[arg(long, default_value_t = 1_000)]
    fill_drivers: usize,
    /// Minutes of history, ending now.
    #[arg(long, default_value_t = 60.0)]
    fill_minutes: f64,
    /// Seconds between a driver's fixes.
    #[arg(long, default_value_t = 1.0)]
    fill_ping_secs: f64,
    /// Orders placed per minute across the city (the demand layer).
    #[arg(long, default_value_t = 240.0)]
    fill_orders_per_min: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let to = pulsemap::now_ms();
    let from = to - (args.fill_minutes * 60_000.0) as i64;
    let ping_ms = (args.fill_ping_secs * 1000.0) as i64;
    let report =
        pulsemap::fill_history(&args.config, args.fill_drivers, args.fill_orders_per_min, from, to, ping_ms).await?;
    println!("{}", serde_json::json!({"from_ms": from, "to_ms": to, "report": report}));
    Ok(())
}
