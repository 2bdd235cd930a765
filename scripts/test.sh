#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the real-kernel
# integration tests (network namespaces, iperf3, the cgroup v2 root).
# Needs root; installs its prerequisites first. Under CI=true a missing
# prerequisite fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
bash scripts/bootstrap.sh
export PATH="$PATH:/usr/sbin:/sbin"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests (the throttle-tests crate) run the daemon and
# throttlectl as installed, without throttled's `testing` feature. Each test
# program builds them itself on first use; doing that same build here keeps it
# out of the first test's time.
cargo build -p throttled -p throttlectl
# tests/ is listed, not auto-discovered: every file there must have its entry.
for f in tests/*.rs; do
  grep -qx "path = \"${f#tests/}\"" tests/Cargo.toml || { echo "test.sh: $f is not a [[test]] in tests/Cargo.toml" >&2; exit 1; }
done
# Kernel tests share the cgroup root and namespaces: run them one at a time.
host_state_before=$(ls -d /var/lib/chadthrottle /etc/chadthrottle 2>/dev/null || true)
cargo test --workspace -- --test-threads=1
host_state_after=$(ls -d /var/lib/chadthrottle /etc/chadthrottle 2>/dev/null || true)
if [ "$host_state_before" != "$host_state_after" ]; then
  echo "test.sh: tests created host state (use a scratch --config and --state-dir): $host_state_after" >&2
  exit 1
fi

# Every test must clean up after itself, even on failure.
leftovers=$( { ip netns list | grep -E '^ct-' || true; ip -o link show | grep -oE '(ct-(veth|peer)[0-9]+|cti-[^:@]+)' || true;
  find /sys/fs/cgroup -maxdepth 3 -name 'ct-test*' 2>/dev/null || true;
  grep -E '^ct-' /proc/mounts || true; } )
if [ -n "$leftovers" ]; then
  echo "test.sh: tests left network objects behind: $leftovers" >&2
  exit 1
fi
# A test that wrote over /dev/null (e.g. as a shell's dump file) broke the host.
[ -c /dev/null ] || { echo "test.sh: a test replaced /dev/null with a regular file" >&2; exit 1; }
if command -v bpftool >/dev/null && bpftool prog show 2>/dev/null | grep -qE 'name ct_'; then
  echo "test.sh: tests left eBPF programs loaded:" >&2
  bpftool prog show | grep -E 'name ct_' >&2
  exit 1
fi
echo "test.sh: all tests passed"
