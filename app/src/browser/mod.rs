//! The browser plumbing the pages' live halves share (compiled for `hydrate` only): DOM and storage helpers,
//! timers, calls to the server's API, and in [`socket`] a WebSocket that reconnects by itself and in [`map`] the
//! Leaflet map with its heat layer. Nothing here knows a page.
//!
//! Pages are separate documents (links between them reload), so what a page starts here lives as long as the
//! page: closures handed to JavaScript are kept for the page's lifetime on purpose.

pub mod map;
pub mod socket;

use protocol::settings::{SiteSettings, SETTINGS_ELEMENT_ID};
use wasm_bindgen::{prelude::Closure, JsCast, JsValue};

fn window() -> web_sys::Window {
    web_sys::window().expect("a browser window")
}

/// The settings the server wrote into the page (defaults if they are missing or unreadable).
pub fn settings() -> SiteSettings {
    window()
        .document()
        .and_then(|d| d.get_element_by_id(SETTINGS_ELEMENT_ID))
        .and_then(|e| e.text_content())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The browser clock, unix milliseconds.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Waits `ms` milliseconds.
pub async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Calls `f` every `ms` milliseconds for the page's lifetime.
pub fn every(ms: u32, f: impl FnMut() + 'static) {
    let callback = Closure::<dyn FnMut()>::new(f);
    let _ =
        window().set_interval_with_callback_and_timeout_and_arguments_0(callback.as_ref().unchecked_ref(), ms as i32);
    callback.forget();
}

/// The WebSocket URL of a path on this server (`ws:` or `wss:` like the page).
pub fn ws_url(path: &str) -> String {
    let location = window().location();
    let scheme = if location.protocol().as_deref() == Ok("https:") { "wss" } else { "ws" };
    format!("{scheme}://{}{path}", location.host().unwrap_or_default())
}

/// The page's path (`/track/drv-1`).
pub fn path() -> String {
    window().location().pathname().unwrap_or_else(|_| "/".into())
}

/// A percent-encoded piece of a URL, decoded (as it is when it cannot be).
pub fn decode_component(raw: &str) -> String {
    js_sys::decode_uri_component(raw).ok().and_then(|t| t.as_string()).unwrap_or_else(|| raw.to_string())
}

/// A value in the page's fragment (`#name=value&...`): where links carry their tokens, which browsers never send
/// to a server.
pub fn fragment_param(name: &str) -> Option<String> {
    let hash = window().location().hash().ok()?;
    let prefix = format!("{name}=");
    hash.trim_start_matches('#')
        .split('&')
        .find_map(|kv| kv.strip_prefix(prefix.as_str()))
        .map(decode_component)
        .filter(|t| !t.is_empty())
}

/// This page's origin, for links people share.
pub fn origin() -> String {
    window().location().origin().unwrap_or_default()
}

/// Navigates to a path on this site.
pub fn go_to(path: &str) {
    let _ = window().location().set_href(path);
}

/// Exposes a value as `window[name]`: a handle for debugging in the console and for the browser tests.
pub fn expose(name: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(&window(), &JsValue::from_str(name), value);
}

/// Milliseconds since the page started loading.
pub fn since_page_start_ms() -> f64 {
    window().performance().map_or(0.0, |p| p.now())
}

/// The browser's localStorage, when it is available (private modes may refuse it).
pub fn local_storage() -> Option<web_sys::Storage> {
    window().local_storage().ok().flatten()
}

/// Whether the browser believes it is online.
pub fn browser_online() -> bool {
    window().navigator().on_line()
}

/// The browser's sessionStorage (gone when the tab closes): where a dispatcher's fleet key is kept.
pub fn session_storage() -> Option<web_sys::Storage> {
    window().session_storage().ok().flatten()
}

/// POSTs `body` as JSON to a path on this server, with `bearer` as the credential; the decoded reply, or what
/// went wrong in words for people.
pub async fn post_api<T: serde::de::DeserializeOwned>(
    path: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> Result<T, String> {
    let mut request = gloo_net::http::Request::post(path);
    if let Some(bearer) = bearer {
        request = request.header("Authorization", &format!("Bearer {bearer}"));
    }
    let request = request.json(body).map_err(|e| e.to_string())?;
    let response = request.send().await.map_err(|_| "cannot reach the server".to_string())?;
    if response.ok() {
        return response.json::<T>().await.map_err(|e| format!("unreadable answer: {e}"));
    }
    match response.json::<protocol::problem::ErrorBody>().await {
        Ok(body) => Err(body.error.describe()),
        Err(_) => Err(format!("the server answered {}", response.status())),
    }
}
