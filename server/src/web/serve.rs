//! The accept loop. axum's `serve` sets no timer, so hyper's header-read timeout never fires: a client that
//! sends its request headers a byte at a time (slowloris) holds a connection, and a file descriptor, forever.
//! Here every connection gets `--header-timeout-secs` to send its headers, and each client address at most
//! `--max-connections-per-ip` connections (HTTP and WebSocket alike), refused at accept and counted.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Open connections per client address, capped.
#[derive(Clone, Default)]
pub(crate) struct Connections {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// 0: no cap.
    per_ip: usize,
}

/// One connection's place in [`Connections`], given back when dropped.
pub(crate) struct Slot {
    connections: Connections,
    ip: IpAddr,
}

/// The connection's slot, in every request's extensions: a WebSocket upgrade takes it (the socket outlives the
/// HTTP connection task that took it at accept), so an upgraded connection still counts, once.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(Arc<Mutex<Option<Slot>>>);

impl ConnectionSlot {
    pub fn take(&self) -> Option<Slot> {
        self.0.lock().take()
    }
}

impl Connections {
    pub fn new(per_ip: usize) -> Connections {
        Connections { open: Arc::default(), per_ip }
    }

    /// A place for one more connection from `ip`, or `None` when it already has its share.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock();
        let n = open.entry(ip).or_default();
        if self.per_ip > 0 && *n >= self.per_ip {
            return None;
        }
        *n += 1;
        Some(Slot { connections: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The answer to a connection over the address's share, written before closing it.
fn too_many() -> &'static [u8] {
    static ANSWER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let body =
                r#"{"error":{"code":"too_many_connections","message":"this address has too many connections open"}}"#;
            format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .as_bytes()
}

/// Whether a connection ended because its request headers were too slow.
fn is_header_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout)
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish (each is asked to close
/// gracefully) and returns once they have.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    connections: Connections,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = connections.take(peer.ip()) else {
            metrics.connections_refused.inc();
            // Told why, if the socket takes it at once; never waited on.
            let _ = stream.try_write(too_many());
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = ConnectionSlot(Arc::new(Mutex::new(Some(slot))));
        let for_requests = slot.clone();
        let service = app.clone().map_request(move |request: axum::http::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            request.extensions_mut().insert(for_requests.clone());
            request
        });
        let (builder, shutdown, metrics) = (builder.clone(), shutdown.clone(), metrics.clone());
        tasks.spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(service);
            let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            let mut closing = false;
            loop {
                tokio::select! {
                    ended = conn.as_mut() => {
                        if ended.as_ref().is_err_and(|e| is_header_timeout(e.as_ref())) {
                            metrics.header_timeouts.inc();
                        }
                        break;
                    }
                    _ = shutdown.cancelled(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}
