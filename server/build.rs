//! Reads the site names and paths from the workspace's leptos metadata, so the server's defaults and the site
//! build (scripts/site) share one source of truth: the root Cargo.toml.

fn main() {
    // Read at run time, not with env!(): the compiled build script is shared by every checkout that uses the
    // same target directory, and must read *this* checkout's manifest.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for build scripts");
    let manifest = format!("{dir}/../Cargo.toml");
    println!("cargo:rerun-if-changed={manifest}");
    let text = std::fs::read_to_string(&manifest).expect("the workspace Cargo.toml is readable");
    let section = text
        .split("[[workspace.metadata.leptos]]")
        .nth(1)
        .expect("the workspace Cargo.toml has a [[workspace.metadata.leptos]] section");
    let value = |key: &str| -> String {
        section
            .lines()
            .map(str::trim)
            .find_map(|line| {
                let (k, v) = line.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_else(|| panic!("leptos metadata has no `{key}`"))
    };
    for (key, var) in [
        ("name", "PULSEMAP_SITE_NAME"),
        ("site-root", "PULSEMAP_SITE_ROOT_DEFAULT"),
        ("site-pkg-dir", "PULSEMAP_SITE_PKG_DIR_DEFAULT"),
        ("site-addr", "PULSEMAP_ADDR_DEFAULT"),
    ] {
        println!("cargo:rustc-env={var}={}", value(key));
    }
}
