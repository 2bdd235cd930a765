#!/usr/bin/env bash
# Before/after for the data path's cost per packet: this tree's benchmark
# (throttled/examples/bench.rs) built against revision REV's eBPF programs
# and daemon, and against this tree's, run alternately PAIRS times
# (default 2), `--cost-only` each. Root; about 3 minutes a pair.
#   scripts/ab-cost.sh REV [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
rev="${1:?usage: scripts/ab-cost.sh REV [PAIRS]}" pairs="${2:-2}"
bash scripts/bootstrap.sh
old=$(mktemp -d /tmp/ct-ab-XXXXXX)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git worktree add --detach "$old" "$rev" >/dev/null
# The same measurement on both sides: this tree's benchmark.
cp throttled/examples/bench.rs "$old/throttled/examples/bench.rs"
# Dependencies built once: start the old tree from this tree's release build.
[ -d target/release ] && mkdir -p "$old/target" && cp -a target/release "$old/target/"
(cd "$old" && cargo build --release -q -p throttled --example bench)
cargo build --release -q -p throttled --example bench
short=$(git rev-parse --short "$rev")
for i in $(seq "$pairs"); do
  echo "## $short (round $i)"
  "$old/target/release/examples/bench" --cost-only
  echo "## this tree (round $i)"
  ./target/release/examples/bench --cost-only
done
