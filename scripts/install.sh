#!/usr/bin/env bash
# The one install command on a fresh Debian/Ubuntu machine: prerequisites,
# build, install (`make install`), then enable and start the daemon.
#   sudo scripts/install.sh                      PREFIX=/usr/local
#   sudo PREFIX=/opt/chadthrottle scripts/install.sh
# Any Makefile variable can be given in the environment or as an argument
# (NO_START=1, DESTDIR=...). Undo it with `sudo make uninstall` and the same
# variables.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
bash scripts/bootstrap.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
make install "$@"
