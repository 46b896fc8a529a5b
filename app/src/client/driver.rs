//! The driver's side: watch the phone's position, decide which fixes to send, and deliver them without losing
//! any.
//!
//! A fix counts as delivered only when the server acknowledges it. Fixes go out on `/ws/driver` when it is open;
//! otherwise through the `send_ping` server function; when both fail they wait in a bounded queue (the oldest is
//! dropped first, and counted) and go out when a connection is back. Fixes in flight when a socket drops go back
//! to the front of the queue.

use std::{
    cell::RefCell,
    collections::{BTreeMap, VecDeque},
    rc::Rc,
};

use leaflet::{Circle, LatLng, Map, Marker};
use leptos::{prelude::*, task::spawn_local};
use wasm_bindgen::{prelude::Closure, JsCast};

use super::{every, expose, live, local_storage, map::new_map, now_ms, origin, post_api, settings, sleep};
use crate::{
    pages::{
        driver::{DriverSignals, PingReply, Sharing},
        send_ping, CITY_CENTER,
    },
    protocol::{distance_m, DriverClientMsg, DriverServerMsg, ErrorCode, IssuedToken, Ping},
    settings::SiteSettings,
    validate::{check_ping, Limits},
};

/// Fixes kept while offline (at one per second, about a minute and a half; within the server's burst allowance).
const MAX_QUEUED: usize = 100;
/// At most one ping per this many milliseconds.
const MIN_INTERVAL_MS: f64 = 1_000.0;
/// A new fix is worth sending before the heartbeat when it moved at least this far.
const MIN_MOVE_M: f64 = 10.0;
/// localStorage key of the driver's id and token (from `POST /api/drivers/enter`).
const CREDENTIALS_KEY: &str = "pulsemap.driver";
/// A stored token with less than this left is renewed on load.
const RENEW_BEFORE_MS: f64 = 30.0 * 60_000.0;

struct Session {
    s: DriverSignals,
    settings: SiteSettings,
    driver_id: String,
    /// The driver's token: sent as `auth` on every connection and with every server-function ping.
    token: String,
    map: Map,
    marker: Option<(Marker, Circle)>,
    watch: Option<Watch>,
    socket: Option<live::LiveSocket>,
    /// Waiting for a connection, oldest first.
    queue: VecDeque<Ping>,
    /// Sent on the socket, not yet acknowledged, by sequence number.
    in_flight: BTreeMap<u64, Ping>,
    next_seq: u64,
    /// The newest fix good enough to send (the heartbeat repeats it).
    last_fix: Option<Ping>,
    /// `last_fix` moved far enough to be worth sending, but came too soon after the previous ping.
    move_pending: bool,
    /// When (browser ms) and where the last ping was sent.
    last_sent: Option<(f64, f64, f64)>,
    /// A server-function delivery is under way.
    fallback_busy: bool,
}

type Shared = Rc<RefCell<Session>>;

/// A geolocation watch and the callbacks it calls (kept alive until the watch is cleared).
struct Watch {
    id: i32,
    _on_fix: Closure<dyn FnMut(web_sys::Position)>,
    _on_error: Closure<dyn FnMut(web_sys::PositionError)>,
}

/// This browser's driver id and token: the stored ones while they have time left, renewed when they are near
/// their end, or a new driver from the server. Retries until the server answers.
async fn credentials(s: DriverSignals) -> IssuedToken {
    let storage = local_storage();
    let stored: Option<IssuedToken> = storage
        .as_ref()
        .and_then(|st| st.get_item(CREDENTIALS_KEY).ok().flatten())
        .and_then(|text| serde_json::from_str(&text).ok());
    let left = |t: &IssuedToken| t.expires_ms as f64 - now_ms();
    if let Some(t) = stored.as_ref().filter(|t| left(t) > RENEW_BEFORE_MS) {
        return t.clone();
    }
    let renew = stored.filter(|t| left(t) > 0.0).map(|t| t.token);
    let mut attempt = 0u32;
    let issued = loop {
        match post_api::<IssuedToken>("/api/drivers/enter", renew.as_deref(), &serde_json::json!({})).await {
            Ok(issued) => break issued,
            Err(e) => {
                attempt += 1;
                s.error.set(format!("Cannot enter as a driver yet ({e}); retrying…"));
                sleep(1_000 * attempt.min(10)).await;
            }
        }
    };
    s.error.set(String::new());
    if let (Some(storage), Ok(text)) = (storage, serde_json::to_string(&issued)) {
        let _ = storage.set_item(CREDENTIALS_KEY, &text);
    }
    issued
}

/// Forgets the stored credentials (the server refused them): the next load enters again.
fn forget_credentials() {
    if let Some(storage) = local_storage() {
        let _ = storage.remove_item(CREDENTIALS_KEY);
    }
}

