//! The driver's side: watch the phone's position, decide which fixes to send, and deliver them without losing
//! any.
//!
//! A fix counts as delivered only when the server acknowledges it. Fixes go out on `/ws/driver` when it is open;
//! otherwise through the `send_ping` server function; when both fail they wait in a bounded queue (the oldest is
//! dropped first, and counted) and go out when a connection is back. Fixes in flight when a socket drops go back
//! to the front of the queue.

use std::{cell::RefCell, rc::Rc};

use leaflet::{Circle, CircleMarker, LatLng, Map, Marker};
use leptos::{prelude::*, task::spawn_local};
use protocol::{
    driver::{DriverClientMsg, DriverServerMsg, IssuedToken, Ping, PingReply},
    orders::{OrderState, Reason},
    problem::ErrorCode,
};
use wasm_bindgen::{prelude::Closure, JsCast};

use super::{
    outbox::{renewal, Outbox, Refused, Renewal, Retry, Rules},
    send_ping,
    signals::{DriverSignals, Job, JobAnswer, Sharing},
};
use crate::{
    browser::{
        every, expose, local_storage,
        map::{new_map, stop_marker, Stop},
        now_ms, origin, post_api, settings, sleep, socket,
    },
    ui::{ConnState, CITY_CENTER},
};

/// localStorage key of the driver's id and token (from `POST /api/drivers/enter`).
const CREDENTIALS_KEY: &str = "pulsemap.driver";

