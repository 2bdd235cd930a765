#!/usr/bin/env bash
# Exercises the README's install command into a scratch prefix, smoke-tests
# the installed daemon through the system bus (throttlectl and busctl), then
# uninstalls and checks that nothing is left: files, processes, kernel state.
# .ci/run runs it after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
export PREFIX="${SMOKE_PREFIX:-/opt/chadthrottle-smoke}"
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
[ ! -e "$PREFIX" ] || fail "$PREFIX exists; refusing to reuse it"
for f in /etc/chadthrottle /var/lib/chadthrottle; do
  [ ! -e "$f" ] || fail "$f exists (a real install?); refusing to touch it"
done
bus_before=$(ls /run/dbus/system_bus_socket 2>/dev/null || true)
target=""
cleanup() {
  [ -z "$target" ] || kill "$target" 2>/dev/null || true
  make -s purge >/dev/null 2>&1 || true
  rm -rf "$PREFIX"
}
trap cleanup EXIT

# Build before installing, so that a failure ends the log with the compiler's
# own error: the eBPF object builds nested in build.rs, and its errors would
# otherwise sit above cargo's backtrace. One retry covers a transient fetch of
# the std sources that -Zbuild-std needs.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
build_log=$(mktemp)
build_release() { cargo build --release -p throttled -p throttlectl >"$build_log" 2>&1; }
if ! build_release; then
  echo "smoke: release build failed; its errors:" >&2
  grep -E '(^|: )error(\[|:)|panicked|No space|Killed' "$build_log" | tail -40 >&2 || true
  echo "smoke: retrying the release build once" >&2
  build_release || { tail -60 "$build_log" >&2; grep -E '(^|: )error(\[|:)' "$build_log" | tail -20 >&2; df -h . >&2; fail "release build"; }
fi
rm -f "$build_log"

echo "smoke: scripts/install.sh with PREFIX=$PREFIX"
bash scripts/install.sh
ctl="$PREFIX/bin/throttlectl"
[ -x "$ctl" ] && [ -x "$PREFIX/sbin/chadthrottled" ] || fail "binaries not installed"

"$ctl" status
"$ctl" backends
"$ctl" --json backends | python3 -c 'import json,sys; b=json.load(sys.stdin); assert any(x["name"]=="ebpf" and x["available"] for x in b), b'
sleep 300 & target=$!
"$ctl" limit "$target" --down 1M --up 512K --backend ebpf
listed=$("$ctl" list); echo "$listed"
grep -q "$target" <<<"$listed" || fail "list does not show pid $target"
# busctl as an independent client: the throttle object and its target.
path=$(busctl --system call org.chadthrottle /org/chadthrottle org.chadthrottle.Manager ListThrottles | grep -o '"[^"]*"' | tr -d '"')
[ -n "$path" ] || fail "busctl ListThrottles returned no throttle"
busctl --system get-property org.chadthrottle "$path" org.chadthrottle.Throttle Target | grep -q "\"$target\"" \
  || fail "busctl: $path does not limit pid $target"
"$ctl" unlimit "$target"
[ "$("$ctl" --json list)" = "[]" ] || fail "throttle not removed"

echo "smoke: make purge"
make -s purge
left=$(find "$PREFIX" -type f 2>/dev/null || true)
[ -z "$left" ] || fail "uninstall left files: $left"
for f in /etc/chadthrottle /var/lib/chadthrottle /var/log/chadthrottled.log /etc/dbus-1/system.d/org.chadthrottle.conf /usr/share/polkit-1/actions/org.chadthrottle.policy /run/chadthrottle; do
  [ ! -e "$f" ] || fail "uninstall left $f"
done
! pgrep -x chadthrottled >/dev/null || fail "chadthrottled still runs"
if [ -z "$bus_before" ]; then
  [ ! -e /run/dbus/system_bus_socket ] || fail "the system bus this install started left its socket"
fi
! bpftool prog show 2>/dev/null | grep -q 'name ct_' || fail "eBPF programs left loaded"
echo "smoke: ok"
