//! The PostgreSQL a test or a load run uses: `DATABASE_URL` when it is set, otherwise a throwaway cluster made
//! with `initdb` and run with `pg_ctl` on a free port (`scripts/setup --test` installs PostgreSQL), stopped and
//! removed when dropped. PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` user.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub struct PgServer {
    url: String,
    /// The throwaway cluster's directory and port; `None` with `DATABASE_URL`.
    own: Option<(PathBuf, u16)>,
}

/// Where Debian puts the server's programs (they are not on PATH): the newest version there, or PATH.
fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|e| Some(e.ok()?.path().join("bin"))).filter(|p| p.join(name).exists()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    versions.pop().map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's user.
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// `program args...`, as the `postgres` user when this process is root.
fn run_as_owner(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

impl PgServer {
    /// `DATABASE_URL` when set, otherwise a cluster of its own.
    pub fn start() -> anyhow::Result<PgServer> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(PgServer { url, own: None }),
            _ => PgServer::start_own(),
        }
    }

    /// Always a cluster of its own (for tests that stop and start it).
    pub fn start_own() -> anyhow::Result<PgServer> {
        let dir = std::env::temp_dir().join(format!("pulsemap-pg-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let status = Command::new("chown").args(["postgres:", &dir.display().to_string()]).status()?;
            anyhow::ensure!(status.success(), "cannot hand {} to the postgres user", dir.display());
        }
        let data = dir.join("data");
        let data_s = data.display().to_string();
        let out = run_as_owner(&bin("initdb"), &["-D", &data_s, "-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .context("initdb is not installed (scripts/setup --test installs PostgreSQL)")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let server = PgServer { url, own: Some((dir, port)) };
        server.resume_from_stop()?;
        Ok(server)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a cluster of its own (which may be stopped and started).
    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let (dir, _) = self.own.as_ref().context("only a cluster of the test's own can be stopped or started")?;
        let data = dir.join("data").display().to_string();
        let log = dir.join("log").display().to_string();
        let mut all = vec!["-D", &data, "-l", &log, "-w"];
        all.extend_from_slice(args);
        let out = run_as_owner(&bin("pg_ctl"), &all).stdout(Stdio::null()).output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            bail!("pg_ctl {args:?} failed: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stops the server at once (`-m immediate`: as if it went away), keeping its data.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }

    /// Starts it again after [`PgServer::stop`] (or the first time), waiting until it takes connections.
    pub fn resume_from_stop(&self) -> anyhow::Result<()> {
        let (_, port) = self.own.as_ref().context("only a cluster of the test's own can be started")?;
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off");
        self.pg_ctl(&["-o", &options, "start"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", *port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "PostgreSQL did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some((dir, _)) = &self.own {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A schema name no other test or run uses (a shared `DATABASE_URL` keeps what earlier runs wrote).
pub fn unique_schema(name: &str) -> String {
    format!("test_{name}_{:08x}", fastrand::u32(..))
}
