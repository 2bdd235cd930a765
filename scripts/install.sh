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
gen="$PWD/target/release/generated"
THROTTLECTL_GEN_DIR="$gen" cargo build --release --workspace
install -Dm755 target/release/chadthrottled "$DESTDIR$PREFIX/sbin/chadthrottled"
install -Dm755 target/release/throttlectl "$DESTDIR$PREFIX/bin/throttlectl"
share="$DESTDIR$PREFIX/share"
install -Dm644 dbus/org.chadthrottle.conf "$share/dbus-1/system.d/org.chadthrottle.conf"
install -Dm644 dbus/org.chadthrottle.service "$share/dbus-1/system-services/org.chadthrottle.service"
install -Dm644 dbus/org.chadthrottle.Manager.xml "$share/dbus-1/interfaces/org.chadthrottle.Manager.xml"
install -Dm644 dbus/org.chadthrottle.Throttle.xml "$share/dbus-1/interfaces/org.chadthrottle.Throttle.xml"
install -Dm644 polkit/org.chadthrottle.policy "$share/polkit-1/actions/org.chadthrottle.policy"
install -Dm644 "$gen/throttlectl.1" "$share/man/man1/throttlectl.1"
install -Dm644 "$gen/throttlectl.bash" "$share/bash-completion/completions/throttlectl"
install -Dm644 "$gen/_throttlectl" "$share/zsh/site-functions/_throttlectl"
install -Dm644 "$gen/throttlectl.fish" "$share/fish/vendor_completions.d/throttlectl.fish"
echo "install: binaries in $DESTDIR$PREFIX/sbin and $DESTDIR$PREFIX/bin; bus, polkit, man and completion files in $share"
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
