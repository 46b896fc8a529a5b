//! Every Redis key and channel name under one prefix, in one place (the README's key table lists them).
//!
//! The state is split into **shards** ([`ShardKeys`]): a driver's counts, presence, GEO member, attribution and
//! the stream that carries its changes live in the shard of its id, and an order slot's counts in the shard of
//! its cell, so each shard's tick write, load and takeover script touches one shard's keys only. With one shard
//! (one Redis) the shard's keys are the prefix's own, the layout of a single Redis. On a Redis Cluster each shard
//! has a hash tag of its own, chosen so the shards' slots are spread evenly over the slot space (and so over the
//! masters of a cluster whose slots are split evenly), while the coordination keys (leases, orders, tracking
//! claims) keep the prefix's tag.

use crate::state::cell::Cell;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// What every coordination key starts with: the prefix, or on a cluster `{prefix}`, a hash tag that puts
    /// them in one slot (so transactions and scripts over them never cross slots).
    prefix: String,
    /// What every channel starts with: the plain prefix, so sharded channels spread over the shards.
    channels: String,
    /// Where each shard's keys start.
    shards: Vec<String>,
}

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16_384;

/// CRC-16/XMODEM, the checksum Redis Cluster maps keys to slots with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The cluster slot of a hash tag's content.
pub(crate) fn slot_of_tag(tag: &str) -> u16 {
    crc16(tag.as_bytes()) % SLOTS
}

/// FNV-1a: a hash that is the same on every instance and every build (what assigns drivers and cells to shards).
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The tag of shard `index` of `shards`: `prefix.index`, with the first suffix `.n` that puts its slot in the
/// shard's share of the slot space (the shards' slots then sit evenly apart, as the masters' ranges do).
fn shard_tag(plain: &str, index: usize, shards: usize) -> String {
    let share = |slot: u16| usize::from(slot) * shards / usize::from(SLOTS);
    (0u32..)
        .map(|n| format!("{plain}.{index}.{n}"))
        .find(|tag| share(slot_of_tag(tag)) == index)
        .expect("some suffix lands in every share")
}

impl Keys {
    /// `shards` (at least 1) must be the same on every instance sharing the Redis (checked at start).
    pub fn new(prefix: &str, cluster: bool, shards: usize) -> Keys {
        let plain = prefix.trim_end_matches(':').to_string();
        let tagged = if cluster { format!("{{{plain}}}") } else { plain.clone() };
        let shards = match shards.max(1) {
            1 => vec![tagged.clone()],
            n if cluster => (0..n).map(|i| format!("{{{}}}", shard_tag(&plain, i, n))).collect(),
            n => (0..n).map(|i| format!("{plain}.{i}")).collect(),
        };
        Keys { prefix: tagged, channels: plain, shards }
    }

