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
    mut requests: mpsc::UnboundedReceiver<Subscription>,
    mut on_message: impl FnMut(&str, String),
    mut on_wanted: impl FnMut(usize),
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let (mut connection, mut messages) = match Connection::open(&endpoint).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, what, "subscriber cannot connect to Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        // After a reconnect, subscribe again to everything still wanted.
        let mut ok = true;
        for channel in always.iter().chain(&wanted) {
            ok &= connection.start(channel).await.is_ok();
        }
        on_wanted(wanted.len());
        while ok {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    ok = connection.follow(request, &mut wanted).await;
                    on_wanted(wanted.len());
                }
                message = messages.next() => match message {
                    Some(Some((channel, payload))) => {
                        backoff.reset();
                        if always.contains(&channel) || wanted.contains(&channel) {
                            on_message(&channel, payload);
                        }
                    }
                    Some(None) => {}
                    None => ok = false,
                },
            }
        }
        stats.errors.inc();
        tracing::warn!(what, "subscription to Redis lost; reconnecting");
        backoff.wait().await;
    }
}

/// What a subscriber connection brings: `(channel, payload)` of each message (`None` for anything else it
/// pushes); it ends when the connection is lost.
type Messages = futures::stream::BoxStream<'static, Option<(String, String)>>;

/// A subscriber connection: plain pub/sub on one Redis; on a cluster, sharded subscriptions (SSUBSCRIBE), each
/// on the shard that owns its channel, on a connection that follows the slots (and subscribes again after a
/// failover) and brings the messages as RESP3 pushes.
enum Connection {
    Plain(redis::aio::PubSubSink),
    Sharded(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn open(endpoint: &Endpoint) -> redis::RedisResult<(Connection, Messages)> {
        match endpoint {
            Endpoint::Single(client) => {
                let (sink, messages) = client.get_async_pubsub().await?.split();
                let messages = messages.map(|m| Some((m.get_channel_name().to_string(), m.get_payload().ok()?)));
                Ok((Connection::Plain(sink), messages.boxed()))
            }
            Endpoint::Cluster(seeds) => {
                let (pushes, mut pushed) = mpsc::unbounded_channel();
                let connection = Endpoint::pushing(seeds, pushes).await?;
                let messages = futures::stream::poll_fn(move |cx| pushed.poll_recv(cx)).map(|push| {
                    if push.kind != redis::PushKind::SMessage && push.kind != redis::PushKind::Message {
                        return None;
                    }
                    let mut data = push.data.into_iter();
                    let channel = redis::from_redis_value::<String>(data.next()?).ok()?;
                    Some((channel, redis::from_redis_value::<String>(data.next()?).ok()?))
                });
                Ok((Connection::Sharded(connection), messages.boxed()))
            }
        }
    }

    async fn start(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Connection::Plain(sink) => sink.subscribe(channel).await,
            Connection::Sharded(connection) => connection.ssubscribe(channel).await,
        }
    }

    async fn stop(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Connection::Plain(sink) => sink.unsubscribe(channel).await,
            Connection::Sharded(connection) => connection.sunsubscribe(channel).await,
        }
    }

    /// Carries out one request, keeping `wanted` to what is asked; whether the connection still works.
    async fn follow(&mut self, request: Subscription, wanted: &mut HashSet<String>) -> bool {
        match request {
            Subscription::Start(channel, subscribed) => {
                let result = self.start(&channel).await;
                wanted.insert(channel);
                if let (Ok(()), Some(subscribed)) = (&result, subscribed) {
                    let _ = subscribed.send(());
                }
                result.is_ok()
            }
            Subscription::Stop(channel) => {
                let result = self.stop(&channel).await;
                wanted.remove(&channel);
                result.is_ok()
            }
        }
    }
}
