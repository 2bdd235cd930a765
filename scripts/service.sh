#!/usr/bin/env bash
# Starts or stops the installed daemon (`make install` / `make uninstall`
# run it). With systemd as init: enable and (re)start the unit. Without it
# (containers, some VMs): start a system dbus-daemon if none answers, then
# chadthrottled in the background, and say so. Only what this script
# started is stopped again.
set -euo pipefail
for v in SBINDIR UNITDIR SYSCONFDIR; do
  [ -n "${!v:-}" ] || { echo "service.sh: $v is unset; run it through make" >&2; exit 2; }
done
say() { printf 'chadthrottle: %s\n' "$*"; }
RUN=/run/chadthrottle
DAEMON_PID=$RUN/chadthrottled.pid
BUS_PID=$RUN/dbus-daemon.pid
LOG=/var/log/chadthrottled.log
CONFIG="$SYSCONFDIR/chadthrottle/chadthrottled.toml"
UNIT=chadthrottled.service

systemd_is_init() { [ -d /run/systemd/system ]; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
bus_call() { dbus-send --system --print-reply --dest=org.freedesktop.DBus / "org.freedesktop.DBus.$1" "${@:2}" >/dev/null 2>&1; }

wait_for_name() {
  for _ in $(seq 1 60); do
    bus_call GetNameOwner string:org.chadthrottle && return 0
    alive "$DAEMON_PID" || return 1
    sleep 0.5
  done
  return 1
}

start_systemd() {
  systemctl daemon-reload
  # By path: a PREFIX outside systemd's search path gets linked in.
  systemctl enable "$UNITDIR/$UNIT"
  systemctl reload dbus.service 2>/dev/null || true
  systemctl restart "$UNIT"
  systemctl is-active --quiet "$UNIT" || { systemctl status --no-pager "$UNIT" >&2; exit 1; }
  say "enabled and started $UNIT (systemctl status $UNIT; journalctl -u $UNIT)"
}

start_bus() {
  if bus_call GetId; then
    bus_call ReloadConfig || true # picks up the policy just installed
    say "using the running system bus"
    return
  fi
  command -v dbus-daemon >/dev/null || { say "no system bus and no dbus-daemon: apt install dbus-daemon" >&2; exit 1; }
  # A pid file left by a dead bus makes dbus-daemon refuse to start.
  if [ -f /run/dbus/pid ] && ! kill -0 "$(cat /run/dbus/pid)" 2>/dev/null; then rm -f /run/dbus/pid; fi
  mkdir -p /run/dbus "$RUN"
  dbus-daemon --system --fork --print-pid >"$BUS_PID"
  say "systemd is not init here: started a system dbus-daemon (pid $(cat "$BUS_PID"))"
}

start_plain() {
  start_bus
  stop_plain quiet
  mkdir -p "$RUN"
  setsid "$SBINDIR/chadthrottled" --config "$CONFIG" --log-target stderr >>"$LOG" 2>&1 </dev/null &
  echo $! >"$DAEMON_PID"
  if ! wait_for_name; then
    say "chadthrottled did not come up; the end of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  say "started chadthrottled in the background (pid $(cat "$DAEMON_PID"), log $LOG); it owns org.chadthrottle"
  say "it will not start at boot here: there is no systemd"
}

stop_plain() {
  if alive "$DAEMON_PID"; then
    local pid; pid=$(cat "$DAEMON_PID")
    kill "$pid"
    # It removes its kernel objects before it exits.
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    [ "${1:-}" = quiet ] || say "stopped chadthrottled (pid $pid)"
  fi
  rm -f "$DAEMON_PID"
  [ "${1:-}" = quiet ] && return
  if alive "$BUS_PID"; then
    local bus; bus=$(cat "$BUS_PID")
    kill "$bus"
    for _ in $(seq 1 20); do kill -0 "$bus" 2>/dev/null || break; sleep 0.25; done
    # dbus-daemon leaves its socket and pid file behind; they were ours.
    rm -f /run/dbus/system_bus_socket /run/dbus/pid
    say "stopped the system dbus-daemon this install had started"
  fi
  rm -f "$BUS_PID"
  rmdir "$RUN" 2>/dev/null || true
}

stop_systemd() {
  systemctl disable --now "$UNIT" 2>/dev/null || true
  systemctl daemon-reload
  say "stopped and disabled $UNIT"
}

[ "$(id -u)" -eq 0 ] || { echo "service.sh: needs root" >&2; exit 1; }
case "${1:-}" in
  start) if systemd_is_init; then start_systemd; else start_plain; fi ;;
  stop) if systemd_is_init; then stop_systemd; else stop_plain; fi ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