    /// How many shards the state is split into.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The keys of one shard.
    pub fn shard(&self, index: usize) -> ShardKeys<'_> {
        ShardKeys { index, prefix: &self.shards[index] }
    }

    /// Every shard's keys, in order.
    pub fn shards(&self) -> impl Iterator<Item = ShardKeys<'_>> {
        (0..self.shards.len()).map(|i| self.shard(i))
    }

    /// The shard of a driver's counts, presence, GEO member and attribution.
    pub fn shard_of_driver(&self, driver_id: &str) -> usize {
        (stable_hash(driver_id.as_bytes()) % self.shards.len() as u64) as usize
    }

    /// The shard of a cell's order counts.
    pub fn shard_of_cell(&self, cell: Cell) -> usize {
        (stable_hash(cell.as_str().as_bytes()) % self.shards.len() as u64) as usize
    }

    /// The partition a cell's counts live in: its two-letter geohash prefix, a part of the key name within a shard (a
    /// loading instance reads the partitions the shard lists).
    pub fn partition(cell: Cell) -> String {
        cell.prefix(2).as_str().to_string()
    }

    /// The shard count the Redis was set up with (the first instance sets it; the others must agree).
    pub fn shard_setting(&self) -> String {
        format!("{}:shards", self.prefix)
    }

    /// Set (to whom) once a survivor has taken an instance's share over in every shard: the instance's lease,
    /// seeing it, has its writer look at every shard's own mark. With one shard it is that shard's mark.
    pub fn reaped(&self, instance: &str) -> String {
        format!("{}:reaped:{instance}", self.prefix)
    }

    /// Instances whose lease lapsed and whose shards are being taken over (any survivor finishes the job).
    pub fn reaping(&self) -> String {
        format!("{}:reaping", self.prefix)
    }

    /// The channel of one driver's tracking messages.
    pub fn track_channel(&self, driver_id: &str) -> String {
        format!("{}{driver_id}", self.track_prefix())
    }

    /// What every tracking channel's name starts with.
    pub fn track_prefix(&self) -> String {
        format!("{}:trk:", self.channels)
    }

    /// When a driver's share links were last revoked (unix ms), kept as long as a link can live.
    pub fn revoked(&self, driver_id: &str) -> String {
        format!("{}:revoked:{driver_id}", self.prefix)
    }

    /// The data generation: set once by the first instance on a Redis; a Redis that lost its data has none.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Who tracks whom: members `driver|instance`, scored by when the claim lapses unless renewed.
    pub fn tracked(&self) -> String {
        format!("{}:tracked", self.prefix)
    }

    /// One order of the delivery loop: its version and its JSON.
    pub fn order(&self, order_id: &str) -> String {
        format!("{}:order:{order_id}", self.prefix)
    }

    /// Orders whose matching must run again, scored by when.
    pub fn orders_due(&self) -> String {
        format!("{}:orders:due", self.prefix)
    }

    /// What a driver holds: an offer or a job.
    pub fn hold(&self, driver_id: &str) -> String {
        format!("{}:hold:{driver_id}", self.prefix)
    }

    /// Driver -> the instance whose socket of it takes offers.
    pub fn sockets(&self) -> String {
        format!("{}:sockets", self.prefix)
    }

    /// The channel of messages for driver sockets on one instance.
    pub fn inbox(&self, instance: &str) -> String {
        format!("{}:inbox:{instance}", self.channels)
    }

    /// The channel of one order's changes (with an empty id: what every such channel starts with).
    pub fn order_channel(&self, order_id: &str) -> String {
        format!("{}:ord:{order_id}", self.channels)
    }

    /// Every instance that has written here and not yet been reaped.
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// An instance's lease: renewed about every second, it lapses a few seconds after the instance stops.
    pub fn lease(&self, instance: &str) -> String {
        format!("{}:lease:{instance}", self.prefix)
    }

    /// Pub/sub channel of new tracking claims (`driver|instance`): a publishing instance learns of one at once.
    pub fn tracked_news(&self) -> String {
        format!("{}:tracked:news", self.channels)
    }

    /// Bumped whenever a claim comes or goes, so instances re-read the claims only when they changed.
    pub fn tracked_version(&self) -> String {
        format!("{}:tracked:version", self.prefix)
    }
}

/// The keys of one shard of the state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardKeys<'a> {
    pub index: usize,
    prefix: &'a str,
}

