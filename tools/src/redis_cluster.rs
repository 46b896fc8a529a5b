//! A real Redis Cluster for a test or a load run: `REDIS_CLUSTER` (seed `host:port`s) when it is set, otherwise
//! `redis-server --cluster-enabled yes` processes of its own on free ports, joined by
//! `redis-cli --cluster create` (`scripts/setup --test` installs both), killed and removed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub struct RedisCluster {
    /// `host:port` of every node.
    nodes: Vec<String>,
    /// The processes and their directory; empty with `REDIS_CLUSTER`.
    own: Vec<(u16, Option<Child>)>,
    dir: Option<PathBuf>,
}

/// A port free for the node and for its cluster bus (the port + 10000).
fn free_port_pair() -> u16 {
    loop {
        let port = fastrand::u16(20_000..30_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// `redis-cli -p port args...`: its output.
fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl RedisCluster {
    /// `REDIS_CLUSTER` when set, otherwise a cluster of its own with `masters` masters and `replicas` replicas
    /// of each.
    pub fn start(masters: usize, replicas: usize) -> anyhow::Result<RedisCluster> {
        match std::env::var("REDIS_CLUSTER") {
            Ok(seeds) if !seeds.is_empty() => {
                Ok(RedisCluster { nodes: seeds.split(',').map(str::to_string).collect(), own: Vec::new(), dir: None })
            }
            _ => RedisCluster::start_own(masters, replicas),
        }
    }

    /// Always a cluster of its own (for tests that kill its nodes).
    pub fn start_own(masters: usize, replicas: usize) -> anyhow::Result<RedisCluster> {
        static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pulsemap-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cluster = RedisCluster { nodes: Vec::new(), own: Vec::new(), dir: Some(dir.clone()) };
        for _ in 0..masters * (1 + replicas) {
            let port = free_port_pair();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join(format!("{port}.log")))
                .arg("--dbfilename")
                .arg(format!("dump-{port}.rdb"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("redis-server does not start (scripts/setup --test installs it)")?;
            cluster.nodes.push(format!("127.0.0.1:{port}"));
            cluster.own.push((port, Some(child)));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, _) in &cluster.own {
            while cli(*port, &["PING"]).unwrap_or_default().trim() != "PONG" {
                if Instant::now() > deadline {
                    bail!("redis-server on port {port} did not answer");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&cluster.nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()?;
        if !created.status.success() {
            bail!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&created.stdout));
        }
        cluster.wait_ok(Duration::from_secs(30))?;
        // A replica that has not synced yet cannot take over (its data is "too old"): wait until each has.
        let deadline = Instant::now() + Duration::from_secs(30);
        for (port, _) in &cluster.own {
            loop {
                let info = cli(*port, &["INFO", "replication"]).unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the replica on port {port} did not sync with its master:\n{info}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(cluster)
    }

    /// Seed nodes, as `--redis-cluster` takes them.
    pub fn seeds(&self) -> String {
        self.nodes.join(",")
    }

    /// Waits until every live node of its own says `cluster_state:ok` and knows the same masters for every slot.
    pub fn wait_ok(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let live: Vec<u16> = self.own.iter().filter(|(_, c)| c.is_some()).map(|(p, _)| *p).collect();
            let ok =
                live.iter().all(|p| cli(*p, &["CLUSTER", "INFO"]).unwrap_or_default().contains("cluster_state:ok"));
            let views: Vec<Vec<u16>> = live.iter().map(|p| self.masters_seen_by(*p)).collect();
            if ok && views.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let seen = live.first().map(|p| cli(*p, &["CLUSTER", "NODES"]).unwrap_or_default()).unwrap_or_default();
                bail!("the cluster did not reach cluster_state:ok within {within:?}; a node sees:\n{seen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the masters that hold slots, as one node sees them (sorted).
    fn masters_seen_by(&self, port: u16) -> Vec<u16> {
        masters_in(&cli(port, &["CLUSTER", "NODES"]).unwrap_or_default())
    }

    /// The masters that hold slots now.
    pub fn masters(&self) -> Vec<u16> {
        let live = self.own.iter().find(|(_, c)| c.is_some()).map(|(p, _)| *p);
        live.map(|p| self.masters_seen_by(p)).unwrap_or_default()
    }

    /// The master serving `key`'s slot now (as a live node of its own sees it).
    pub fn master_for(&self, key: &str) -> Option<u16> {
        let live = self.own.iter().find(|(_, c)| c.is_some()).map(|(p, _)| *p)?;
        let slot: u16 = cli(live, &["CLUSTER", "KEYSLOT", key]).ok()?.trim().parse().ok()?;
        let nodes = cli(live, &["CLUSTER", "NODES"]).ok()?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let serves = fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').map(|n| n.parse::<u16>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(from)), Some(Ok(to))) => (from..=to).contains(&slot),
                    (Some(Ok(only)), None) => only == slot,
                    _ => false,
                }
            });
            let master = fields.get(2).is_some_and(|f| f.contains("master") && !f.contains("fail"));
            (serves && master).then(|| fields.get(1)?.split([':', '@']).nth(1)?.parse().ok()).flatten()
        })
    }

    /// `redis-cli` against one node of its own.
    pub fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        cli(port, args)
    }

    /// Kills a node of its own (as a crash would): its replica is promoted after the node timeout.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.own {
            if *p == port {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.own {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = &self.dir {
            if std::env::var_os("PULSEMAP_KEEP_CLUSTER").is_none() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The masters (ports) of the cluster a seed (`host:port`, comma-separated seeds: the first) belongs to.
pub fn masters_of(seeds: &str) -> anyhow::Result<Vec<u16>> {
    let seed = seeds.split(',').next().unwrap_or_default().trim_start_matches("redis://");
    let port: u16 = seed.rsplit(':').next().unwrap_or_default().parse().context("a seed is host:port")?;
    Ok(masters_in(&cli(port, &["CLUSTER", "NODES"])?))
}

/// The ports of the live masters holding slots in a `CLUSTER NODES` answer, sorted.
fn masters_in(nodes: &str) -> Vec<u16> {
    let mut masters: Vec<u16> = nodes
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
        .filter_map(|f| f[1].split([':', '@']).nth(1)?.parse().ok())
        .collect();
    masters.sort_unstable();
    masters
}

/// Commands each of `ports` has run so far (the sum of `INFO commandstats` calls).
pub fn command_calls(ports: &[u16]) -> Vec<u64> {
    ports
        .iter()
        .map(|port| {
            cli(*port, &["INFO", "commandstats"])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
                .sum()
        })
        .collect()
}

/// Errors of one kind (`CROSSSLOT`, `MOVED`...) each of `ports` has answered so far (`INFO errorstats`).
pub fn error_counts(ports: &[u16], kind: &str) -> Vec<u64> {
    let field = format!("errorstat_{kind}:count=");
    ports
        .iter()
        .map(|port| {
            let stats = cli(*port, &["INFO", "errorstats"]).unwrap_or_default();
            stats.lines().find_map(|l| l.strip_prefix(&field)?.trim().parse().ok()).unwrap_or(0)
        })
        .collect()
}
