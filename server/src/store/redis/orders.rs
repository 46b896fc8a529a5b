//! The delivery loop's state of record on Redis, shared by every instance:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}:order:{id}` | hash `v` (version), `j` (the order as JSON) | replaced only from the version read (a script); ended orders expire after a day |
//! | `{p}:orders:due` | sorted set | order id -> when matching must look at it again |
//! | `{p}:hold:{driver}` | string `o:{order}` / `j:{order}` | what the driver holds: an offer (expires with it) or a job |
//! | `{p}:sockets` | hash | driver -> the instance whose socket of it takes offers |
//! | `{p}:inbox:{instance}` | pub/sub channel | messages for driver sockets on that instance |
//! | `{p}:ord:{id}` | pub/sub channel | an order's changes, for customers on other instances |
//!
//! Every command touches one key, so each works on a Redis Cluster as it is (the hold and the order are two
//! compare-and-sets in turn, never one transaction over both).

use std::{collections::HashSet, sync::Arc};

use futures::FutureExt;
use redis::{AsyncCommands, Script};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{
    conn::{Conn, Endpoint},
    keys::Keys,
    stats::RedisStats,
    subscriber::{self, Subscription},
    tracking::envelope_head,
};
use crate::{
    state::order::Order,
    store::{Answer, Hold, Mail, Orders, StoreUnavailable},
};

/// How long an ended order stays readable.
const KEEP_ENDED_MS: u64 = 24 * 3600 * 1000;

fn unavailable(error: redis::RedisError) -> StoreUnavailable {
    StoreUnavailable(error.to_string())
}

const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'j', ARGV[2])
return 1";

const REPLACE: &str = r"
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'j', ARGV[3])
if ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1";

const TAKE_JOB: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1";

const RELEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held == 'o:' .. ARGV[1] or held == 'j:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0";

const UNREGISTER: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0";

/// The scripts, loaded once (the crate sends EVALSHA and loads a script Redis does not know yet).
struct Scripts {
    create: Script,
    replace: Script,
    take_job: Script,
    release: Script,
    unregister: Script,
}

pub(super) struct RedisOrders {
    pub conn: Conn,
    pub keys: Keys,
    pub instance: String,
    /// [`envelope_head`] of this instance: its own order messages come back to it and are skipped.
    pub head: String,
    pub stats: RedisStats,
    pub publications: mpsc::UnboundedSender<(String, String)>,
    /// The subscriber's requests: an order's channel to follow or leave.
    pub watching: mpsc::UnboundedSender<Subscription>,
    /// Drivers whose socket here takes offers: written again if a survivor took this instance's share over.
    pub taking_offers: TakingOffers,
    scripts: Scripts,
}

/// The drivers whose socket on this instance takes offers, shared with the lease.
pub(super) type TakingOffers = Arc<parking_lot::Mutex<HashSet<String>>>;

/// A message on a channel of the orders: who it is for (a driver, on an inbox) and the message as sent.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    to: Option<String>,
    #[serde(borrow)]
    msg: &'a RawValue,
}

fn hold_text(hold: &Hold) -> String {
    match hold {
        Hold::Offer(id) => format!("o:{id}"),
        Hold::Job(id) => format!("j:{id}"),
    }
}

fn parse_hold(text: &str) -> Option<Hold> {
    match text.split_once(':')? {
        ("o", id) => Some(Hold::Offer(id.to_string())),
        ("j", id) => Some(Hold::Job(id.to_string())),
        _ => None,
    }
}

impl RedisOrders {
    pub fn new(
        conn: Conn,
        keys: Keys,
        instance: String,
        stats: RedisStats,
        publications: mpsc::UnboundedSender<(String, String)>,
        watching: mpsc::UnboundedSender<Subscription>,
        taking_offers: TakingOffers,
    ) -> RedisOrders {
        let scripts = Scripts {
            create: Script::new(CREATE),
            replace: Script::new(REPLACE),
            take_job: Script::new(TAKE_JOB),
            release: Script::new(RELEASE),
            unregister: Script::new(UNREGISTER),
        };
        let head = envelope_head(&instance);
        RedisOrders { conn, keys, instance, head, stats, publications, watching, taking_offers, scripts }
    }

