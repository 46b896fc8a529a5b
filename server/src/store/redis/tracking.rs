//! Tracking across instances on Redis: the registry of who tracks whom ([`refresh_tracked`]), the publisher
//! ([`publish`]), the subscriber that follows exactly the drivers this instance's sockets track
//! ([`follow_tracked`]), and [`RedisBus`], the engine's side of all three.
//!
//! Fixes go to `{prefix}:trk:{driver}`; an instance subscribes to a driver's channel only while one of its
//! sockets tracks that driver, and publishes a fix only when a socket on another instance does (known from the
//! registry, which each instance re-reads only when its version key moves).

use std::{collections::HashSet, sync::Arc, time::Duration};

use parking_lot::{Mutex, RwLock};
use redis::{aio::ConnectionManager, AsyncCommands};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{
    keys::Keys,
    stats::RedisStats,
    subscriber::{self, Subscription},
};
use crate::{
    clock::now_ms,
    store::{Relayed, TrackingBus},
};

/// How long an instance's claim to track a driver lasts without a refresh (a crashed instance's claims lapse).
const TRACK_CLAIM_MS: i64 = 5_000;
/// How often the tracked registry is refreshed (and so how soon another instance starts publishing a driver).
const TRACK_REFRESH: Duration = Duration::from_millis(250);

/// Claims are renewed every this many refreshes (a claim lasts `TRACK_CLAIM_MS`, 20 refreshes).
const TRACK_RENEW_EVERY: u32 = 4;

/// A tracking message as it crosses Redis, `{"origin": instance, "msg": message}`: the message's text goes in as
/// the engine serialised it and comes out as it went in. (The origin is matched as text: see [`envelope_head`].)
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    msg: &'a RawValue,
}

/// The start of every envelope an instance publishes (its origin, written once).
pub(super) fn envelope_head(instance: &str) -> String {
    format!("{{\"origin\":{},\"msg\":", serde_json::Value::from(instance))
}

/// The engine's side of tracking across instances.
pub(super) struct RedisBus {
    pub keys: Keys,
    pub instance: String,
    /// [`envelope_head`] of this instance.
    pub head: String,
    pub conn: ConnectionManager,
    /// The subscriber's requests: a driver's channel to follow or leave.
    pub following: mpsc::UnboundedSender<Subscription>,
    /// `(channel, payload)` to PUBLISH; a task pipelines whatever is pending.
    pub publications: mpsc::UnboundedSender<(String, String)>,
    /// Drivers tracked by a socket on another instance (as of the last registry read): only their messages are
    /// published.
    pub tracked_elsewhere: Arc<RwLock<HashSet<String>>>,
    /// Drivers tracked by this instance's sockets (the claims it renews).
    pub tracked_here: Arc<Mutex<HashSet<String>>>,
}

impl RedisBus {
    /// Adds or removes this instance's claim on a driver at once (and bumps the version), so the instance that
    /// hears the driver starts or stops publishing within one registry refresh.
    fn claim(&self, driver_id: &str, claimed: bool) {
        let mut conn = self.conn.clone();
        let (key, member) = (self.keys.tracked(), format!("{driver_id}|{}", self.instance));
        let version = self.keys.tracked_version();
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            if claimed {
                pipe.zadd(key, member, now_ms() + TRACK_CLAIM_MS).ignore();
            } else {
                pipe.zrem(key, member).ignore();
            }
            let _: Result<(), _> = pipe.incr(version, 1).ignore().query_async(&mut conn).await;
        });
    }
}

impl TrackingBus for RedisBus {
    fn tracked_elsewhere(&self, driver_id: &str) -> bool {
        self.tracked_elsewhere.read().contains(driver_id)
    }

    fn publish(&self, driver_id: &str, text: &str) {
        let payload = [self.head.as_str(), text, "}"].concat();
        let _ = self.publications.send((self.keys.track_channel(driver_id), payload));
    }

    fn follow(&self, driver_id: &str) {
        self.tracked_here.lock().insert(driver_id.to_string());
        let _ = self.following.send(Subscription::Start(self.keys.track_channel(driver_id)));
        self.claim(driver_id, true);
    }

    fn unfollow(&self, driver_id: &str) {
        self.tracked_here.lock().remove(driver_id);
        let _ = self.following.send(Subscription::Stop(self.keys.track_channel(driver_id)));
        self.claim(driver_id, false);
    }
}

