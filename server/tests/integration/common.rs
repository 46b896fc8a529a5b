//! What every integration test needs: a real server on a free loopback port, and real HTTP and WebSocket
//! clients. Conditions that take a tick or two are awaited with a deadline, never with a fixed sleep.

#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pulsemap::{Config, Running};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{connect_async, tungstenite::Message, MaybeTlsStream, WebSocketStream};

/// The keys and secret every test server has (test values, not secrets).
pub const FLEET_KEY: &str = "test-fleet-key-0123456789";
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const SECRET: &str = "test-secret-0123456789-0123456789";

/// Test defaults: a free port, a fast tick (conditions settle in milliseconds), and known keys.
pub fn config() -> Config {
    let mut config = Config::for_tests();
    config.tick_ms = 20;
    config.secret = Some(SECRET.into());
    config.fleet_key = Some(FLEET_KEY.into());
    config.admin_key = Some(ADMIN_KEY.into());
    config
}

pub async fn start(config: Config) -> Running {
    pulsemap::start(config).await.expect("server starts")
}

pub fn url(server: &Running, path: &str) -> String {
    format!("http://{}{path}", server.addr)
}

pub fn now_ms() -> i64 {
    pulsemap::now_ms()
}

pub fn ping(driver: &str, lat: f64, lon: f64) -> Value {
    serde_json::json!({"driver_id": driver, "lat": lat, "lon": lon, "ts": now_ms()})
}

/// A POST with the admin key (which may do anything): what most tests want.
pub async fn post(server: &Running, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    post_as(server, path, body, Some(ADMIN_KEY)).await
}

/// A POST with `bearer` as the credential, or none.
pub async fn post_as(
    server: &Running,
    path: &str,
    body: impl Into<reqwest::Body>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url(server, path)).header("content-type", "application/json");
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.body(body).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn post_json(server: &Running, path: &str, body: &Value) -> (u16, Value) {
    post(server, path, serde_json::to_vec(body).unwrap()).await
}

pub async fn post_json_as(server: &Running, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
    post_as(server, path, serde_json::to_vec(body).unwrap(), bearer).await
}

/// A GET with the admin key.
pub async fn get(server: &Running, path: &str) -> (u16, Value) {
    get_as(server, path, Some(ADMIN_KEY)).await
}

