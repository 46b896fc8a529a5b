//! Where Redis is: one server (`--redis-url`) or a Redis Cluster (`--redis-cluster`, seed nodes). Everything
//! else talks to [`Conn`], which is either, so commands, pipelines and scripts are written once.
//!
//! On a cluster the coordination keys share one hash tag (the prefix) and each shard of the state has its own
//! (see [`Endpoint::keys`]), so every transaction and script stays in one slot; channels keep the plain prefix and
//! travel on sharded pub/sub (SPUBLISH/SSUBSCRIBE), each on the shard that owns its name.

use std::time::Duration;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, Value,
};
use tokio::sync::mpsc;

use super::keys::Keys;
use crate::config::Config;

/// Shards of the state on a cluster unless `--redis-shards` says otherwise: a multiple of 1, 2, 3, 4 and 6, so
/// clusters of that many masters (slots split evenly) hold as many shards each.
pub(crate) const CLUSTER_SHARDS: usize = 12;

/// A connection to one Redis (managed: reconnecting by itself; or plain) or to a cluster (following its slots).
#[derive(Clone)]
pub(crate) enum Conn {
    Managed(ConnectionManager),
    Plain(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach Redis.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Single(redis::Client),
    /// The seed nodes, as given.
    Cluster(Vec<String>),
}

impl Endpoint {
    /// From `--redis-cluster` (seeds, comma-separated) or `--redis-url`; `None` without either.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Endpoint>> {
        if let Some(seeds) = &config.redis_cluster {
            let seeds: Vec<String> = seeds
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| if s.contains("://") { s.to_string() } else { format!("redis://{s}") })
                .collect();
            anyhow::ensure!(!seeds.is_empty(), "--redis-cluster needs at least one host:port");
            // Checked here, so a typo is an error at start, not a retry loop.
            ClusterClient::new(seeds.clone()).map_err(|e| anyhow::anyhow!("bad --redis-cluster {seeds:?}: {e}"))?;
            return Ok(Some(Endpoint::Cluster(seeds)));
        }
        match &config.redis_url {
            None => Ok(None),
            Some(url) => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| anyhow::anyhow!("bad Redis URL {url}: {e}"))?;
                Ok(Some(Endpoint::Single(client)))
            }
        }
    }

    /// For logs: the URL or the seeds.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Single(client) => client.get_connection_info().addr().to_string(),
            Endpoint::Cluster(seeds) => format!("cluster {}", seeds.join(",")),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }

    /// The key names under `prefix`, in `shards` shards (default: one on a single Redis, [`CLUSTER_SHARDS`] on a
    /// cluster).
    pub fn keys(&self, prefix: &str, shards: Option<usize>) -> Keys {
        let default = if self.is_cluster() { CLUSTER_SHARDS } else { 1 };
        Keys::new(prefix, self.is_cluster(), shards.unwrap_or(default))
    }

    fn cluster(seeds: &[String], response_timeout: Option<Duration>) -> redis::RedisResult<ClusterClient> {
        let builder = ClusterClient::builder(seeds.to_vec()).connection_timeout(Duration::from_secs(1)).retries(2);
        match response_timeout {
            Some(timeout) => builder.response_timeout(timeout),
            None => builder.response_timeout(Duration::from_secs(3_600)),
        }
        .build()
    }

    /// A shared connection that fails fast while Redis is away (the callers keep their work and retry on their
    /// own schedule) instead of holding a command for seconds of internal retries.
    pub async fn managed(&self, response_timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Endpoint::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500))
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(response_timeout));
                Ok(Conn::Managed(client.get_connection_manager_with_config(config).await?))
            }
            Endpoint::Cluster(seeds) => {
                Ok(Conn::Cluster(Endpoint::cluster(seeds, Some(response_timeout))?.get_async_connection().await?))
            }
        }
    }

    /// A connection of its own, without a response timeout: for blocking reads, which would stall every other
    /// command sharing a connection.
    pub async fn dedicated(&self) -> redis::RedisResult<Conn> {
        match self {
            Endpoint::Single(client) => {
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                Ok(Conn::Plain(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Endpoint::Cluster(seeds) => {
                Ok(Conn::Cluster(Endpoint::cluster(seeds, None)?.get_async_connection().await?))
            }
        }
    }

    /// A cluster connection whose pub/sub messages (RESP3 pushes) go to `pushes`.
    pub async fn pushing(
        seeds: &[String],
        pushes: mpsc::UnboundedSender<redis::PushInfo>,
    ) -> redis::RedisResult<ClusterConnection> {
        ClusterClient::builder(seeds.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(Duration::from_secs(1))
            .build()?
            .get_async_connection()
            .await
    }

    /// The command that publishes on a channel: sharded on a cluster (the shard owning the channel's name).
    pub fn publish(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}