pub fn start(element: web_sys::HtmlDivElement, s: DriverSignals) {
    spawn_local(async move {
        let issued = credentials(s).await;
        begin_session(element, s, issued);
    });
}

fn begin_session(element: web_sys::HtmlDivElement, s: DriverSignals, issued: IssuedToken) {
    let settings = settings();
    s.driver_id.set(issued.driver_id.clone());
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 13.0, &settings);
    expose("pulsemapMap", &map);
    let session: Shared = Rc::new(RefCell::new(Session {
        s,
        settings,
        driver_id: issued.driver_id,
        token: issued.token,
        map,
        marker: None,
        watch: None,
        socket: None,
        queue: VecDeque::new(),
        in_flight: BTreeMap::new(),
        next_seq: 1,
        last_fix: None,
        move_pending: false,
        last_sent: None,
        fallback_busy: false,
    }));
    Effect::new({
        let session = session.clone();
        move |_| {
            if s.wants_sharing.get() {
                begin(&session);
            } else {
                end(&session);
            }
        }
    });
    every(1_000, move || heartbeat(&session));
}

fn begin(this: &Shared) {
    let s = this.borrow().s;
    if this.borrow().watch.is_some() {
        return;
    }
    s.error.set(String::new());
    let geolocation = match web_sys::window().expect("window").navigator().geolocation() {
        Ok(g) => g,
        Err(_) => {
            s.error.set("This browser cannot share its location (no Geolocation API).".into());
            s.wants_sharing.set(false);
            return;
        }
    };
    let on_fix = Closure::<dyn FnMut(web_sys::Position)>::new({
        let this = this.clone();
        move |position: web_sys::Position| on_position(&this, position)
    });
    let on_error = Closure::<dyn FnMut(web_sys::PositionError)>::new({
        let this = this.clone();
        move |error: web_sys::PositionError| on_geo_error(&this, error)
    });
    let options = web_sys::PositionOptions::new();
    options.set_enable_high_accuracy(true);
    options.set_timeout(20_000);
    options.set_maximum_age(0);
    let watch = geolocation.watch_position_with_error_callback_and_options(
        on_fix.as_ref().unchecked_ref(),
        Some(on_error.as_ref().unchecked_ref()),
        &options,
    );
    let Ok(watch_id) = watch else {
        s.error.set("The browser refused to watch the position.".into());
        s.wants_sharing.set(false);
        return;
    };
    s.sharing.set(Sharing::Locating);
    let socket = live::open("/ws/driver", handlers(this));
    let token = {
        let mut session = this.borrow_mut();
        session.watch = Some(Watch { id: watch_id, _on_fix: on_fix, _on_error: on_error });
        session.socket = Some(socket);
        session.token.clone()
    };
    // A fresh tracking link for this sharing session; stopping revokes it.
    spawn_local(async move {
        match post_api::<IssuedToken>("/api/shares", Some(&token), &serde_json::json!({})).await {
            Ok(link) => s.share_url.set(format!("{}{}", origin(), link.path.unwrap_or_default())),
            Err(e) => s.error.set(format!("Could not make a tracking link: {e}")),
        }
    });
}

/// Stops the watch and the socket. What is still queued stays queued for the next start.
fn end(this: &Shared) {
    let (watch, socket) = {
        let mut session = this.borrow_mut();
        let watch = session.watch.take();
        let socket = session.socket.take();
        let in_flight = std::mem::take(&mut session.in_flight);
        for (_, ping) in in_flight.into_iter().rev() {
            session.queue.push_front(ping);
        }
        let queued = session.queue.len();
        session.s.queued.set(queued);
        (watch, socket)
    };
    let s = this.borrow().s;
    if let Some(watch) = &watch {
        if let Ok(geolocation) = web_sys::window().expect("window").navigator().geolocation() {
            geolocation.clear_watch(watch.id);
        }
    }
    if let Some(socket) = socket {
        socket.close();
    }
    if watch.is_some() {
        s.sharing.set(Sharing::Stopped);
        s.link.set(crate::pages::Link::Connecting);
        s.share_url.set(String::new());
        let token = this.borrow().token.clone();
        spawn_local(async move {
            if let Err(e) =
                post_api::<serde_json::Value>("/api/shares/revoke", Some(&token), &serde_json::json!({})).await
            {
                s.error.set(format!("Could not switch off the tracking link: {e}"));
            }
        });
    }
}

