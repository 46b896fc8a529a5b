//! A WebSocket that reconnects by itself: exponential backoff with jitter, a status for the page's badge, and a
//! hook that re-sends what the server must know after every reconnect (the subscription).

use std::{cell::Cell, rc::Rc};

use futures::{channel::mpsc, FutureExt, SinkExt, StreamExt};
use gloo_net::websocket::{futures::WebSocket, Message, State};
use leptos::task::spawn_local;

use super::{browser_online, sleep, ws_url};
use crate::ui::ConnState;

/// What the page does with the socket's events. All run on the page's single thread.
pub struct Handlers {
    /// Messages to send right after each (re)connect, such as the current subscription.
    pub on_open: Box<dyn FnMut() -> Vec<String>>,
    /// Each text message from the server.
    pub on_message: Box<dyn FnMut(&str)>,
    /// The connection's state changed (for the page's badge).
    pub on_conn: Box<dyn FnMut(ConnState)>,
    /// The connection dropped: whatever was in flight may not have arrived.
    pub on_down: Box<dyn FnMut()>,
}

/// The page's end of a live socket. Dropping it (or calling `close`) ends the connection for good.
pub struct LiveSocket {
    outbound: mpsc::UnboundedSender<String>,
    live: Rc<Cell<bool>>,
    closed: Rc<Cell<bool>>,
}

impl LiveSocket {
    /// Whether messages sent now go out on an open connection.
    pub fn is_live(&self) -> bool {
        self.live.get()
    }

    /// Sends a text message if the connection is open; `false` means it was not sent.
    pub fn send(&self, text: String) -> bool {
        self.live.get() && self.outbound.unbounded_send(text).is_ok()
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.live.set(false);
        self.outbound.close_channel();
    }
}

impl Drop for LiveSocket {
    fn drop(&mut self) {
        self.close();
    }
}

/// Backoff before reconnect attempt `n` (1-based): 0.5 s doubling to 15 s, with up to 30% jitter.
fn backoff_ms(attempt: u32) -> u32 {
    let base = 500u32.saturating_mul(1 << attempt.saturating_sub(1).min(5)).min(15_000);
    base + (js_sys::Math::random() * 0.3 * f64::from(base)) as u32
}

/// Opens a WebSocket and waits for its handshake; `None` if it fails or does not open within 10 s.
async fn connect(url: &str) -> Option<WebSocket> {
    let ws = WebSocket::open(url).ok()?;
    for _ in 0..500 {
        match ws.state() {
            State::Open => return Some(ws),
            State::Connecting => sleep(20).await,
            State::Closing | State::Closed => return None,
        }
    }
    None
}

/// Opens `path` on this server and keeps it open until the returned socket is closed or dropped.
pub fn open(path: &str, mut handlers: Handlers) -> LiveSocket {
    let url = ws_url(path);
    let (outbound, mut queue) = mpsc::unbounded::<String>();
    let live = Rc::new(Cell::new(false));
    let closed = Rc::new(Cell::new(false));
    let socket = LiveSocket { outbound, live: live.clone(), closed: closed.clone() };
    spawn_local(async move {
        let mut attempt = 0u32;
        while !closed.get() {
            if let Some(ws) = connect(&url).await {
                let (mut sink, mut stream) = ws.split();
                // Anything queued while down was meant for the old connection.
                while queue.try_recv().is_ok() {}
                attempt = 0;
                live.set(true);
                (handlers.on_conn)(ConnState::Live);
                let mut ok = true;
                for text in (handlers.on_open)() {
                    if sink.send(Message::Text(text)).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                while ok && !closed.get() {
                    futures::select! {
                        out = queue.next() => match out {
                            Some(text) => ok = sink.send(Message::Text(text)).await.is_ok(),
                            None => ok = false,
                        },
                        incoming = stream.next().fuse() => match incoming {
                            Some(Ok(Message::Text(text))) => (handlers.on_message)(&text),
                            Some(Ok(Message::Bytes(_))) => {}
                            Some(Err(_)) | None => ok = false,
                        },
                    }
                }
                live.set(false);
                (handlers.on_down)();
            }
            if closed.get() {
                break;
            }
            attempt += 1;
            let wait = backoff_ms(attempt);
            let secs = wait.div_ceil(1000);
            let state =
                if attempt > 4 || !browser_online() { ConnState::Offline(secs) } else { ConnState::Reconnecting(secs) };
            (handlers.on_conn)(state);
            sleep(wait).await;
        }
    });
    socket
}
