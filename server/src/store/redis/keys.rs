//! Every Redis key and channel name under one prefix, in one place (the README's key table lists them).

use crate::state::cell::Cell;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// What every key starts with: the prefix, or on a cluster `{prefix}`, a hash tag that puts every key of the
    /// state in one slot (so transactions and scripts never cross slots).
    prefix: String,
    /// What every channel starts with: the plain prefix, so sharded channels spread over the shards.
    channels: String,
}

impl Keys {
    pub fn new(prefix: &str, cluster: bool) -> Keys {
        let plain = prefix.trim_end_matches(':').to_string();
        let prefix = if cluster { format!("{{{plain}}}") } else { plain.clone() };
        Keys { prefix, channels: plain }
    }

    /// What every key starts with (before its `:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The partition a cell's counts live in: its two-letter geohash prefix, used as a Redis Cluster hash tag so a
    /// partition's keys share a slot.
    pub fn partition(cell: Cell) -> String {
        cell.prefix(2).as_str().to_string()
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

    /// Set when an instance's share was taken over (by whom): an instance that finds its own must write its
    /// share again.
    pub fn reaped(&self, instance: &str) -> String {
        format!("{}:reaped:{instance}", self.prefix)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitions_keys_share_its_hash_tag() {
        let keys = Keys::new("pm:", false);
        let cell = Cell::at(6.5244, 3.3792);
        let partition = Keys::partition(cell);
        assert_eq!(partition, "s1");
        assert_eq!(keys.drivers(&partition), "pm:{s1}:d");
        assert_eq!(keys.orders(&partition, 42), "pm:{s1}:o:42");
        assert_eq!(keys.track_channel("drv-1"), "pm:trk:drv-1");
        assert!(keys.track_channel("drv-1").starts_with(&keys.track_prefix()));
        assert_eq!(keys.partitions(), "pm:regions", "the key name stays what running deployments have");
        // On a cluster every key is in the prefix's slot (the first hash tag wins); channels are spread.
        let cluster = Keys::new("pm", true);
        assert_eq!(cluster.drivers(&partition), "{pm}:{s1}:d");
        assert_eq!((cluster.presence().as_str(), cluster.track_channel("d1").as_str()), ("{pm}:presence", "pm:trk:d1"));
    }
}