pub async fn get_as(server: &Running, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let (status, text) = get_text_as(server, path, bearer).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn get_text(server: &Running, path: &str) -> (u16, String) {
    get_text_as(server, path, Some(ADMIN_KEY)).await
}

pub async fn get_text_as(server: &Running, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url(server, path));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// A new driver through the open "Enter as Driver" path: its id and token.
pub async fn enter(server: &Running) -> (String, String) {
    let (status, body) = post_as(server, "/api/drivers/enter", "", None).await;
    assert_eq!(status, 201, "{body}");
    (body["driver_id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

/// Whether this process may open `needed` files: its limit is raised toward the hard one, and when even that is
/// too low the test says it is skipped (and why) instead of failing for the machine's sake. Tests run side by
/// side in this one process, so the ask includes room for the others.
pub fn open_files_for(needed: u64, test: &str) -> bool {
    let limit = tools::system::raise_open_files(needed.max(16_384));
    if limit < needed {
        eprintln!("SKIPPED {test}: it needs {needed} open files and this machine's hard limit is {limit}");
        return false;
    }
    true
}

/// The real `pulsemap` binary: `--addr 127.0.0.1:0 --log-format json`, `data_dir` for its history, the test keys
/// in its environment (never on its command line), then `args`; killed when dropped. Its JSON log, line by line.
pub fn spawn_binary(
    args: &[&str],
    data_dir: &std::path::Path,
) -> (tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulsemap"))
        .args(["--addr", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("PULSEMAP_FLEET_KEY", FLEET_KEY)
        .env("PULSEMAP_ADMIN_KEY", ADMIN_KEY)
        .env("PULSEMAP_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the pulsemap binary starts");
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    (child, lines)
}

/// [`spawn_binary`], once it listens: the child and its address (the rest of its log is read and dropped).
pub async fn spawn_listening(args: &[&str], data_dir: &std::path::Path) -> (tokio::process::Child, String) {
    let (child, mut lines) = spawn_binary(args, data_dir);
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("the server logs its address");
        if let Some(addr) = protocol::ops::listening_addr(&line) {
            break addr.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Awaits `check` returning `Some` within `secs` seconds, polling.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric's value from `/metrics` (0 when absent).
pub async fn metric(server: &Running, name_and_labels: &str) -> f64 {
    let (_, text) = get_text(server, "/metrics").await;
    text.lines().find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// The Redis a test uses: `REDIS_URL` when it is set, otherwise a throwaway `redis-server` on a free port,
/// killed when dropped (`scripts/setup --test` installs redis-server).
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
    external: Option<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => RedisServer { child: None, port: 0, external: Some(url) },
            _ => RedisServer::start_own(),
        }
    }

    /// Always a server of the test's own, for tests that kill and restart it.
    pub fn start_own() -> RedisServer {
        let port = restartable_port();
        let mut server = RedisServer { child: None, port, external: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/setup --test)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        self.external.clone().unwrap_or_else(|| format!("redis://127.0.0.1:{}/0", self.port))
    }

    /// Kills the server (no persistence: its data is gone) and starts a new one on the same port.
    pub fn restart(&mut self) {
        assert!(self.external.is_none(), "only a test's own redis-server can be restarted");
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): it answers nothing, keeps its connections and its data.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("only a test's own redis-server can be signalled");
        let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Starts a server again on the same port after [`RedisServer::kill`]: empty, as after a crash without
    /// persistence.
    pub fn revive(&mut self) {
        assert!(self.external.is_none() && self.child.is_none(), "only a killed server of the test's own");
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port for a server that will be stopped and started again on it. Chosen below the kernel's range for
/// `bind(0)` (`ip_local_port_range`), so no other test's or process's ephemeral port takes it while it is free.
pub fn restartable_port() -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    loop {
        let port = fastrand::u16(10_000..ephemeral_low.max(10_001));
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A key prefix no other test or run uses (a shared `REDIS_URL` keeps what earlier runs wrote).
pub fn unique_prefix(name: &str) -> String {
    format!("test-{name}-{:08x}", fastrand::u32(..))
}

/// A scenario (an `async fn(Shared)`) as two tests: on one Redis (`$one`) and on a Redis Cluster (`$cluster`).
macro_rules! on_both {
    ($scenario:ident: $one:ident, $cluster:ident) => {
        #[tokio::test]
        async fn $one() {
            $scenario(Shared::one()).await;
        }

        #[tokio::test]
        async fn $cluster() {
            $scenario(Shared::cluster()).await;
        }
    };
}
pub(crate) use on_both;

/// Where instances share their state in a test: one Redis, or a real Redis Cluster.
pub enum Shared {
    One(RedisServer),
    Cluster(tools::redis_cluster::RedisCluster),
}

impl Shared {
    pub fn one() -> Shared {
        Shared::One(RedisServer::start())
    }

    /// A cluster of three masters (`REDIS_CLUSTER` when set).
    pub fn cluster() -> Shared {
        Shared::Cluster(tools::redis_cluster::RedisCluster::start(3, 0).expect("a Redis Cluster starts"))
    }

    /// Test defaults on it, under `prefix` (from [`unique_prefix`]).
    pub fn config(&self, prefix: &str) -> Config {
        match self {
            Shared::One(redis) => redis_config(redis, prefix),
            Shared::Cluster(cluster) => {
                let mut config = config();
                config.redis_cluster = Some(cluster.seeds());
                config.redis_prefix = prefix.to_string();
                config.redis_connect_secs = 10;
                config
            }
        }
    }

    /// The binary's flags for it.
    pub fn args(&self) -> [String; 2] {
        match self {
            Shared::One(redis) => ["--redis-url".into(), redis.url()],
            Shared::Cluster(cluster) => ["--redis-cluster".into(), cluster.seeds()],
        }
    }
}

/// Test defaults on a shared Redis, under `prefix` (from [`unique_prefix`]).
pub fn redis_config(redis: &RedisServer, prefix: &str) -> Config {
    let mut config = config();
    config.redis_url = Some(redis.url());
    config.redis_prefix = prefix.to_string();
    config.redis_connect_secs = 10;
    config
}

/// A WebSocket to `path` (with the admin key) from a client whose kernel receive buffer is tiny and which reads
/// only when the test does: the server's sends to it back up after a few kilobytes.
pub async fn slow_reader(server: &Running, path: &str) -> WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut request = format!("ws://{}{path}", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {ADMIN_KEY}").parse().unwrap());
    tokio_tungstenite::client_async(request, stream).await.unwrap().0
}

/// Calls `feed` (which makes the server send to some slow reader) until the bytes the server sent on sockets of
/// `kind` stop growing for ten rounds: the reader's buffers, and the server's toward it, are full. The deadline
/// is a guard: filling loopback buffers takes a few seconds, longer on a busy machine.
pub async fn until_sends_back_up<F, Fut>(server: &Running, kind: &str, mut feed: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let (mut last_bytes, mut stuck_rounds) = (-1.0, 0);
    while stuck_rounds < 10 {
        assert!(tokio::time::Instant::now() < deadline, "the server's sends never backed up");
        feed().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let bytes = metric(server, &format!("pulsemap_bytes_sent_total{{kind=\"{kind}\"}}")).await;
        stuck_rounds = if bytes == last_bytes { stuck_rounds + 1 } else { 0 };
        last_bytes = bytes;
    }
}

/// 2,000 drivers jumping to random places in Lagos (the `round`th time): most heat cells change every tick.
pub async fn churn(server: &Running, round: u64) {
    let mut rng = fastrand::Rng::with_seed(round);
    let batch: Vec<Value> =
        (0..2_000).map(|i| ping(&format!("churn-{i}"), 6.40 + rng.f64() * 0.28, 3.27 + rng.f64() * 0.31)).collect();
    post_json(server, "/api/pings", &Value::Array(batch)).await;
}

pub struct Socket {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    /// Connects with the admin key on the handshake (it may drive and watch any driver).
    pub async fn connect(server: &Running, path: &str) -> Socket {
        Socket::connect_as(server, path, Some(ADMIN_KEY)).await
    }

    /// Connects with `bearer` on the handshake, or no credential (to send an `auth` message, as browsers do).
    pub async fn connect_as(server: &Running, path: &str, bearer: Option<&str>) -> Socket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}{path}", server.addr).into_client_request().unwrap();
        if let Some(bearer) = bearer {
            request.headers_mut().insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        }
        let (inner, _) = connect_async(request).await.expect("websocket connects");
        Socket { inner }
    }

    pub async fn send(&mut self, value: &Value) {
        self.inner.send(Message::Text(value.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.inner.send(Message::Text(text.to_string().into())).await.expect("send");
    }

    /// The next JSON message (skipping control frames), within 5 s.
    pub async fn next(&mut self) -> Value {
        self.try_next(Duration::from_secs(5)).await.expect("a message within 5 s")
    }

    pub async fn next_as<T: DeserializeOwned>(&mut self) -> T {
        serde_json::from_value(self.next().await).expect("message of the expected type")
    }

    /// The next JSON message, or `None` if none arrives within `wait` (or the socket closed).
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.inner.next()).await.ok()??.ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON message")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads messages until one satisfies `pred`, within `secs` seconds.
    pub async fn until(&mut self, secs: u64, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next(left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!("no message matching: {what}"),
            }
        }
    }

    /// Whether the server closed the socket (a close frame or end of stream) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(1006),
                Ok(Some(Ok(Message::Close(frame)))) => return Some(frame.map_or(1005, |f| u16::from(f.code))),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
