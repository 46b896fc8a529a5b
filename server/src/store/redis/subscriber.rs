//! One Redis subscriber connection kept to exactly the channels asked for: it connects (with backoff),
//! subscribes again to everything wanted after a reconnect, follows `Start`/`Stop` requests, and hands every
//! message to its owner. Tracking (one channel per tracked driver) and the delivery loop (this instance's inbox
//! and one channel per watched order) each run one.

use std::{collections::HashSet, time::Duration};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{conn::Endpoint, stats::RedisStats};
use crate::task::Backoff;

/// What a subscriber's owner asks of it: a channel (by its full name) to follow or to leave.
#[derive(Debug)]
pub(super) enum Subscription {
    /// Follow, and (if asked) say so once Redis has confirmed the subscription: nothing published after that is
    /// missed.
    Start(String, Option<oneshot::Sender<()>>),
    Stop(String),
}

/// Runs until `requests` closes. `always` are subscribed for the subscriber's life; `on_message` gets each
/// message's channel and payload; `on_wanted` the number of channels followed on request (for a gauge).
pub(super) async fn run(
    endpoint: Endpoint,
    what: &'static str,
    always: Vec<String>,
    stats: RedisStats,
    requests: mpsc::UnboundedReceiver<Subscription>,
    on_message: impl FnMut(&str, String),
    on_wanted: impl FnMut(usize),
) {
    match endpoint {
        Endpoint::Single(client) => run_single(client, what, always, stats, requests, on_message, on_wanted).await,
        Endpoint::Cluster(seeds) => run_sharded(seeds, what, always, stats, requests, on_message, on_wanted).await,
    }
}

/// On a cluster: sharded subscriptions (SSUBSCRIBE), each on the shard that owns its channel; the connection
/// follows the slots and subscribes again after a failover, and its pushes bring the messages.
async fn run_sharded(
    seeds: Vec<String>,
    what: &'static str,
    always: Vec<String>,
    stats: RedisStats,
    mut requests: mpsc::UnboundedReceiver<Subscription>,
    mut on_message: impl FnMut(&str, String),
    mut on_wanted: impl FnMut(usize),
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let (pushes, mut pushed) = mpsc::unbounded_channel();
        let mut conn = match Endpoint::pushing(&seeds, pushes).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, what, "subscriber cannot connect to the Redis Cluster; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let mut ok = true;
        for channel in always.iter().chain(&wanted) {
            ok &= conn.start(channel).await.is_ok();
        }
        on_wanted(wanted.len());
        while ok {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    ok = follow(&mut conn, request, &mut wanted).await;
                    on_wanted(wanted.len());
                }
                push = pushed.recv() => match push {
                    Some(push) if push.kind == redis::PushKind::SMessage || push.kind == redis::PushKind::Message => {
                        backoff.reset();
                        let mut data = push.data.into_iter();
                        let (Some(channel), Some(payload)) = (data.next(), data.next()) else { continue };
                        let (Ok(channel), Ok(payload)) =
                            (redis::from_redis_value::<String>(channel), redis::from_redis_value::<String>(payload))
                        else {
                            continue;
                        };
                        if always.contains(&channel) || wanted.contains(&channel) {
                            on_message(&channel, payload);
                        }
                    }
                    Some(_) => {}
                    None => ok = false,
                },
            }
        }
        stats.errors.inc();
        tracing::warn!(what, "subscription to the Redis Cluster lost; reconnecting");
        backoff.wait().await;
    }
}

async fn run_single(
    client: redis::Client,
    what: &'static str,
    always: Vec<String>,
    stats: RedisStats,
    mut requests: mpsc::UnboundedReceiver<Subscription>,
    mut on_message: impl FnMut(&str, String),
    mut on_wanted: impl FnMut(usize),
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, what, "subscriber cannot connect to Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // After a reconnect, subscribe again to everything still wanted.
        let mut ok = true;
        for channel in always.iter().chain(&wanted) {
            ok &= sink.start(channel).await.is_ok();
        }
        on_wanted(wanted.len());
        while ok {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    ok = follow(&mut sink, request, &mut wanted).await;
                    on_wanted(wanted.len());
                }
                message = messages.next() => match message {
                    Some(message) => {
                        backoff.reset();
                        let channel = message.get_channel_name().to_string();
                        let wanted_here = always.contains(&channel) || wanted.contains(&channel);
                        if let (true, Ok(payload)) = (wanted_here, message.get_payload::<String>()) {
                            on_message(&channel, payload);
                        }
                    }
                    None => ok = false,
                },
            }
        }
        stats.errors.inc();
        tracing::warn!(what, "subscription to Redis lost; reconnecting");
        backoff.wait().await;
    }
}

/// The two kinds of subscriber connection, as the request loop uses them.
trait Subscriber {
    async fn start(&mut self, channel: &str) -> redis::RedisResult<()>;
    async fn stop(&mut self, channel: &str) -> redis::RedisResult<()>;
}

impl Subscriber for redis::aio::PubSubSink {
    async fn start(&mut self, channel: &str) -> redis::RedisResult<()> {
        self.subscribe(channel).await
    }

    async fn stop(&mut self, channel: &str) -> redis::RedisResult<()> {
        self.unsubscribe(channel).await
    }
}

impl Subscriber for redis::cluster_async::ClusterConnection {
    async fn start(&mut self, channel: &str) -> redis::RedisResult<()> {
        self.ssubscribe(channel).await
    }

    async fn stop(&mut self, channel: &str) -> redis::RedisResult<()> {
        self.sunsubscribe(channel).await
    }
}

/// Carries out one request, keeping `wanted` to what is asked; whether the connection still works.
async fn follow(connection: &mut impl Subscriber, request: Subscription, wanted: &mut HashSet<String>) -> bool {
    match request {
        Subscription::Start(channel, subscribed) => {
            let result = connection.start(&channel).await;
            wanted.insert(channel);
            if let (Ok(()), Some(subscribed)) = (&result, subscribed) {
                let _ = subscribed.send(());
            }
            result.is_ok()
        }
        Subscription::Stop(channel) => {
            let result = connection.stop(&channel).await;
            wanted.remove(&channel);
            result.is_ok()
        }
    }
}