impl ShardKeys<'_> {
    /// What the shard's keys start with: with one shard, the prefix's own.
    pub fn prefix(&self) -> &str {
        self.prefix
    }

    /// The data generation as this shard holds it: every tick write into the shard is guarded by it. With one
    /// shard it is the epoch itself; with more, a copy each shard takes on when a generation begins.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Finest cell -> drivers counted there, for one partition.
    pub fn drivers(&self, partition: &str) -> String {
        format!("{}:{{{partition}}}:d", self.prefix)
    }

    /// Finest cell -> orders in one 10-second slot, for one partition.
    pub fn orders(&self, partition: &str, slot: i64) -> String {
        format!("{}:{{{partition}}}:o:{slot}", self.prefix)
    }

    /// The partitions that have counts (what a loading instance reads).
    pub fn partitions(&self) -> String {
        format!("{}:regions", self.prefix)
    }

    /// Driver id -> last fix as JSON.
    pub fn presence(&self) -> String {
        format!("{}:presence", self.prefix)
    }

    /// Online drivers' positions, for nearest-driver queries.
    pub fn geo(&self) -> String {
        format!("{}:geo", self.prefix)
    }

    /// One entry per instance tick: the increments every instance applies.
    pub fn stream(&self) -> String {
        format!("{}:stream", self.prefix)
    }

    /// What an instance counts in the heat: driver -> the finest cell it is counted in.
    pub fn counted(&self, instance: &str) -> String {
        format!("{}:counted:{instance}", self.prefix)
    }

    /// How many tick writes of an instance landed: each tick transaction increments it, so a reply that is not
    /// the last one plus one means writes were lost (a failover) or doubled (a retried write that had run).
    pub fn seq(&self, instance: &str) -> String {
        format!("{}:seq:{instance}", self.prefix)
    }

    /// Driver -> the instance that heard it last (whose lapse takes it offline).
    pub fn owner(&self) -> String {
        format!("{}:owner", self.prefix)
    }

    /// Instances that have written attribution (`counted`) into this shard: what a start over clears, read in
    /// the shard's own slot.
    pub fn writers(&self) -> String {
        format!("{}:writers", self.prefix)
    }

    /// Set when an instance's share of this shard was taken over (by whom): an instance that finds its own must
    /// write its drivers of the shard again.
    pub fn reaped(&self, instance: &str) -> String {
        format!("{}:reaped:{instance}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_layout_of_a_single_redis() {
        let keys = Keys::new("pm:", false, 1);
        let cell = Cell::at(6.5244, 3.3792);
        let partition = Keys::partition(cell);
        assert_eq!(partition, "s1");
        let shard = keys.shard(0);
        assert_eq!(shard.drivers(&partition), "pm:{s1}:d");
        assert_eq!(shard.orders(&partition, 42), "pm:{s1}:o:42");
        assert_eq!(keys.track_channel("drv-1"), "pm:trk:drv-1");
        assert!(keys.track_channel("drv-1").starts_with(&keys.track_prefix()));
        assert_eq!(shard.partitions(), "pm:regions", "the key name stays what running deployments have");
        assert_eq!(shard.epoch(), keys.epoch(), "one shard's epoch is the epoch");
        assert_eq!((keys.shard_of_driver("anyone"), keys.shard_of_cell(cell)), (0, 0));
        // On a cluster every key is in the prefix's slot (the first hash tag wins); channels are spread.
        let cluster = Keys::new("pm", true, 1);
        assert_eq!(cluster.shard(0).drivers(&partition), "{pm}:{s1}:d");
        assert_eq!(
            (cluster.shard(0).presence().as_str(), cluster.track_channel("d1").as_str()),
            ("{pm}:presence", "pm:trk:d1")
        );
    }

    #[test]
    fn crc16_is_the_clusters_checksum() {
        // The values `CLUSTER KEYSLOT` gives.
        assert_eq!(slot_of_tag("foo"), 12_182);
        assert_eq!(slot_of_tag("123456789"), 0x31c3 % SLOTS);
    }

    #[test]
    fn shards_of_a_cluster_sit_evenly_apart_and_drivers_spread_over_them() {
        let keys = Keys::new("pm", true, 12);
        assert_eq!(keys.shard_count(), 12);
        for shard in keys.shards() {
            let prefix = shard.prefix();
            assert!(prefix.starts_with("{pm.") && prefix.ends_with('}'), "{prefix}");
            let slot = usize::from(slot_of_tag(&prefix[1..prefix.len() - 1]));
            assert_eq!(slot * 12 / usize::from(SLOTS), shard.index, "shard {} at slot {slot}", shard.index);
            assert_ne!(shard.epoch(), keys.epoch(), "each shard keeps its own copy of the epoch");
        }
        // Three masters with even slot ranges hold four shards each.
        let per_master = (0..3).map(|m| keys.shards().filter(|s| s.index * 3 / 12 == m).count()).collect::<Vec<_>>();
        assert_eq!(per_master, [4, 4, 4]);
        let mut drivers = [0usize; 12];
        for i in 0..12_000 {
            drivers[keys.shard_of_driver(&format!("drv-{i}"))] += 1;
        }
        assert!(drivers.iter().all(|n| (800..1_200).contains(n)), "{drivers:?}");
        assert_eq!(keys.shard_of_driver("drv-7"), keys.shard_of_driver("drv-7"));
        let plain = Keys::new("pm", false, 3);
        assert_eq!(plain.shard(2).presence(), "pm.2:presence");
    }
}
