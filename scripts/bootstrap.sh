#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test ChadThrottle.
# Idempotent: each step checks first, so a second run takes about a second.
set -euo pipefail

log() { printf 'bootstrap: %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_pkgs=(make curl ca-certificates gcc iperf3 dbus-daemon dbus-bin polkitd pkexec libxml2-utils iproute2 bpftool
          tmux util-linux libcap2-bin clang llvm procps python3 systemd libglib2.0-bin
          prometheus zsh fish)  # prometheus + promtool: tests/metrics.rs; zsh, fish: tests/cli.rs completions
need_apt=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing apt packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  # bpftool lives in linux-tools on older releases; fall back quietly.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" \
    || { log "retrying without bpftool"; need_apt=("${need_apt[@]/bpftool/}");
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ${need_apt[*]} linux-tools-common || true; }
fi
# Debian hides bpftool under /usr/sbin; make sure it is on PATH for tests.
command -v bpftool >/dev/null || { [ -x /usr/sbin/bpftool ] && export PATH="$PATH:/usr/sbin"; }

[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v rustup >/dev/null; then
  log "installing rustup and the stable toolchain"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
  . "$HOME/.cargo/env"
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"; rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"; rustup component add rust-src --toolchain nightly
fi

# bpf-linker must use the nightly's own LLVM (22), exposed as lib/libLLVM.so.
sysroot=$(rustup run nightly rustc --print sysroot)
llvm_so=$(ls "$sysroot"/lib/libLLVM.so.22.1-rust-* 2>/dev/null | head -n1 || true)
[ -n "$llvm_so" ] || { log "nightly has no libLLVM.so.22.1-rust-*"; exit 1; }
prefix="${CHADTHROTTLE_LLVM_PREFIX:-$HOME/.cache/chadthrottle/llvm22}"
mkdir -p "$prefix/lib"
ln -sfn "$llvm_so" "$prefix/lib/libLLVM.so"
if ! command -v bpf-linker >/dev/null 2>&1; then
  log "building bpf-linker against $llvm_so"
  LLVM_PREFIX="$prefix" LD_LIBRARY_PATH="$sysroot/lib" \
    cargo install --locked bpf-linker --no-default-features --features llvm-22
fi
log "ok"
