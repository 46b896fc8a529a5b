//! Tracking across instances on Redis: the registry of who tracks whom ([`refresh_tracked`]), the publisher
//! ([`publish`]), the subscriber that follows exactly the drivers this instance's sockets track
//! ([`follow_tracked`]), and [`RedisBus`], the engine's side of all three.
//!
//! Fixes go to `{prefix}:trk:{driver}`; an instance subscribes to a driver's channel only while one of its
//! sockets tracks that driver, and publishes a fix only when a socket on another instance does (known from the
//! registry, which each instance re-reads only when its version key moves, and from the news channel, on which a new
//! claim is announced once its subscription is in place).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    conn::{Conn, Endpoint},
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
/// How often the tracked registry is refreshed (claims that lapse or go are seen within one refresh; new ones
/// come at once, as news).
const TRACK_REFRESH: Duration = Duration::from_millis(250);
/// The longest a new claim waits for its subscription before it is written anyway.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

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
    pub conn: Conn,
    /// The subscriber's requests: a driver's channel to follow or leave.
    pub following: mpsc::UnboundedSender<Subscription>,
    /// `(channel, payload)` to PUBLISH; a task pipelines whatever is pending.
    pub publications: mpsc::UnboundedSender<(String, String)>,
    /// Drivers tracked by a socket on another instance (as of the last registry read): only their messages are
    /// published.
    pub tracked_elsewhere: Arc<RwLock<HashSet<String>>>,
    /// Drivers tracked by this instance's sockets (the claims it renews).
    pub tracked_here: Arc<Mutex<HashSet<String>>>,
    /// Per driver followed here: whether its claim is out (subscribed, written and announced).
    pub announced: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// PUBLISH, or SPUBLISH on a cluster.
    pub publish: &'static str,
}

impl RedisBus {
    /// Adds or removes this instance's claim on a driver at once (and bumps the version). A new claim waits for
    /// the subscription to the driver's channel (so nothing published after the claim is missed), and is
    /// announced on the news channel: the instance that hears the driver publishes from then on, not from its
    /// next registry refresh. `announced` says when that is done.
    fn claim(
        &self,
        driver_id: &str,
        subscribed: Option<oneshot::Receiver<()>>,
        announced: Option<watch::Sender<bool>>,
    ) {
        let mut conn = self.conn.clone();
        let (key, member) = (self.keys.tracked(), format!("{driver_id}|{}", self.instance));
        let (version, news) = (self.keys.tracked_version(), self.keys.tracked_news());
        let publish = self.publish;
        tokio::spawn(async move {
            let (mut pipe, mut announce) = (redis::pipe(), redis::pipe());
            if let Some(subscribed) = subscribed {
                let _ = tokio::time::timeout(SUBSCRIBE_WAIT, subscribed).await;
                pipe.atomic().zadd(key, &member, now_ms() + TRACK_CLAIM_MS).ignore();
                pipe.incr(version, 1).ignore();
                // Announced after the transaction (on a cluster the channel's shard is not the registry's).
                announce.cmd(publish).arg(news).arg(&member).ignore();
            } else {
                pipe.atomic().zrem(key, member).ignore().incr(version, 1).ignore();
            }
            let _: Result<(), _> = pipe.query_async(&mut conn).await;
            if !announce.is_empty() {
                let _: Result<(), _> = announce.query_async(&mut conn).await;
            }
            if let Some(announced) = announced {
                let _ = announced.send(true);
            }
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
        let (subscribed, when_subscribed) = oneshot::channel();
        let (announced, when_announced) = watch::channel(false);
        self.announced.lock().insert(driver_id.to_string(), when_announced);
        let _ = self.following.send(Subscription::Start(self.keys.track_channel(driver_id), Some(subscribed)));
        self.claim(driver_id, Some(when_subscribed), Some(announced));
    }

    fn unfollow(&self, driver_id: &str) {
        self.tracked_here.lock().remove(driver_id);
        self.announced.lock().remove(driver_id);
        let _ = self.following.send(Subscription::Stop(self.keys.track_channel(driver_id)));
        self.claim(driver_id, None, None);
    }

    fn joined(&self, driver_id: &str) -> BoxFuture<'static, ()> {
        let announced = self.announced.lock().get(driver_id).cloned();
        Box::pin(async move {
            if let Some(mut announced) = announced {
                let _ = announced.wait_for(|done| *done).await;
            }
        })
    }
}

/// New claims announced on the news channel, by driver, with when they were heard: a registry read that began
/// before that may not hold them, so they are kept beside it until a later read.
pub(super) type News = Arc<Mutex<HashMap<String, Instant>>>;

/// Keeps this instance's claims in the tracked registry alive and learns who tracks whom. Every
/// `TRACK_REFRESH` it drops lapsed claims and reads the registry's version; only when the version moved (a claim
/// came or went) does it read the whole registry: re-writing and re-reading every claim at each refresh made the
/// registry most of Redis's work under tracking load.
pub(super) async fn refresh_tracked(
    mut conn: Conn,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    here: Arc<Mutex<HashSet<String>>>,
    elsewhere: Arc<RwLock<HashSet<String>>>,
    news: News,
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
        let read_at = Instant::now();
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
        let mut now_elsewhere: HashSet<String> =
            claims.iter().filter(|(_, by)| *by != instance).map(|(driver, _)| driver.to_string()).collect();
        // News heard before the read is in it (a claim is written before it is announced); news heard since may
        // not be.
        let mut recent = news.lock();
        recent.retain(|_, heard| *heard > read_at);
        now_elsewhere.extend(recent.keys().cloned());
        *elsewhere.write() = now_elsewhere;
    }
}