    fn conn(&self) -> Conn {
        self.stats.round_trips.inc();
        self.conn.clone()
    }
}

fn json(order: &Order) -> String {
    serde_json::to_string(order).expect("orders always serialise")
}

impl Orders for RedisOrders {
    fn instance(&self) -> &str {
        &self.instance
    }

    fn create<'a>(&'a self, order: &'a Order) -> Answer<'a, bool> {
        async move {
            let mut invocation = self.scripts.create.key(self.keys.order(&order.id));
            invocation.arg(order.version).arg(json(order));
            let created: i64 = invocation.invoke_async(&mut self.conn()).await.map_err(unavailable)?;
            Ok(created == 1)
        }
        .boxed()
    }

    fn get<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<Order>> {
        async move {
            let text: Option<String> = self.conn().hget(self.keys.order(order_id), "j").await.map_err(unavailable)?;
            Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
        }
        .boxed()
    }

    fn replace<'a>(&'a self, order: &'a Order, expected: u64) -> Answer<'a, bool> {
        async move {
            let mut invocation = self.scripts.replace.key(self.keys.order(&order.id));
            let expire = if order.state.is_final() { KEEP_ENDED_MS.to_string() } else { String::new() };
            invocation.arg(expected).arg(order.version).arg(json(order)).arg(expire);
            let replaced: i64 = invocation.invoke_async(&mut self.conn()).await.map_err(unavailable)?;
            Ok(replaced == 1)
        }
        .boxed()
    }

    fn schedule<'a>(&'a self, order_id: &'a str, at_ms: Option<i64>) -> Answer<'a, ()> {
        async move {
            let mut conn = self.conn();
            match at_ms {
                Some(at) => conn.zadd::<_, _, _, ()>(self.keys.orders_due(), order_id, at).await,
                None => conn.zrem::<_, _, ()>(self.keys.orders_due(), order_id).await,
            }
            .map_err(unavailable)
        }
        .boxed()
    }