struct Session {
    s: DriverSignals,
    driver_id: String,
    /// The driver's token: sent as `auth` on every connection and with every server-function ping.
    token: String,
    map: Map,
    marker: Option<(Marker, Circle)>,
    watch: Option<Watch>,
    socket: Option<socket::LiveSocket>,
    /// The fixes on their way out, by the page's sending rules.
    outbox: Outbox,
    /// A server-function delivery is under way.
    fallback_busy: bool,
    /// The job's pickup and drop-off on the map.
    job_markers: Vec<CircleMarker>,
    /// Orders whose job ended here: an `assigned` for one of them that arrives late is old news.
    ended_jobs: std::collections::HashSet<String>,
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
    let renew = match (renewal(stored.as_ref().map(|t| t.expires_ms as f64), now_ms()), stored) {
        (Renewal::Keep, Some(stored)) => return stored,
        (Renewal::Renew, Some(stored)) => Some(stored.token),
        _ => None,
    };
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
    // Each tracking link gets its QR code (and a fresh copy state) as it comes.
    Effect::new(move |_| {
        let url = s.share_url.get();
        s.copied.set(String::new());
        s.share_qr.set(if url.is_empty() { String::new() } else { qr_of(&url).unwrap_or_default() });
    });
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
    let rules = Rules { max_accuracy_m: settings.max_accuracy_m, heartbeat_ms: settings.heartbeat_secs * 1000.0 };
    let session: Shared = Rc::new(RefCell::new(Session {
        s,
        driver_id: issued.driver_id,
        token: issued.token,
        map,
        marker: None,
        watch: None,
        socket: None,
        outbox: Outbox::new(rules),
        fallback_busy: false,
        job_markers: Vec::new(),
        ended_jobs: Default::default(),
    }));
    Effect::new({
        let session = session.clone();
        move |_| {
            let (presses, answer) = s.answer.get();
            if presses > 0 {
                if let Some(answer) = answer {
                    send_answer(&session, answer);
                }
            }
        }
    });
    s.now_ms.set(now_ms() as i64);
    every(1_000, move || s.now_ms.set(now_ms() as i64));
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
    let socket = socket::open("/ws/driver", handlers(this));
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
        session.outbox.connection_lost();
        session.publish_counts();
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
        s.conn.set(ConnState::Connecting);
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

fn handlers(this: &Shared) -> socket::Handlers {
    let s = this.borrow().s;
    socket::Handlers {
        on_open: Box::new({
            let this = this.clone();
            move || {
                // The credential first, then everything queued, on every new connection.
                let mut session = this.borrow_mut();
                let auth = DriverClientMsg::Auth { token: session.token.clone() };
                let mut messages = vec![serde_json::to_string(&auth).expect("messages serialise")];
                while let Some(message) = session.outbox.next_for_socket() {
                    messages.push(message);
                }
                session.publish_counts();
                messages
            }
        }),
        on_message: Box::new({
            let this = this.clone();
            move |text| on_server_message(&this, text)
        }),
        on_conn: Box::new(move |state| s.conn.set(state)),
        on_down: Box::new({
            let this = this.clone();
            move || {
                let mut session = this.borrow_mut();
                session.outbox.connection_lost();
                session.publish_counts();
            }
        }),
    }
}

impl Session {
    /// Shows the outbox's counts on the page.
    fn publish_counts(&self) {
        let counts = self.outbox.counts();
        self.s.queued.set(self.outbox.queued());
        self.s.sent.set(counts.sent);
        self.s.acked.set(counts.acked);
        self.s.dropped.set(counts.dropped);
        self.s.inaccurate.set(counts.inaccurate);
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
        let ping = Ping {
            driver_id: session.driver_id.clone(),
            lat,
            lon,
            ts: position.timestamp() as i64,
            accuracy_m: Some(accuracy),
            heading_deg: finite(coords.heading()),
            speed_mps: finite(coords.speed()),
        };
        match session.outbox.offer(ping, now_ms()) {
            // A good fix answers any earlier location trouble.
            Ok(()) => s.error.set(String::new()),
            Err(Refused::Inaccurate { accuracy_m, limit_m }) => s.error.set(format!(
                "The last fix was only accurate to {accuracy_m:.0} m (the limit is {limit_m:.0} m), so it was not \
                 sent. Open sky or Wi-Fi helps."
            )),
            Err(Refused::Invalid(invalid)) => s.error.set(format!("This fix cannot be sent: {}", invalid.message)),
        }
        session.publish_counts();
    }
    flush(this);
}

/// Once a second: send a move that had to wait, or the heartbeat; and retry queued fixes.
fn heartbeat(this: &Shared) {
    {
        let mut session = this.borrow_mut();
        if session.watch.is_none() {
            return;
        }
        session.outbox.queue_due(now_ms());
    }
    flush(this);
}

/// Sends what is queued: on the socket when it is open, else one at a time through the server function.
fn flush(this: &Shared) {
    let mut session = this.borrow_mut();
    let live = session.socket.as_ref().is_some_and(socket::LiveSocket::is_live);
    if live {
        while let Some(message) = session.outbox.next_for_socket() {
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
    if session.fallback_busy || session.outbox.queued() == 0 || session.watch.is_none() {
        return;
    }
    session.fallback_busy = true;
    drop(session);
    let this = this.clone();
    spawn_local(async move {
        loop {
            let Some(ping) = this.borrow().outbox.front().cloned() else { break };
            let s = this.borrow().s;
            let token = this.borrow().token.clone();
            match send_ping(token, ping).await {
                Ok(reply) => {
                    let mut session = this.borrow_mut();
                    session.outbox.front_delivered(reply == PingReply::Accepted);
                    if let PingReply::Rejected(error) = reply {
                        s.error.set(error.describe());
                    }
                    session.publish_counts();
                }
                Err(_) => {
                    let queued = this.borrow().outbox.queued();
                    s.error.set(format!(
                        "No connection to the server: {queued} fixes wait here and will be sent when it is back."
                    ));
                    break;
                }
            }
            if this.borrow().socket.as_ref().is_some_and(socket::LiveSocket::is_live) {
                break;
            }
        }
        this.borrow_mut().fallback_busy = false;
    });
}

/// Sends the driver's answer about its offer or job on the socket (it must be open: a job needs the socket).
fn send_answer(this: &Shared, answer: JobAnswer) {
    let session = this.borrow();
    let s = session.s;
    let message = match (answer, s.offer.get_untracked(), s.job.get_untracked()) {
        (JobAnswer::Accept, Some(offer), _) => DriverClientMsg::Accept { order_id: offer.order_id },
        (JobAnswer::Reject, Some(offer), _) => DriverClientMsg::Reject { order_id: offer.order_id },
        (JobAnswer::PickedUp, _, Some(job)) => {
            DriverClientMsg::OrderStatus { order_id: job.order_id, state: OrderState::PickedUp }
        }
        (JobAnswer::Delivered, _, Some(job)) => {
            DriverClientMsg::OrderStatus { order_id: job.order_id, state: OrderState::Delivered }
        }
        _ => return,
    };
    let text = serde_json::to_string(&message).expect("messages serialise");
    let sent = session.socket.as_ref().is_some_and(|socket| socket.send(text));
    if !sent {
        s.job_note.set("Not connected: press again when the badge says live.".into());
    } else if matches!(answer, JobAnswer::Reject) {
        s.offer.set(None);
    }
}

/// The job is over (delivered, cancelled): off the map.
fn end_job(session: &mut Session, order_id: String, note: &str) {
    session.ended_jobs.insert(order_id);
    for marker in session.job_markers.drain(..) {
        marker.remove();
    }
    session.s.job.set(None);
    session.s.job_note.set(note.to_string());
}

fn on_server_message(this: &Shared, text: &str) {
    let Ok(message) = serde_json::from_str::<DriverServerMsg>(text) else { return };
    let mut session = this.borrow_mut();
    let s = session.s;
    match message {
        DriverServerMsg::Ack { seq: Some(seq), accepted } => {
            if session.outbox.acked(seq, accepted) && s.error.get_untracked().starts_with("No connection") {
                s.error.set(String::new());
            }
        }
        DriverServerMsg::Ack { seq: None, .. } | DriverServerMsg::Ready { .. } => {}
        DriverServerMsg::Error { seq: None, error, .. }
            if matches!(
                error.code,
                ErrorCode::OfferExpired
                    | ErrorCode::OfferTaken
                    | ErrorCode::InvalidTransition
                    | ErrorCode::DriverBusy
                    | ErrorCode::NotFound
            ) =>
        {
            s.offer.set(None);
            s.job_note.set(error.describe());
        }
        DriverServerMsg::Error { seq, error, .. } => {
            if matches!(error.code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Unauthorized) {
                // The server no longer knows this token (restarted with a new secret, or it ran out): the fixes
                // stay queued here; a reload enters again.
                forget_credentials();
                s.error.set(format!(
                    "{} Reload the page to enter again; your unsent fixes are kept until then.",
                    error.describe()
                ));
                if let Some(seq) = seq {
                    session.outbox.refused(seq, Retry::Later);
                }
            } else {
                // A busy or stopping server's refusal is worth retrying; anything else is final for that ping.
                let retry = match error.code {
                    ErrorCode::QueueFull | ErrorCode::ShuttingDown | ErrorCode::StoreUnavailable => Retry::Later,
                    _ => Retry::Never,
                };
                let ours = seq.is_some_and(|seq| session.outbox.refused(seq, retry));
                if !ours || retry == Retry::Never {
                    s.error.set(error.describe());
                }
            }
            session.publish_counts();
        }
        DriverServerMsg::SlowDown { retry_after_ms } => {
            s.error.set(format!("The server is busy; it asked to wait {retry_after_ms} ms. Nothing is lost."));
        }
        DriverServerMsg::Offer(offer) => {
            s.job_note.set(String::new());
            s.offer.set(Some(offer));
        }
        DriverServerMsg::Assigned { order_id, .. } if session.ended_jobs.contains(&order_id) => {}
        DriverServerMsg::Assigned { order_id, pickup, dropoff, .. } => {
            s.offer.set(None);
            for marker in session.job_markers.drain(..) {
                marker.remove();
            }
            let markers =
                [stop_marker(&session.map, pickup, Stop::Pickup), stop_marker(&session.map, dropoff, Stop::Dropoff)];
            session.job_markers.extend(markers);
            s.job_note.set(String::new());
            let state = OrderState::Assigned;
            if s.job.get_untracked().is_none_or(|j| j.order_id != order_id) {
                s.job.set(Some(Job { order_id, pickup, dropoff, state }));
            }
        }
        DriverServerMsg::OfferWithdrawn { order_id, reason } => {
            if s.offer.get_untracked().is_some_and(|o| o.order_id == order_id) {
                s.offer.set(None);
                s.job_note.set(
                    match reason {
                        Reason::DriverAccepted => "Another driver took that job.",
                        Reason::OfferExpired => "That offer ran out of time.",
                        Reason::OfferRejected => "Declined.",
                        _ => "That job was cancelled.",
                    }
                    .into(),
                );
            }
        }
        DriverServerMsg::Job { order_id, state } if state.is_final() => {
            let ours = s.job.get_untracked().is_some_and(|job| job.order_id == order_id);
            if ours {
                let note =
                    if state == OrderState::Delivered { "Delivered. Thank you!" } else { "The job was cancelled." };
                end_job(&mut session, order_id, note);
            } else {
                // It ended before its `assigned` got here: that one is old news when it comes.
                session.ended_jobs.insert(order_id);
            }
        }
        DriverServerMsg::Job { order_id, state } => {
            if let Some(job) = s.job.get_untracked().filter(|job| job.order_id == order_id) {
                s.job.set(Some(Job { state, ..job }));
            }
        }
        DriverServerMsg::Availability { .. } => {}
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

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// qrcode-generator's encoder, loaded by the page from `/vendor/qrcode.js` (npm, at build time).
    type QrCode;
    #[wasm_bindgen(catch, js_name = qrcode)]
    fn qr_code(type_number: u32, level: &str) -> Result<QrCode, wasm_bindgen::JsValue>;
    #[wasm_bindgen(method, js_name = addData)]
    fn add_data(this: &QrCode, data: &str);
    #[wasm_bindgen(method, catch)]
    fn make(this: &QrCode) -> Result<(), wasm_bindgen::JsValue>;
    #[wasm_bindgen(method, js_name = getModuleCount)]
    fn module_count(this: &QrCode) -> u32;
    #[wasm_bindgen(method, js_name = isDark)]
    fn is_dark(this: &QrCode, row: u32, col: u32) -> bool;
}

/// The link as a QR code (the smallest version that holds it, error correction M), or `None` when the encoder
/// did not load.
fn qr_of(link: &str) -> Option<String> {
    let code = qr_code(0, "M").ok()?;
    code.add_data(link);
    code.make().ok()?;
    Some(super::qr_svg(code.module_count(), |row, col| code.is_dark(row, col)))
}

/// Copies the tracking link to the clipboard, and says whether it did.
pub fn copy_link(s: DriverSignals) {
    let url = s.share_url.get_untracked();
    spawn_local(async move {
        let copied = async {
            let navigator = web_sys::window()?.navigator();
            let clipboard = js_sys::Reflect::get(&navigator, &"clipboard".into()).ok().filter(|c| !c.is_undefined())?;
            let write: js_sys::Function =
                js_sys::Reflect::get(&clipboard, &"writeText".into()).ok()?.dyn_into().ok()?;
            let promise: js_sys::Promise = write.call1(&clipboard, &url.into()).ok()?.dyn_into().ok()?;
            wasm_bindgen_futures::JsFuture::from(promise).await.ok()
        }
        .await;
        s.copied.set(match copied {
            Some(_) => "Link copied".into(),
            None => "Could not copy here: press and hold the link to copy it".into(),
        });
    });
}
