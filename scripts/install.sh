#!/usr/bin/env bash
# Builds and installs chadthrottled and throttlectl, then starts the daemon.
#   PREFIX (default /usr/local) and DESTDIR are honoured; with DESTDIR set,
#   nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
bash scripts/bootstrap.sh
cargo build --release --workspace
install -Dm755 target/release/chadthrottled "$DESTDIR$PREFIX/sbin/chadthrottled"
install -Dm755 target/release/throttlectl "$DESTDIR$PREFIX/bin/throttlectl"
echo "install: binaries in $DESTDIR$PREFIX/sbin and $DESTDIR$PREFIX/bin"
[ -z "$DESTDIR" ] || exit 0

if [ -f /run/chadthrottled.pid ] && kill -0 "$(cat /run/chadthrottled.pid)" 2>/dev/null; then
  kill "$(cat /run/chadthrottled.pid)"; sleep 1
fi
nohup "$PREFIX/sbin/chadthrottled" >/var/log/chadthrottled.log 2>&1 &
echo $! > /run/chadthrottled.pid
sleep 1
if kill -0 "$(cat /run/chadthrottled.pid)" 2>/dev/null; then
  echo "install: started chadthrottled in the background (pid $(cat /run/chadthrottled.pid), log /var/log/chadthrottled.log)"
else
  echo "install: chadthrottled failed to start; see /var/log/chadthrottled.log" >&2
  exit 1
fi
