//! `/replay`: the heat of a past range played back (the same layer, switches and legend as the homepage),
//! with play and pause, a speed, a scrubber with the time, and one driver's trail with a marker that moves with
//! the time replayed. The page is rendered here; [`live`] (in the browser) loads the frames in pieces, so the
//! first one shows long before the whole range has arrived.

#[cfg(feature = "hydrate")]
mod live;
mod signals;

use leptos::prelude::*;
use leptos_meta::{Meta, Title};

use signals::{wat_time, SPEEDS};
pub use signals::{Preset, ReplaySignals};

use crate::ui::{HeatControls, Legend};

#[component]
pub fn ReplayPage() -> impl IntoView {
    let s = ReplaySignals::new();
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    crate::ui::when_mounted(map_ref, move |element| live::start(element, s));

    let time = move || match s.position_ms.get() {
        0 => "—".to_string(),
        t => wat_time(t),
    };
    let range = move || match (s.from_ms.get(), s.to_ms.get()) {
        (0, _) => String::new(),
        (from, to) => format!("{} – {} WAT", wat_time(from), wat_time(to)),
    };
    let first_speed = s.speed.get_untracked();
    view! {
        <Title text="Replay — pulsemap"/>
        <Meta name="description" content="Replay any past hour of Lagos' drivers and demand on the heatmap."/>
        <div class="home replay">
            <div id="map" class="map" node_ref=map_ref aria-label="The heatmap of Lagos, replayed"></div>
            <section class="panel">
                <header class="panel-head">
                    <h1><a class="brand" href="/" rel="external">"pulsemap"</a>" replay"</h1>
                </header>
                <label class="window">
                    "Range "
                    <select
                        id="preset"
                        prop:value=move || s.preset.get().as_str()
                        on:change=move |ev| {
                            if let Some(p) = Preset::parse(&event_target_value(&ev)) {
                                s.preset.set(p);
                            }
                        }
                    >
                        {Preset::ALL
                            .into_iter()
                            .map(|p| view! { <option value=p.as_str()>{p.label()}</option> })
                            .collect_view()}
                        <option value="custom" disabled=true>{Preset::Custom.label()}</option>
                    </select>
                </label>
                <p class="muted" id="replay-range">{range}</p>
                <HeatControls layer=s.layer window_min=s.window_min/>
                <div class="player">
                    <button
                        id="play"
                        class="button primary"
                        aria-pressed=move || s.playing.get().to_string()
                        on:click=move |_| s.playing.update(|p| *p = !*p)
                    >
                        {move || if s.playing.get() { "Pause" } else { "Play" }}
                    </button>
                    <label>
                        "Speed "
                        <select
                            id="speed"
                            prop:value=move || s.speed.get().to_string()
                            on:change=move |ev| {
                                if let Ok(v) = event_target_value(&ev).parse::<u32>() {
                                    s.speed.set(v);
                                }
                            }
                        >
                            {SPEEDS
                                .iter()
                                .map(|v| view! { <option value=v.to_string() selected=*v == first_speed>{format!("{v}x")}</option> })
                                .collect_view()}
                        </select>
                    </label>
                    <strong id="replay-time" aria-live="off">{time}</strong>
                </div>
                <input
                    id="scrubber"
                    type="range"
                    min="0"
                    step="1"
                    aria-label="Time in the range"
                    prop:max=move || s.frames.get().saturating_sub(1).to_string()
                    prop:value=move || s.index.get().to_string()
                    on:input=move |ev| {
                        if let Ok(i) = event_target_value(&ev).parse::<u32>() {
                            s.index.set(i);
                            s.position_ms.set(s.from_ms.get_untracked() + i64::from(i) * s.step_ms.get_untracked());
                        }
                    }
                />
                <p class="muted">
                    "frame " <span id="replay-index">{move || s.index.get() + 1}</span> " of "
                    <span id="replay-frames">{move || s.frames.get()}</span> " · "
                    <span id="replay-loaded">{move || s.loaded.get()}</span> " loaded · "
                    <span id="replay-status" role="status">{move || s.status.get()}</span>
                </p>
                <p class="counters">
                    <strong id="drivers-online">{move || s.totals.get().drivers_online}</strong>
                    " drivers online · "
                    <strong id="orders-count">{move || s.totals.get().orders_in(s.window_min.get())}</strong>
                    {move || format!(" orders in {} min", s.window_min.get())}
                </p>
                <Legend layer=s.layer legend_max=s.legend_max cells_in_view=s.cells_in_view/>
                <TrailForm s/>
            </section>
        </div>
    }
}

/// One driver's trail over the range (the fleet key reads any driver's history).
#[component]
fn TrailForm(s: ReplaySignals) -> impl IntoView {
    crate::ui::erased_on_server(view! {
        <form
            class="trail"
            on:submit=move |ev| {
                ev.prevent_default();
                s.trail_asked.update(|n| *n += 1);
            }
        >
            <h2>"A driver's trail"</h2>
            <input
                id="trail-driver"
                placeholder="driver id"
                autocomplete="off"
                prop:value=move || s.trail_driver.get()
                on:input=move |ev| s.trail_driver.set(event_target_value(&ev))
            />
            <input
                id="trail-key"
                type="password"
                placeholder="fleet key"
                autocomplete="off"
                prop:value=move || s.trail_key.get()
                on:input=move |ev| s.trail_key.set(event_target_value(&ev))
            />
            <button id="show-trail" class="button" type="submit">"Show trail"</button>
            <p class="muted" id="trail-status" role="status">{move || s.trail_status.get()}</p>
            <p id="trail-at">{move || s.marker_at.get()}</p>
        </form>
    })
}
