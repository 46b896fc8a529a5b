//! Leaflet maps for the pages, and our own binding for Leaflet.heat.
//!
//! Leaflet comes through the `leaflet` crate; Leaflet.heat has no crate, so [`HeatLayer`] declares the few calls
//! we use (`L.heatLayer`, `setLatLngs`, `setOptions`), all with `catch` because Leaflet.heat throws when its
//! canvas is 0x0 (a hidden tab or a collapsed embed) and the page must survive that.

use std::{collections::VecDeque, rc::Rc};

use js_sys::{Array, Object, Reflect};
use leaflet::{CircleMarker, LatLng, Map, MapOptions, Polyline, PolylineOptions, TileLayer, TileLayerOptions};
use wasm_bindgen::{prelude::*, JsCast};

use protocol::{geo::BBox, orders::Place, settings::SiteSettings};

#[wasm_bindgen]
extern "C" {
    /// Leaflet.heat's layer: one canvas, redrawn in place by `setLatLngs`.
    #[wasm_bindgen(extends = leaflet::Layer, extends = leaflet::Evented, js_namespace = L, js_name = HeatLayer)]
    #[derive(Debug, Clone)]
    pub type HeatLayer;

    /// `L.heatLayer(latlngs, options)`: points are `[lat, lng, intensity]` arrays.
    #[wasm_bindgen(js_namespace = L, js_name = heatLayer)]
    fn heat_layer(latlngs: &Array, options: &JsValue) -> HeatLayer;

    #[wasm_bindgen(method, catch, js_name = setLatLngs)]
    fn set_lat_lngs(this: &HeatLayer, latlngs: &Array) -> Result<HeatLayer, JsValue>;

    #[wasm_bindgen(method, catch, js_name = setOptions)]
    fn set_options(this: &HeatLayer, options: &JsValue) -> Result<HeatLayer, JsValue>;

    #[wasm_bindgen(method, catch, js_name = addTo)]
    fn add_to_map(this: &HeatLayer, map: &Map) -> Result<HeatLayer, JsValue>;
}

/// A plain JS object from key/value pairs.
pub fn object(pairs: &[(&str, JsValue)]) -> JsValue {
    let obj = Object::new();
    for (key, value) in pairs {
        let _ = Reflect::set(&obj, &JsValue::from_str(key), value);
    }
    obj.into()
}

/// Whether the map's container has an area (Leaflet.heat cannot draw into a 0x0 canvas).
pub fn has_area(map: &Map) -> bool {
    let size = map.get_size();
    size.x() > 0.0 && size.y() > 0.0
}

/// A map in `element`, centred on `center`, with the configured tiles (or a plain background without them),
/// kept sized to its container.
pub fn new_map(element: &web_sys::HtmlElement, center: (f64, f64), zoom: f64, settings: &SiteSettings) -> Map {
    let options = MapOptions::new();
    options.set_center(LatLng::new(center.0, center.1));
    options.set_zoom(zoom);
    options.set_prefer_canvas(true);
    options.set_min_zoom(4.0);
    options.set_max_zoom(19.0);
    // Window resizes reach the container, and `keep_sized` handles those (skipping 0x0 sizes).
    options.set_track_resize(false);
    let map = Map::new_with_element(element, &options).expect("a fresh container for the map");
    if let Some(url) = &settings.tile_url {
        let tile_options = TileLayerOptions::new();
        tile_options.set_attribution(settings.tile_attribution.clone());
        tile_options.set_max_zoom(19.0);
        TileLayer::new_options(url, &tile_options).add_to(&map);
    }
    keep_sized(element, &map);
    map
}

/// Tells Leaflet when the container's size changes (e.g. when a hidden tab is shown). A 0x0 size is never passed
/// on: Leaflet.heat's own redraw on `moveend` would read pixels from a 0-wide canvas and throw; the map keeps
/// its last size until the container has an area again.
fn keep_sized(element: &web_sys::HtmlElement, map: &Map) {
    let map = map.clone();
    let container = element.clone();
    let on_resize = Closure::<dyn FnMut(Array, web_sys::ResizeObserver)>::new(move |_, _| {
        if container.client_width() > 0 && container.client_height() > 0 {
            map.invalidate_size(false);
        }
    });
    if let Ok(observer) = web_sys::ResizeObserver::new(on_resize.as_ref().unchecked_ref()) {
        observer.observe(element);
    }
    // The observer lives as long as the page.
    on_resize.forget();
}

