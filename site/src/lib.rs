//! The built site's names and paths, from the root Cargo.toml's leptos metadata (read once, by this crate's build
//! script). The server takes its defaults from here; `scripts/site` builds the site from the same values, through
//! the `site-settings` binary; `cargo leptos watch` reads the same table for those who have it.

/// The site's name: the files are `pkg/<name>.js`, `pkg/<name>_bg.wasm`, `pkg/<name>.css`.
pub const NAME: &str = env!("SITE_NAME");
/// Where the built site goes, relative to the workspace root (the server's default `--site-root`).
pub const ROOT: &str = env!("SITE_SITE_ROOT");
/// The folder inside the site for the generated wasm, JS and CSS.
pub const PKG_DIR: &str = env!("SITE_SITE_PKG_DIR");
/// The server's default listen address.
pub const ADDR: &str = env!("SITE_SITE_ADDR");
/// The one stylesheet.
pub const STYLE_FILE: &str = env!("SITE_STYLE_FILE");
/// Static files copied as they are into the site.
pub const ASSETS_DIR: &str = env!("SITE_ASSETS_DIR");
/// The crate that builds the wasm bundle.
pub const LIB_PACKAGE: &str = env!("SITE_LIB_PACKAGE");
/// The cargo profile of the release wasm.
pub const LIB_PROFILE_RELEASE: &str = env!("SITE_LIB_PROFILE_RELEASE");
/// Features of the wasm build, comma-separated.
pub const LIB_FEATURES: &str = env!("SITE_LIB_FEATURES");

/// Every setting as `KEY='value'` lines, for a shell to `eval`.
pub fn shell_lines() -> String {
    [
        ("NAME", NAME),
        ("SITE", ROOT),
        ("PKG", PKG_DIR),
        ("STYLE", STYLE_FILE),
        ("ASSETS", ASSETS_DIR),
        ("LIB", LIB_PACKAGE),
        ("PROFILE", LIB_PROFILE_RELEASE),
        ("FEATURES", LIB_FEATURES),
    ]
    .iter()
    .map(|(key, value)| format!("{key}='{}'\n", value.replace('\'', r"'\''")))
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_settings_read_back_in_a_shell() {
        let lines = super::shell_lines();
        assert!(lines.contains(&format!("NAME='{}'", super::NAME)), "{lines}");
        assert_eq!(lines.lines().count(), 8);
    }
}
