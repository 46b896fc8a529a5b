# Sourced by the scripts: the shared build cache and the tools' PATH. Every value can be overridden.

# The build cache lives outside the clone, so a fresh clone (and CI) reuses it. Tests never rely on it being warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pulsemap/target}"
# The scripts build once per run: incremental caches would only grow the build directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# npm's binaryen (wasm-opt 132) must win over Debian's binaryen 108, which breaks the release wasm.
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"
# Leptos names the wasm file `<name>_bg.wasm` unless LEPTOS_OUTPUT_NAME was set when the server was compiled
# (cargo-leptos sets it and renames the file). The plain-cargo build keeps wasm-bindgen's name, so keep it unset.
unset LEPTOS_OUTPUT_NAME

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs a command as root (directly, or through sudo when the user is not root).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1
  fi
}

# Installs Debian packages that are missing (apt-get update once, only when something is missing).
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
}
