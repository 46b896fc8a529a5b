//! One Redis subscriber connection kept to exactly the channels asked for: it connects (with backoff),
//! subscribes again to everything wanted after a reconnect, follows `Start`/`Stop` requests, and hands every
//! message to its owner. Tracking (one channel per tracked driver) and the delivery loop (this instance's inbox
//! and one channel per watched order) each run one.

use std::{collections::HashSet, time::Duration};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::stats::RedisStats;
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
            ok &= sink.subscribe(channel).await.is_ok();
        }
        on_wanted(wanted.len());
        while ok {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    ok = match request {
                        Subscription::Start(channel, subscribed) => {
                            let result = sink.subscribe(&channel).await;
                            wanted.insert(channel);
                            if let (Ok(()), Some(subscribed)) = (&result, subscribed) {
                                let _ = subscribed.send(());
                            }
                            result.is_ok()
                        }
                        Subscription::Stop(channel) => {
                            let result = sink.unsubscribe(&channel).await;
                            wanted.remove(&channel);
                            result.is_ok()
                        }
                    };
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
