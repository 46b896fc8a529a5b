//! `site-settings`: prints the site's names and paths as shell assignments (`scripts/site` evaluates them).

fn main() {
    print!("{}", site::shell_lines());
}
