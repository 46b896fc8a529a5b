//! The server under test, as a process of its own: started on a free loopback port with a random admin key (in
//! its environment, so `ps` does not show it), its address read from the line it prints when it listens, its log
//! drained so it never blocks on a full pipe, and stopped with SIGTERM when dropped.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

pub struct Launched {
    child: Child,
    /// The history directory made for this launch (removed when dropped), unless the args named one.
    data_dir: Option<std::path::PathBuf>,
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// The admin key the server was given (random per launch): it may send pings for any driver and read
    /// `/metrics`.
    pub key: String,
}

impl Launched {
    /// Starts `bin` with `args` after the harness's own (`--addr 127.0.0.1:0`, JSON logs, no tiles, no
    /// per-address connection cap: every simulated client comes from 127.0.0.1).
    pub fn start(bin: &Path, args: &[String]) -> anyhow::Result<Launched> {
        let key = format!("load-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut command = Command::new(bin);
        command.env("PULSEMAP_ADMIN_KEY", &key);
        command.args(["--addr", "127.0.0.1:0", "--log-format", "json", "--tile-url", "none"]);
        command.args(["--max-connections-per-ip", "0"]);
        // History goes to a directory of this launch's own, never into the working directory.
        let named = args.iter().any(|a| a == "--data-dir" || a == "--database-url" || a == "--no-history");
        let data_dir = (!named).then(|| {
            std::env::temp_dir().join(format!("pulsemap-load-{}-{:08x}", std::process::id(), fastrand::u32(..)))
        });
        if let Some(dir) = &data_dir {
            command.arg("--data-dir").arg(dir);
        }
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().ok_or_else(|| anyhow::anyhow!("the server exited before listening"))??;
            if let Some(addr) = protocol::ops::listening_addr(&line) {
                break addr;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Launched { child, data_dir, url: format!("http://{addr}"), key })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
