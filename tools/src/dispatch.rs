//! `dispatch`: drivers online on their own sockets (a driver token each, a fix every few seconds), orders placed
//! at a steady rate over `POST /api/orders`; every driver accepts what it is offered and delivers at once, so
//! drivers keep coming free. Timed: order placed (just before its request goes out) -> the first offer of it on
//! a driver's socket. Counted: offers per order, and double assignments (an order two drivers were told is
//! theirs, or a driver offered a job while it holds one), which must be 0.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use protocol::{
    driver::{DriverClientMsg, DriverServerMsg, IssuedToken, Ping},
    orders::{OrderState, PlacedOrder},
};
use serde::Serialize;
use sim::Fleet;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{keyed_client, small_buffers},
    now_ms,
    stats::percentile,
};

#[derive(Debug, Clone)]
pub struct DispatchPlan {
    pub url: String,
    /// The server's admin key: it mints the drivers' tokens and places the orders.
    pub key: String,
    pub drivers: usize,
    pub orders_per_sec: f64,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatchReport {
    pub drivers: usize,
    pub orders_per_sec: f64,
    /// Orders placed inside the measured window.
    pub placed: u64,
    /// Of those, offered to a driver by the end of the window (plus a second of grace).
    pub offered: u64,
    pub assigned: u64,
    /// Offers per placed order (all offers of the window's orders, over the orders).
    pub offers_per_order: f64,
    /// Orders that two drivers were told are theirs.
    pub double_assignments: u64,
    /// Offers that reached a driver while it held a job.
    pub offers_to_busy_drivers: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// What every driver socket writes down, shared.
#[derive(Default)]
struct Seen {
    /// Per order: when its first offer arrived, how many offers came, who was told it is theirs.
    first_offer: HashMap<String, Instant>,
    offers: HashMap<String, u64>,
    assigned: HashMap<String, Vec<usize>>,
    offers_to_busy: u64,
}

/// Drivers mint their tokens this many at a time.
const ENTER_AT_ONCE: usize = 64;
/// How often each driver socket sends its fix (well inside the server's stale time).
const FIX_EVERY: Duration = Duration::from_secs(5);

pub async fn dispatch(plan: &DispatchPlan) -> anyhow::Result<DispatchReport> {
    let client = keyed_client(&plan.key)?.build()?;
    let mut fleet = Fleet::new("dsp", plan.drivers, 0.0, 11);
    let positions = fleet.step(0.0, 0);
    // Tokens for every driver, a few requests at a time.
    let mut tokens = Vec::with_capacity(plan.drivers);
    for chunk in positions.chunks(ENTER_AT_ONCE) {
        let calls = chunk.iter().map(|p| {
            let (client, url) = (client.clone(), format!("{}/api/drivers/enter", plan.url));
            let body = serde_json::json!({"driver_id": p.driver_id});
            async move { client.post(url).json(&body).send().await?.error_for_status()?.json::<IssuedToken>().await }
        });
        for issued in futures::future::join_all(calls).await {
            tokens.push(issued?.token);
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let ws_url = format!("{}/ws/driver", plan.url.replacen("http", "ws", 1));
    let mut sockets = Vec::with_capacity(plan.drivers);
    for (i, (ping, token)) in positions.into_iter().zip(tokens).enumerate() {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(&ws_url, Some(small_buffers()), false).await?;
        sockets.push(tokio::spawn(drive(i, socket, token, ping, seen.clone(), stop.clone())));
    }
    // Every driver's first fix is in before the first order.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let window = (started + plan.warmup, started + plan.warmup + plan.duration);
    let mut placements = Vec::new();
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.orders_per_sec.max(0.1)));
    while Instant::now() < window.1 {
        every.tick().await;
        let order = fleet.delivery();
        let (client, url) = (client.clone(), format!("{}/api/orders", plan.url));
        placements.push(tokio::spawn(async move {
            let at = Instant::now();
            let placed: PlacedOrder = client.post(url).json(&order).send().await?.error_for_status()?.json().await?;
            Ok::<_, anyhow::Error>((placed.order_id, at))
        }));
    }
    let mut in_window = Vec::new();
    for placement in placements {
        let (order_id, at) = placement.await??;
        if at >= window.0 {
            in_window.push((order_id, at));
        }
    }
    // A second of grace for offers still on their way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    for socket in sockets {
        let _ = socket.await;
    }
    let seen = seen.lock();
    let mut latencies: Vec<f64> = in_window
        .iter()
        .filter_map(|(id, at)| seen.first_offer.get(id).map(|offer| offer.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let offers: u64 = in_window.iter().map(|(id, _)| seen.offers.get(id).copied().unwrap_or(0)).sum();
    let assigned = in_window.iter().filter(|(id, _)| seen.assigned.contains_key(id)).count() as u64;
    let pct = |p: f64| percentile(&latencies, p);
    Ok(DispatchReport {
        drivers: plan.drivers,
        orders_per_sec: plan.orders_per_sec,
        placed: in_window.len() as u64,
        offered: latencies.len() as u64,
        assigned,
        offers_per_order: if in_window.is_empty() { 0.0 } else { offers as f64 / in_window.len() as f64 },
        double_assignments: seen.assigned.values().filter(|who| who.len() > 1).count() as u64,
        offers_to_busy_drivers: seen.offers_to_busy,
        latency_ms_p50: pct(0.50),
        latency_ms_p95: pct(0.95),
        latency_ms_p99: pct(0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(f64::NAN),
    })
}

fn text<T: Serialize>(value: &T) -> Message {
    Message::Text(serde_json::to_string(value).expect("messages serialise").into())
}

/// One driver's phone: `auth`, a fix every few seconds, every offer accepted, every job delivered at once.
async fn drive(
    i: usize,
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    token: String,
    fix: Ping,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let (mut out, mut incoming) = socket.split();
    if out.send(text(&DriverClientMsg::Auth { token })).await.is_err() {
        return;
    }
    let mut every = tokio::time::interval(FIX_EVERY);
    let mut job: Option<String> = None;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {
                let ping = DriverClientMsg::Ping { seq: None, ping: Ping { ts: now_ms(), ..fix.clone() } };
                if out.send(text(&ping)).await.is_err() {
                    break;
                }
                continue;
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => break,
            },
        };
        let arrived = Instant::now();
        let reply = match serde_json::from_str::<DriverServerMsg>(&message) {
            Ok(DriverServerMsg::Offer(offer)) => {
                let mut seen = seen.lock();
                seen.first_offer.entry(offer.order_id.clone()).or_insert(arrived);
                *seen.offers.entry(offer.order_id.clone()).or_default() += 1;
                if job.is_some() {
                    seen.offers_to_busy += 1;
                }
                vec![DriverClientMsg::Accept { order_id: offer.order_id }]
            }
            Ok(DriverServerMsg::Assigned { order_id, .. }) => {
                seen.lock().assigned.entry(order_id.clone()).or_default().push(i);
                job = Some(order_id.clone());
                vec![
                    DriverClientMsg::OrderStatus { order_id: order_id.clone(), state: OrderState::PickedUp },
                    DriverClientMsg::OrderStatus { order_id, state: OrderState::Delivered },
                ]
            }
            Ok(DriverServerMsg::Job { state: OrderState::Delivered | OrderState::Cancelled, .. }) => {
                job = None;
                Vec::new()
            }
            _ => Vec::new(),
        };
        for message in reply {
            if out.send(text(&message)).await.is_err() {
                return;
            }
        }
    }
    let _ = out.close().await;
}
