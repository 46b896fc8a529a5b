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

use super::{every, expose, live, local_storage, map::new_map, now_ms, origin, settings};
use crate::{
    pages::{
        driver::{DriverSignals, PingReply, Sharing},
        send_ping, CITY_CENTER,
    },
    protocol::{distance_m, DriverClientMsg, DriverServerMsg, ErrorCode, Ping},
    settings::SiteSettings,
    validate::{check_ping, Limits},
};

/// Fixes kept while offline (at one per second, about a minute and a half; within the server's burst allowance).
const MAX_QUEUED: usize = 100;
/// At most one ping per this many milliseconds.
const MIN_INTERVAL_MS: f64 = 1_000.0;
/// A new fix is worth sending before the heartbeat when it moved at least this far.
const MIN_MOVE_M: f64 = 10.0;
/// localStorage key of the driver id, made once per browser.
const ID_KEY: &str = "pulsemap.driver_id";

struct Session {
    s: DriverSignals,
    settings: SiteSettings,
    driver_id: String,
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

/// The driver id this browser keeps (made once, then read back from localStorage).
fn driver_id() -> String {
    let storage = local_storage();
    if let Some(id) = storage.as_ref().and_then(|s| s.get_item(ID_KEY).ok().flatten()) {
        if crate::validate::check_driver_id(&id).is_ok() {
            return id;
        }
    }
    let id = format!("drv-{:08x}", (js_sys::Math::random() * f64::from(u32::MAX)) as u32);
    if let Some(storage) = storage {
        let _ = storage.set_item(ID_KEY, &id);
    }
    id
}

pub fn start(element: web_sys::HtmlDivElement, s: DriverSignals) {
    let settings = settings();
    let id = driver_id();
    s.driver_id.set(id.clone());
    s.share_url.set(format!("{}/track/{id}", origin()));
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 13.0, &settings);
    expose("pulsemapMap", &map);
    let session: Shared = Rc::new(RefCell::new(Session {
        s,
        settings,
        driver_id: id,
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
    let mut session = this.borrow_mut();
    session.watch = Some(Watch { id: watch_id, _on_fix: on_fix, _on_error: on_error });
    session.socket = Some(socket);
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
    }
}

fn handlers(this: &Shared) -> live::Handlers {
    let s = this.borrow().s;
    live::Handlers {
        on_open: Box::new({
            let this = this.clone();
            move || {
                // Everything queued goes out first on the new connection.
                let mut session = this.borrow_mut();
                let mut messages = Vec::new();
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
            match send_ping(ping).await {
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