/// Keeps this instance's claims in the tracked registry alive and learns who tracks whom. Every
/// `TRACK_REFRESH` it drops lapsed claims and reads the registry's version; only when the version moved (a claim
/// came or went) does it read the whole registry: re-writing and re-reading every claim at each refresh made the
/// registry most of Redis's work under tracking load.
pub(super) async fn refresh_tracked(
    mut conn: ConnectionManager,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    here: Arc<Mutex<HashSet<String>>>,
    elsewhere: Arc<RwLock<HashSet<String>>>,
) {
    let mut every = tokio::time::interval(TRACK_REFRESH);
    let mut seen_version: Option<Option<u64>> = None;
    for round in 0u32.. {
        every.tick().await;
        let now = now_ms();
        let mut pipe = redis::pipe();
        let mine: Vec<String> =
            if round % TRACK_RENEW_EVERY == 0 { here.lock().iter().cloned().collect() } else { Vec::new() };
        if !mine.is_empty() {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(keys.tracked());
            for driver in &mine {
                zadd.arg(now + TRACK_CLAIM_MS).arg(format!("{driver}|{instance}"));
            }
            pipe.add_command(zadd);
        } else {
            pipe.cmd("ECHO").arg(0);
        }
        pipe.cmd("ZREMRANGEBYSCORE").arg(keys.tracked()).arg("-inf").arg(now);
        pipe.cmd("GET").arg(keys.tracked_version());
        stats.round_trips.inc();
        let (added, lapsed, version) = match pipe.query_async::<(u64, u64, Option<u64>)>(&mut conn).await {
            Ok(answer) => answer,
            Err(_) => {
                stats.errors.inc();
                continue;
            }
        };
        // Claims new to the registry (it lost its data) or gone from it change who tracks whom: say so.
        let version = if added > 0 || lapsed > 0 {
            stats.round_trips.inc();
            conn.incr::<_, _, u64>(keys.tracked_version(), 1).await.ok()
        } else {
            version
        };
        if seen_version == Some(version) {
            continue;
        }
        stats.round_trips.inc();
        let Ok(claims) = conn.zrange::<_, Vec<String>>(keys.tracked(), 0, -1).await else {
            stats.errors.inc();
            continue;
        };
        seen_version = Some(version);
        let claims: Vec<(&str, &str)> = claims.iter().filter_map(|c| c.rsplit_once('|')).collect();
        let anywhere: HashSet<&str> = claims.iter().map(|(driver, _)| *driver).collect();
        stats.tracked_drivers.set(anywhere.len() as i64);
        // Fixes of drivers tracked only here are delivered here: publishing them would send each one to Redis
        // and back for nothing.
        *elsewhere.write() =
            claims.iter().filter(|(_, by)| *by != instance).map(|(driver, _)| driver.to_string()).collect();
    }
}

/// Publishes tracking messages: one at once when idle, everything pending in one pipeline under load.
pub(super) async fn publish(
    mut conn: ConnectionManager,
    stats: RedisStats,
    mut pending: mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some((channel, payload)) = pending.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        while let Ok((channel, payload)) = pending.try_recv() {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        stats.round_trips.inc();
        // A fix lost while Redis is away is superseded by the driver's next one.
        if pipe.query_async::<()>(&mut conn).await.is_err() {
            stats.errors.inc();
        }
    }
}

/// Keeps this instance's Redis subscriptions to exactly the drivers its sockets track, and forwards what
/// arrives on them (skipping this instance's own messages, which went to its trackers directly).
pub(super) async fn follow_tracked(
    client: redis::Client,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    requests: mpsc::UnboundedReceiver<Subscription>,
    engine: mpsc::UnboundedSender<Relayed>,
) {
    let (prefix, own, gauge) = (keys.track_prefix(), envelope_head(&instance), stats.track_channels.clone());
    let on_message = move |channel: &str, payload: String| {
        let Some(driver_id) = channel.strip_prefix(&prefix) else { return };
        if payload.starts_with(&own) {
            return;
        }
        if let Ok(envelope) = serde_json::from_str::<Envelope>(&payload) {
            let text = envelope.msg.get().to_string();
            let _ = engine.send(Relayed { driver_id: driver_id.to_string(), text });
        }
    };
    subscriber::run(client, "tracking", Vec::new(), stats, requests, on_message, |n| {
        gauge.set(n as i64);
    })
    .await;
}