/// Publishes tracking messages: one at once when idle, everything pending in one pipeline under load.
pub(super) async fn publish(
    conn: Conn,
    command: &'static str,
    stats: RedisStats,
    mut pending: mpsc::UnboundedReceiver<(String, String)>,
) {
    // A cluster sends a pipeline to the node of its first command: one pipeline per channel there (a channel's
    // messages in order, channels side by side), one for everything on a single Redis.
    let per_channel = matches!(conn, Conn::Cluster(_));
    while let Some(first) = pending.recv().await {
        let mut pipes: Vec<(String, redis::Pipeline)> = Vec::new();
        for (channel, payload) in std::iter::once(first).chain(std::iter::from_fn(|| pending.try_recv().ok())) {
            let at = match pipes.iter().position(|(c, _)| !per_channel || *c == channel) {
                Some(at) => at,
                None => {
                    pipes.push((channel.clone(), redis::pipe()));
                    pipes.len() - 1
                }
            };
            pipes[at].1.cmd(command).arg(channel).arg(payload).ignore();
        }
        stats.round_trips.inc_by(pipes.len() as u64);
        let sent = pipes.into_iter().map(|(_, pipe)| {
            let mut conn = conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        // A fix lost while Redis is away is superseded by the driver's next one.
        for result in futures::future::join_all(sent).await {
            if result.is_err() {
                stats.errors.inc();
            }
        }
    }
}

/// Keeps this instance's Redis subscriptions to exactly the drivers its sockets track, and forwards what
/// arrives on them (skipping this instance's own messages, which went to its trackers directly).
pub(super) async fn follow_tracked(
    endpoint: Endpoint,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    requests: mpsc::UnboundedReceiver<Subscription>,
    engine: mpsc::UnboundedSender<Relayed>,
    (elsewhere, news): (Arc<RwLock<HashSet<String>>>, News),
) {
    let (prefix, own, gauge) = (keys.track_prefix(), envelope_head(&instance), stats.track_channels.clone());
    let news_channel = keys.tracked_news();
    let on_message = move |channel: &str, payload: String| {
        if channel == news_channel {
            // Another instance's sockets now follow this driver: publish its messages from now on.
            if let Some((driver_id, by)) = payload.rsplit_once('|').filter(|(_, by)| *by != instance) {
                tracing::trace!(driver_id, by, "a new tracking claim");
                news.lock().insert(driver_id.to_string(), Instant::now());
                elsewhere.write().insert(driver_id.to_string());
            }
            return;
        }
        let Some(driver_id) = channel.strip_prefix(&prefix) else { return };
        if payload.starts_with(&own) {
            return;
        }
        if let Ok(envelope) = serde_json::from_str::<Envelope>(&payload) {
            let text = envelope.msg.get().to_string();
            let _ = engine.send(Relayed { driver_id: driver_id.to_string(), text });
        }
    };
    subscriber::run(endpoint, "tracking", vec![keys.tracked_news()], stats, requests, on_message, |n| {
        gauge.set(n as i64);
    })
    .await;
}