fn handlers(this: &Shared) -> live::Handlers {
    let s = this.borrow().s;
    live::Handlers {
        on_open: Box::new({
            let this = this.clone();
            move || {
                // The credential first, then everything queued, on every new connection.
                let mut session = this.borrow_mut();
                let auth = DriverClientMsg::Auth { token: session.token.clone() };
                let mut messages = vec![serde_json::to_string(&auth).expect("messages serialise")];
                while let Some(ping) = session.queue.pop_front() {
                    messages.push(session.track_in_flight(ping));
                }
                session.publish_counts();
                messages
            }
        }),
        on_message: Box::new({
            let this = this.clone();
            move |text| on_server_message(&this, text)
        }),
        on_link: Box::new(move |link| s.link.set(link)),
        on_down: Box::new({
            let this = this.clone();
            move || {
                let mut session = this.borrow_mut();
                let in_flight = std::mem::take(&mut session.in_flight);
                for (_, ping) in in_flight.into_iter().rev() {
                    session.queue.push_front(ping);
                }
                session.publish_counts();
            }
        }),
    }
}

impl Session {
    fn publish_counts(&self) {
        self.s.queued.set(self.queue.len());
    }

    /// Numbers a ping, records it as in flight, and returns its socket message.
    fn track_in_flight(&mut self, ping: Ping) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        let message =
            serde_json::to_string(&DriverClientMsg::Ping { seq: Some(seq), ping: ping.clone() }).expect("serialises");
        self.in_flight.insert(seq, ping);
        self.s.sent.update(|n| *n += 1);
        message
    }

    fn enqueue(&mut self, ping: Ping) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            self.s.dropped.update(|n| *n += 1);
        }
        self.last_sent = Some((now_ms(), ping.lat, ping.lon));
        self.queue.push_back(ping);
    }

    fn show_position(&mut self, lat: f64, lon: f64, accuracy: f64) {
        let at = LatLng::new(lat, lon);
        match &self.marker {
            Some((marker, circle)) => {
                marker.set_lat_lng(&at);
                circle.set_lat_lng(&at);
                circle.set_radius(accuracy);
                // The driver's own map follows them.
                self.map.set_view(&at, self.map.get_zoom());
            }
            None => {
                let marker = Marker::new(&at);
                marker.add_to(&self.map);
                let circle = Circle::new_with_radius(&at, accuracy);
                circle.add_to(&self.map);
                self.map.set_view(&at, 16.0);
                self.marker = Some((marker, circle));
            }
        }
    }
}

fn on_position(this: &Shared, position: web_sys::Position) {
    let coords = position.coords();
    let (lat, lon, accuracy) = (coords.latitude(), coords.longitude(), coords.accuracy());
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    {
        let mut session = this.borrow_mut();
        if session.watch.is_none() {
            return;
        }
        let s = session.s;
        session.show_position(lat, lon, accuracy);
        s.last_fix.set(format!("{lat:.5}, {lon:.5} ± {accuracy:.0} m"));
        s.sharing.set(Sharing::Sharing);
        if accuracy > session.settings.max_accuracy_m {
            s.inaccurate.update(|n| *n += 1);
            s.error.set(format!(
                "The last fix was only accurate to {accuracy:.0} m (the limit is {:.0} m), so it was not sent. \
                 Open sky or Wi-Fi helps.",
                session.settings.max_accuracy_m
            ));
            return;
        }
        let ping = Ping {
            driver_id: session.driver_id.clone(),
            lat,
            lon,
            ts: position.timestamp() as i64,
            accuracy_m: Some(accuracy),
            heading_deg: finite(coords.heading()),
            speed_mps: finite(coords.speed()),
        };
        if let Err(invalid) = check_ping(&ping, now_ms() as i64, &Limits::default()) {
            s.error.set(format!("This fix cannot be sent: {}", invalid.message));
            return;
        }
        // A good fix answers any earlier location trouble.
        s.error.set(String::new());
        session.move_pending = session
            .last_sent
            .is_none_or(|(_, last_lat, last_lon)| distance_m(last_lat, last_lon, lat, lon) >= MIN_MOVE_M);
        session.last_fix = Some(ping);
        session.send_due();
    }
    flush(this);
}

impl Session {
    /// Queues the last fix if it is due: a move, at most one ping per second; else the heartbeat's repeat.
    fn send_due(&mut self) {
        let Some(fix) = self.last_fix.clone() else { return };
        let since = self.last_sent.map_or(f64::INFINITY, |(when, _, _)| now_ms() - when);
        if self.move_pending && since >= MIN_INTERVAL_MS {
            self.move_pending = false;
            self.enqueue(fix);
        } else if since >= self.settings.heartbeat_secs * 1000.0 {
            // Still here: a fresh timestamp on the same position keeps the driver online.
            self.enqueue(Ping { ts: now_ms() as i64, ..fix });
        }
    }
}

