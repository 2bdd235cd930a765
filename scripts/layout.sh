#!/usr/bin/env bash
# The installed layout, in one manifest: `make install-files`, `make
# uninstall-files` and `make list` run it. The Makefile owns the directory
# variables; DESTDIR stages into a package root.
set -euo pipefail
cd "$(dirname "$0")/.."
for v in BINDIR SBINDIR DATADIR MANDIR SYSCONFDIR UNITDIR DBUS_POLICYDIR POLKIT_ACTIONDIR BUILD_DIR; do
  [ -n "${!v:-}" ] || { echo "layout.sh: $v is unset; run it through make" >&2; exit 2; }
done
DESTDIR="${DESTDIR:-}"
CONFIG="$SYSCONFDIR/chadthrottle/chadthrottled.toml"

# mode source destination; a source starting with @ is generated below.
manifest() {
  cat <<LIST
755 $BUILD_DIR/chadthrottled $SBINDIR/chadthrottled
755 $BUILD_DIR/throttlectl $BINDIR/throttlectl
644 @unit $UNITDIR/chadthrottled.service
644 dbus/org.chadthrottle.conf $DBUS_POLICYDIR/org.chadthrottle.conf
644 @activation $DATADIR/dbus-1/system-services/org.chadthrottle.service
644 dbus/org.chadthrottle.Manager.xml $DATADIR/dbus-1/interfaces/org.chadthrottle.Manager.xml
644 dbus/org.chadthrottle.Throttle.xml $DATADIR/dbus-1/interfaces/org.chadthrottle.Throttle.xml
644 polkit/org.chadthrottle.policy $POLKIT_ACTIONDIR/org.chadthrottle.policy
644 config/chadthrottled.toml $DATADIR/doc/chadthrottle/chadthrottled.toml
644 @man8 $MANDIR/man8/chadthrottled.8
644 @man1 $MANDIR/man1/throttlectl.1
644 @bash $DATADIR/bash-completion/completions/throttlectl
644 @zsh $DATADIR/zsh/site-functions/_throttlectl
644 @fish $DATADIR/fish/vendor_completions.d/throttlectl.fish
LIST
}

# The unit and the activation file name the installed binary (and config).
exec_line() {
  local args=""
  [ "$CONFIG" = /etc/chadthrottle/chadthrottled.toml ] || args=" --config $CONFIG"
  echo "$SBINDIR/chadthrottled$args"
}

generate() {
  case "$1" in
    unit) sed "s|^ExecStart=/usr/sbin/chadthrottled\$|ExecStart=$(exec_line)|" systemd/chadthrottled.service ;;
    activation) sed "s|^Exec=/usr/sbin/chadthrottled\$|Exec=$(exec_line)|" dbus/org.chadthrottle.service ;;
    man8) "$BUILD_DIR/chadthrottled" --manpage ;;
    man1) "$BUILD_DIR/throttlectl" manpage ;;
    bash|zsh|fish) "$BUILD_DIR/throttlectl" completions "$1" ;;
  esac
}

install_all() {
  local tmp; tmp=$(mktemp)
  trap 'rm -f "$tmp"' RETURN
  while read -r mode src dest; do
    if [[ $src == @* ]]; then generate "${src#@}" >"$tmp"; src="$tmp"; fi
    install -Dm"$mode" "$src" "$DESTDIR$dest"
  done < <(manifest)
  # The admin's config is never overwritten; rules.d is theirs to fill.
  if [ -e "$DESTDIR$CONFIG" ]; then
    echo "layout: kept the existing $DESTDIR$CONFIG"
  else
    install -Dm644 config/chadthrottled.toml "$DESTDIR$CONFIG"
  fi
  install -d -m755 "$DESTDIR$SYSCONFDIR/chadthrottle/rules.d"
}

uninstall_all() {
  while read -r _ _ dest; do
    rm -f "$DESTDIR$dest"
  done < <(manifest)
  # Only our own directories go; shared ones (man8, system.d, ...) stay.
  rmdir "$DESTDIR$DATADIR/doc/chadthrottle" 2>/dev/null || true
  if [ -e "$DESTDIR$CONFIG" ] && ! cmp -s config/chadthrottled.toml "$DESTDIR$CONFIG"; then
    echo "layout: kept $DESTDIR$CONFIG (edited)"
  else
    rm -f "$DESTDIR$CONFIG"
  fi
  rmdir "$DESTDIR$SYSCONFDIR/chadthrottle/rules.d" "$DESTDIR$SYSCONFDIR/chadthrottle" 2>/dev/null \
    || echo "layout: kept $DESTDIR$SYSCONFDIR/chadthrottle (it holds your files)"
}

case "${1:-}" in
  install) install_all ;;
  uninstall) uninstall_all ;;
  list) manifest | awk '{print $3}'; echo "$CONFIG"; echo "$SYSCONFDIR/chadthrottle/rules.d/" ;;
  *) echo "usage: $0 install|uninstall|list" >&2; exit 2 ;;
esac