/// Calls `f` once the map has rested `ms` after a pan or zoom (a newer move cancels the older wait).
pub fn on_settled(map: &Map, ms: u32, f: impl Fn() + 'static) {
    let moves = Rc::new(std::cell::Cell::new(0u32));
    let f = Rc::new(f);
    map.on_move_end(Box::new(move |_| {
        let ticket = moves.get().wrapping_add(1);
        moves.set(ticket);
        let (moves, f) = (moves.clone(), f.clone());
        wasm_bindgen_futures::spawn_local(async move {
            super::sleep(ms).await;
            if moves.get() == ticket {
                f();
            }
        });
    }));
}

/// The map's visible box, clamped to valid coordinates.
pub fn view_box(map: &Map) -> BBox {
    let bounds = map.get_bounds();
    let (sw, ne) = (bounds.get_south_west(), bounds.get_north_east());
    BBox {
        south: sw.lat().clamp(-90.0, 90.0),
        west: sw.lng().clamp(-180.0, 180.0),
        north: ne.lat().clamp(-90.0, 90.0),
        east: ne.lng().clamp(-180.0, 180.0),
    }
}

/// The box to ask heat for: the view and a margin, so heat blobs just outside the edge still draw when they
/// spill in.
pub fn heat_box(map: &Map) -> BBox {
    let view = view_box(map);
    let (dy, dx) = ((view.north - view.south) * 0.1, (view.east - view.west) * 0.1);
    BBox {
        south: (view.south - dy).max(-90.0),
        west: (view.west - dx).max(-180.0),
        north: (view.north + dy).min(90.0),
        east: (view.east + dx).min(180.0),
    }
}

/// One heat layer for the map's whole life, updated in place. When the map gets an area again (a hidden tab
/// shown), the resize fires `moveend` and the page redraws.
pub struct Heat {
    layer: HeatLayer,
    map: Map,
}

impl Heat {
    pub fn new(map: &Map) -> Heat {
        let layer = heat_layer(&Array::new(), &Heat::options(25.0));
        // On a 0x0 container this throws, but the layer stays attached and draws once the map has a size.
        let _ = layer.add_to_map(map);
        Heat { layer, map: map.clone() }
    }

    /// Radius grows with the on-screen size of a cell; `maxZoom: 0` keeps intensity undimmed at every zoom
    /// (Leaflet.heat divides by 2^(maxZoom - zoom)), and values arrive already normalised to the visible max.
    fn options(radius_px: f64) -> JsValue {
        object(&[
            ("radius", radius_px.into()),
            ("blur", (radius_px * 0.75).into()),
            ("maxZoom", 0.0.into()),
            ("max", 1.0.into()),
            ("minOpacity", 0.3.into()),
        ])
    }

    /// Replaces the drawn points: `(lat, lon, intensity in 0..=1)`; `cell_px` is a cell's width on screen.
    /// Returns whether they were drawn (not on a 0x0 map).
    pub fn draw(&mut self, points: &[(f64, f64, f64)], cell_px: f64) -> bool {
        if !has_area(&self.map) {
            return false;
        }
        let radius = (cell_px * 0.7).clamp(6.0, 60.0);
        let array: Array = points
            .iter()
            .map(|(lat, lon, w)| -> JsValue { Array::of3(&(*lat).into(), &(*lon).into(), &(*w).into()).into() })
            .collect();
        let options_ok = self.layer.set_options(&Heat::options(radius)).is_ok();
        options_ok && self.layer.set_lat_lngs(&array).is_ok()
    }
}

/// What a drawing of heat cells put in view, for the legend.
pub struct Drawn {
    /// The highest count in view (the top of the legend).
    pub max_in_view: u32,
    pub cells_in_view: usize,
    /// Whether anything was drawn (not on a 0x0 map, not with no cells).
    pub drawn: bool,
}

