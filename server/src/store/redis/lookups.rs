//! Questions about the whole city, answered from Redis: a driver's last fix (its shard's presence hash), the
//! drivers nearest a point (every shard's GEO set, asked at once), share-link revocations, and whether Redis
//! answers at all.

use std::time::Duration;

use futures::{future::BoxFuture, FutureExt};
use protocol::{
    geo::distance_m,
    track::{DriverFix, NearDriver},
};
use redis::AsyncCommands;

use super::{
    conn::Conn,
    keys::{Keys, ShardKeys},
    stats::RedisStats,
};
use crate::{
    clock::now_ms,
    state::presence::nearest_first,
    store::{Answer, Lookups, StoreUnavailable},
};

pub(super) struct RedisLookups {
    pub conn: Conn,
    pub keys: Keys,
    pub stats: RedisStats,
    /// Presence entries not refreshed for this long belong to drivers gone stale.
    pub stale_ms: i64,
}

fn unavailable(error: redis::RedisError) -> StoreUnavailable {
    StoreUnavailable(error.to_string())
}

impl RedisLookups {
    /// The last fixes of one shard's drivers within `radius_m`, nearest first (a few more than `limit`, for those
    /// gone stale).
    async fn near_in(
        &self,
        shard: ShardKeys<'_>,
        lat: f64,
        lon: f64,
        radius_m: f64,
        limit: usize,
    ) -> redis::RedisResult<Vec<DriverFix>> {
        let mut conn = self.conn.clone();
        self.stats.round_trips.inc();
        let found: Vec<(String, f64)> = redis::cmd("GEOSEARCH")
            .arg(shard.geo())
            .arg("FROMLONLAT")
            .arg(lon)
            .arg(lat)
            .arg("BYRADIUS")
            .arg(radius_m)
            .arg("m")
            .arg("ASC")
            .arg("COUNT")
            .arg(limit * 2 + 10)
            .arg("WITHDIST")
            .query_async(&mut conn)
            .await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        self.stats.round_trips.inc();
        let ids: Vec<&String> = found.iter().map(|(id, _)| id).collect();
        let fixes: Vec<Option<String>> =
            redis::cmd("HMGET").arg(shard.presence()).arg(&ids).query_async(&mut conn).await?;
        Ok(fixes.into_iter().flatten().filter_map(|json| serde_json::from_str::<DriverFix>(&json).ok()).collect())
    }
}

impl Lookups for RedisLookups {
    fn last_fix<'a>(&'a self, driver_id: &'a str) -> Answer<'a, Option<DriverFix>> {
        async move {
            let mut conn = self.conn.clone();
            self.stats.round_trips.inc();
            let presence = self.keys.shard(self.keys.shard_of_driver(driver_id)).presence();
            let json: Option<String> = conn.hget(presence, driver_id).await.map_err(unavailable)?;
            Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
        }
        .boxed()
    }

    /// From the GEO sets, nearest first; presence entries of drivers gone stale are skipped.
    fn near(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Answer<'_, Option<Vec<NearDriver>>> {
        async move {
            let asked = self.keys.shards().map(|shard| self.near_in(shard, lat, lon, radius_m, limit));
            let mut fixes = Vec::new();
            for found in futures::future::join_all(asked).await {
                fixes.extend(found.map_err(unavailable)?);
            }
            let fresh_after = now_ms() - self.stale_ms;
            let candidates =
                fixes.into_iter().filter(|fix| fix.online && fix.last_seen_ms >= fresh_after).map(|fix| NearDriver {
                    distance_m: distance_m(lat, lon, fix.lat, fix.lon),
                    driver_id: fix.driver_id,
                    lat: fix.lat,
                    lon: fix.lon,
                    last_seen_ms: fix.last_seen_ms,
                });
            Ok(Some(nearest_first(candidates, radius_m, limit)))
        }
        .boxed()
    }

    fn revoke_shares<'a>(&'a self, driver_id: &'a str, before_ms: i64, keep: Duration) -> Answer<'a, ()> {
        async move {
            let mut conn = self.conn.clone();
            self.stats.round_trips.inc();
            let keep_ms = keep.as_millis().max(1) as u64;
            let options = redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(keep_ms));
            conn.set_options(self.keys.revoked(driver_id), before_ms, options).await.map_err(unavailable)
        }
        .boxed()
    }

    fn shares_revoked_before<'a>(&'a self, driver_id: &'a str) -> Answer<'a, Option<i64>> {
        async move {
            let mut conn = self.conn.clone();
            self.stats.round_trips.inc();
            conn.get(self.keys.revoked(driver_id)).await.map_err(unavailable)
        }
        .boxed()
    }

    fn healthy(&self) -> BoxFuture<'_, Option<bool>> {
        async move {
            let mut conn = self.conn.clone();
            let up = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
            self.stats.set_up(up);
            Some(up)
        }
        .boxed()
    }
}
