//! Reads the site's names and paths from the workspace's leptos metadata (the root Cargo.toml's
//! `[[workspace.metadata.leptos]]`) into constants of this crate: the one reader of that table.

fn main() {
    // Read at run time, not with env!(): the compiled build script is shared by every checkout that uses the
    // same target directory, and must read *this* checkout's manifest.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for build scripts");
    let manifest = format!("{dir}/../Cargo.toml");
    println!("cargo:rerun-if-changed={manifest}");
    let text = std::fs::read_to_string(&manifest).expect("the workspace Cargo.toml is readable");
    let root: toml::Table = text.parse().expect("the workspace Cargo.toml is TOML");
    let leptos = root
        .get("workspace")
        .and_then(|w| w.get("metadata"))
        .and_then(|m| m.get("leptos"))
        .and_then(|l| l.as_array())
        .and_then(|sites| sites.first())
        .and_then(|site| site.as_table())
        .expect("the workspace Cargo.toml has a [[workspace.metadata.leptos]] table");
    for key in ["name", "site-root", "site-pkg-dir", "site-addr", "style-file", "assets-dir", "lib-package"] {
        let value =
            leptos.get(key).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("leptos metadata has no `{key}`"));
        println!("cargo:rustc-env=SITE_{}={value}", key.to_uppercase().replace('-', "_"));
    }
    let profile = leptos.get("lib-profile-release").and_then(|v| v.as_str()).unwrap_or("release");
    println!("cargo:rustc-env=SITE_LIB_PROFILE_RELEASE={profile}");
    let features: Vec<&str> = leptos
        .get("lib-features")
        .and_then(|v| v.as_array())
        .map(|list| list.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    println!("cargo:rustc-env=SITE_LIB_FEATURES={}", features.join(","));
}