/// Once a second: send a move that had to wait, or the heartbeat; and retry queued fixes.
fn heartbeat(this: &Shared) {
    {
        let mut session = this.borrow_mut();
        if session.watch.is_none() {
            return;
        }
        session.send_due();
    }
    flush(this);
}

/// Sends what is queued: on the socket when it is open, else one at a time through the server function.
fn flush(this: &Shared) {
    let mut session = this.borrow_mut();
    let live = session.socket.as_ref().is_some_and(live::LiveSocket::is_live);
    if live {
        while let Some(ping) = session.queue.pop_front() {
            let message = session.track_in_flight(ping);
            let sent = session.socket.as_ref().is_some_and(|socket| socket.send(message));
            if !sent {
                // The socket closed under us: its on_down puts everything in flight back.
                break;
            }
        }
        session.publish_counts();
        return;
    }
    session.publish_counts();
    if session.fallback_busy || session.queue.is_empty() || session.watch.is_none() {
        return;
    }
    session.fallback_busy = true;
    drop(session);
    let this = this.clone();
    spawn_local(async move {
        loop {
            let Some(ping) = this.borrow().queue.front().cloned() else { break };
            let s = this.borrow().s;
            let token = this.borrow().token.clone();
            match send_ping(token, ping).await {
                Ok(reply) => {
                    let mut session = this.borrow_mut();
                    session.queue.pop_front();
                    s.sent.update(|n| *n += 1);
                    match reply {
                        PingReply::Accepted => s.acked.update(|n| *n += 1),
                        PingReply::Rejected(error) => s.error.set(crate::pages::describe_error(&error)),
                    }
                    session.publish_counts();
                }
                Err(_) => {
                    let queued = this.borrow().queue.len();
                    s.error.set(format!(
                        "No connection to the server: {queued} fixes wait here and will be sent when it is back."
                    ));
                    break;
                }
            }
            if this.borrow().socket.as_ref().is_some_and(live::LiveSocket::is_live) {
                break;
            }
        }
        this.borrow_mut().fallback_busy = false;
    });
}

fn on_server_message(this: &Shared, text: &str) {
    let Ok(message) = serde_json::from_str::<DriverServerMsg>(text) else { return };
    let mut session = this.borrow_mut();
    let s = session.s;
    match message {
        DriverServerMsg::Ack { seq, accepted } => {
            if let Some(seq) = seq {
                if session.in_flight.remove(&seq).is_some() && accepted > 0 {
                    s.acked.update(|n| *n += 1);
                    if s.error.get_untracked().starts_with("No connection") {
                        s.error.set(String::new());
                    }
                }
            }
        }
        DriverServerMsg::Error { seq, error, .. } => {
            if matches!(error.code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Unauthorized) {
                // The server no longer knows this token (restarted with a new secret, or it ran out): the fixes
                // stay queued here; a reload enters again.
                forget_credentials();
                s.error.set(format!(
                    "{} Reload the page to enter again; your unsent fixes are kept until then.",
                    crate::pages::describe_error(&error)
                ));
                if let Some(ping) = seq.and_then(|seq| session.in_flight.remove(&seq)) {
                    session.queue.push_front(ping);
                    session.publish_counts();
                }
                return;
            }
            let Some(ping) = seq.and_then(|seq| session.in_flight.remove(&seq)) else {
                s.error.set(crate::pages::describe_error(&error));
                return;
            };
            if matches!(error.code, ErrorCode::QueueFull | ErrorCode::ShuttingDown) {
                // Not taken, but worth retrying: back to the front of the queue.
                session.queue.push_front(ping);
                session.publish_counts();
            } else {
                s.error.set(crate::pages::describe_error(&error));
            }
        }
        DriverServerMsg::Ready { .. } => {}
        DriverServerMsg::SlowDown { retry_after_ms } => {
            s.error.set(format!("The server is busy; it asked to wait {retry_after_ms} ms. Nothing is lost."));
        }
    }
}

fn on_geo_error(this: &Shared, error: web_sys::PositionError) {
    let s = this.borrow().s;
    match error.code() {
        web_sys::PositionError::PERMISSION_DENIED => {
            s.error.set(
                "Location permission was denied. Allow location for this site in your browser's settings \
                 (the icon left of the address), then press Start sharing again."
                    .into(),
            );
            s.wants_sharing.set(false);
        }
        web_sys::PositionError::POSITION_UNAVAILABLE => s.error.set(
            "Your position is unavailable right now (no GPS or network location). Turn on location services or \
             move to open sky; still trying."
                .into(),
        ),
        _ => s.error.set("Timed out waiting for a GPS fix; still trying. Check that location services are on.".into()),
    }
}