    fn due(&self, now_ms: i64, limit: usize) -> Answer<'_, Vec<String>> {
        async move {
            redis::cmd("ZRANGE")
                .arg(self.keys.orders_due())
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)
        }
        .boxed()
    }

    fn hold_offer<'a>(&'a self, driver_id: &'a str, order_id: &'a str, ttl_ms: i64) -> Answer<'a, bool> {
        async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(self.keys.hold(driver_id))
                .arg(hold_text(&Hold::Offer(order_id.to_string())))
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms.max(1))
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(set.is_some())
        }
        .boxed()
    }

    fn take_job<'a>(&'a self, driver_id: &'a str, order_id: &'a str) -> Answer<'a, bool> {
        async move {
            let mut invocation = self.scripts.take_job.key(self.keys.hold(driver_id));
            let (offer, job) = (Hold::Offer(order_id.to_string()), Hold::Job(order_id.to_string()));
            invocation.arg(hold_text(&offer)).arg(hold_text(&job));
            let taken: i64 = invocation.invoke_async(&mut self.conn()).await.map_err(unavailable)?;
            Ok(taken == 1)
        }
        .boxed()
    }

    fn release<'a>(&'a self, driver_id: &'a str, order_id: &'a str) -> Answer<'a, ()> {
        async move {
            let mut invocation = self.scripts.release.key(self.keys.hold(driver_id));
            invocation.arg(order_id);
            invocation.invoke_async::<i64>(&mut self.conn()).await.map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn holds<'a>(&'a self, driver_ids: &'a [String]) -> Answer<'a, Vec<Option<Hold>>> {
        async move {
            if driver_ids.is_empty() {
                return Ok(Vec::new());
            }
            // One GET per key (pipelined), not MGET: the keys of different drivers lie in different Cluster slots.
            let mut pipe = redis::pipe();
            for id in driver_ids {
                pipe.get(self.keys.hold(id));
            }
            let held: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
            Ok(held.into_iter().map(|h| h.as_deref().and_then(parse_hold)).collect())
        }
        .boxed()
    }

    fn register<'a>(&'a self, driver_id: &'a str, available: bool) -> Answer<'a, ()> {
        async move {
            let mut conn = self.conn();
            if available {
                self.taking_offers.lock().insert(driver_id.to_string());
            } else {
                self.taking_offers.lock().remove(driver_id);
            }
            if available {
                conn.hset::<_, _, _, ()>(self.keys.sockets(), driver_id, &self.instance).await
            } else {
                conn.hdel::<_, _, ()>(self.keys.sockets(), driver_id).await
            }
            .map_err(unavailable)
        }
        .boxed()
    }

    fn unregister<'a>(&'a self, driver_id: &'a str) -> Answer<'a, ()> {
        async move {
            self.taking_offers.lock().remove(driver_id);
            let mut invocation = self.scripts.unregister.key(self.keys.sockets());
            invocation.arg(driver_id).arg(&self.instance);
            invocation.invoke_async::<i64>(&mut self.conn()).await.map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn sockets<'a>(&'a self, driver_ids: &'a [String]) -> Answer<'a, Vec<Option<String>>> {
        async move {
            if driver_ids.is_empty() {
                return Ok(Vec::new());
            }
            redis::cmd("HMGET")
                .arg(self.keys.sockets())
                .arg(driver_ids)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)
        }
        .boxed()
    }

    fn send_to_driver(&self, instance: &str, driver_id: &str, text: &str) {
        let to = serde_json::Value::from(driver_id);
        let _ = self.publications.send((self.keys.inbox(instance), format!("{{\"to\":{to},\"msg\":{text}}}")));
    }

    fn publish_order(&self, order_id: &str, text: &str) {
        let payload = [self.head.as_str(), text, "}"].concat();
        let _ = self.publications.send((self.keys.order_channel(order_id), payload));
    }

    fn watch(&self, order_id: &str) {
        let _ = self.watching.send(Subscription::Start(self.keys.order_channel(order_id), None));
    }

    fn unwatch(&self, order_id: &str) {
        let _ = self.watching.send(Subscription::Stop(self.keys.order_channel(order_id)));
    }
}

/// This instance's subscriptions for the delivery loop: its inbox always, and the channel of every order a
/// customer here watches; what arrives goes to dispatch as [`Mail`].
pub(super) async fn follow_mail(
    endpoint: Endpoint,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    requests: mpsc::UnboundedReceiver<Subscription>,
    mail: mpsc::UnboundedSender<Mail>,
) {
    let (inbox, order_prefix, own) = (keys.inbox(&instance), keys.order_channel(""), envelope_head(&instance));
    let on_message = {
        let inbox = inbox.clone();
        move |channel: &str, payload: String| {
            let Ok(envelope) = serde_json::from_str::<Envelope>(&payload) else { return };
            let text = envelope.msg.get().to_string();
            if channel == inbox {
                if let Some(driver_id) = envelope.to {
                    let _ = mail.send(Mail::Driver { driver_id, text });
                }
            } else if let Some(order_id) = channel.strip_prefix(&order_prefix) {
                // This instance's own changes went to its customers directly.
                if !payload.starts_with(&own) {
                    let _ = mail.send(Mail::Order { order_id: order_id.to_string(), text });
                }
            }
        }
    };
    subscriber::run(endpoint, "orders", vec![inbox], stats, requests, on_message, |_| {}).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_read_back_as_written() {
        for hold in [Hold::Offer("o-1".into()), Hold::Job("o:2".into())] {
            assert_eq!(parse_hold(&hold_text(&hold)), Some(hold));
        }
        assert_eq!(parse_hold("x:1"), None);
    }

    #[test]
    fn driver_mail_names_its_driver() {
        let payload = r#"{"to":"d-1","msg":{"type":"offer","order_id":"o"}}"#;
        let envelope: Envelope = serde_json::from_str(payload).unwrap();
        assert_eq!(envelope.to.as_deref(), Some("d-1"));
        assert_eq!(envelope.msg.get(), r#"{"type":"offer","order_id":"o"}"#);
    }
}
