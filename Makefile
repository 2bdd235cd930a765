# Builds and installs ChadThrottle in the layout packagers expect.
#
#   make                               build (release)
#   sudo make install                  install, then enable and start the daemon
#   make install PREFIX=/usr DESTDIR=/tmp/pkg
#                                      stage a package root (nothing is started)
#   sudo make uninstall                stop the daemon and remove what install put
#   sudo make purge                    uninstall, and remove the saved state and log too
#
# The bus policy and polkit actions go where dbus-daemon and polkitd read them:
# with PREFIX=/usr under /usr/share, otherwise /etc/dbus-1/system.d and
# /usr/share/polkit-1/actions (polkitd reads no other directory). Override
# any *DIR variable for other distributions.

PREFIX           ?= /usr/local
BINDIR           ?= $(PREFIX)/bin
SBINDIR          ?= $(PREFIX)/sbin
DATADIR          ?= $(PREFIX)/share
MANDIR           ?= $(DATADIR)/man
SYSCONFDIR       ?= /etc
UNITDIR          ?= $(PREFIX)/lib/systemd/system
DBUS_POLICYDIR   ?= $(if $(filter /usr,$(PREFIX)),$(DATADIR)/dbus-1/system.d,$(SYSCONFDIR)/dbus-1/system.d)
POLKIT_ACTIONDIR ?= /usr/share/polkit-1/actions
BUILD_DIR        ?= target/release
DESTDIR          ?=
# NO_START=1: install files only, even without DESTDIR.
NO_START         ?=

export PREFIX BINDIR SBINDIR DATADIR MANDIR SYSCONFDIR UNITDIR DBUS_POLICYDIR POLKIT_ACTIONDIR BUILD_DIR DESTDIR

.PHONY: all build install install-files uninstall uninstall-files purge start stop list test

all: build

build:
	cargo build --release -p throttled -p throttlectl

install: build install-files
	@if [ -z "$(DESTDIR)$(NO_START)" ]; then scripts/service.sh start; fi

install-files:
	scripts/layout.sh install

uninstall:
	@if [ -z "$(DESTDIR)$(NO_START)" ]; then scripts/service.sh stop; fi
	scripts/layout.sh uninstall

uninstall-files:
	scripts/layout.sh uninstall

# uninstall, and also the saved throttles and the log of a non-systemd run.
purge: uninstall
	rm -rf /var/lib/chadthrottle /var/log/chadthrottled.log

start:
	scripts/service.sh start

stop:
	scripts/service.sh stop

list:
	@scripts/layout.sh list

test:
	scripts/test.sh