impl Heat {
    /// Draws cells `(centre lat, centre lon, count)` of geohash length `precision`, each intensity relative to
    /// the highest count in view (as the homepage and the replay show heat).
    pub fn draw_cells<'a>(&mut self, cells: impl Iterator<Item = &'a (f64, f64, u32)> + Clone, precision: u8) -> Drawn {
        let view = view_box(&self.map);
        let in_view = cells.clone().filter(|(lat, lon, _)| view.contains(*lat, *lon));
        let (max_in_view, cells_in_view) = in_view.fold((0, 0), |(max, n), c| (max.max(c.2), n + 1));
        let scale = f64::from(max_in_view.max(1));
        let points: Vec<(f64, f64, f64)> =
            cells.map(|(lat, lon, n)| (*lat, *lon, (f64::from(*n) / scale).min(1.0))).collect();
        let cell_px = cell_width_px(&self.map, precision);
        let drawn = self.draw(&points, cell_px) && !points.is_empty();
        Drawn { max_in_view, cells_in_view, drawn }
    }
}

/// A geohash cell's centre, `(lat, lon)`.
pub fn cell_center(cell: &str) -> Option<(f64, f64)> {
    geohash::decode(cell).ok().map(|(coord, _, _)| (coord.y, coord.x))
}

/// A cell's width on screen at the map's zoom, in pixels (Web Mercator: 256 px per tile at zoom 0).
pub fn cell_width_px(map: &Map, precision: u8) -> f64 {
    let bits = 5 * u32::from(precision);
    let lon_deg = 360.0 / f64::from(1u32 << bits.div_ceil(2));
    lon_deg * 256.0 * 2f64.powf(map.get_zoom()) / 360.0
}

/// A driver's recent path: a line through its last `max_points` fixes.
pub struct Trail {
    line: Polyline,
    points: VecDeque<(f64, f64)>,
    max_points: usize,
}

impl Trail {
    pub fn new(map: &Map, max_points: usize) -> Trail {
        let options = PolylineOptions::new();
        options.set_color("#2563eb".into());
        options.set_weight(4.0);
        options.set_opacity(0.6);
        let line = Polyline::new_with_options(&Array::new(), &options);
        line.add_to(map);
        Trail { line, points: VecDeque::new(), max_points }
    }

    /// Adds a fix (the oldest goes once the trail is full) and redraws.
    pub fn push(&mut self, lat: f64, lon: f64) {
        self.points.push_back((lat, lon));
        if self.points.len() > self.max_points {
            self.points.pop_front();
        }
        let points: Array = self.points.iter().map(|(lat, lon)| JsValue::from(LatLng::new(*lat, *lon))).collect();
        self.line.set_lat_lngs(&points);
    }

    /// Replaces the whole trail (its last `max_points` points).
    pub fn set(&mut self, points: &[(f64, f64)]) {
        self.points = points[points.len().saturating_sub(self.max_points)..].iter().copied().collect();
        let points: Array = self.points.iter().map(|(lat, lon)| JsValue::from(LatLng::new(*lat, *lon))).collect();
        self.line.set_lat_lngs(&points);
    }

    pub fn clear(&mut self) {
        self.points.clear();
        self.line.set_lat_lngs(&Array::new());
    }
}

/// The two stops of an order, as every page draws them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Green.
    Pickup,
    /// Red.
    Dropoff,
}

/// A dot on the map for an order's stop.
pub fn stop_marker(map: &Map, place: Place, stop: Stop) -> CircleMarker {
    let colour = match stop {
        Stop::Pickup => "#16a34a",
        Stop::Dropoff => "#dc2626",
    };
    let options = object(&[
        ("radius", 9.0.into()),
        ("color", colour.into()),
        ("fillColor", colour.into()),
        ("fillOpacity", 0.9.into()),
    ]);
    let marker = CircleMarker::new_with_options(&LatLng::new(place.lat, place.lon), &options);
    marker.add_to(map);
    marker
}
