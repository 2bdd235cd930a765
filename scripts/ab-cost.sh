#!/usr/bin/env bash
# Before/after for the data path's cost per packet: revision REV's eBPF
# programs and daemon against this tree's, each measured by its own
# `bench --cost-only`, run alternately PAIRS times (default 2). Root; about
# 3 minutes a pair.
#   scripts/ab-cost.sh REV [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
rev="${1:?usage: scripts/ab-cost.sh REV [PAIRS]}" pairs="${2:-2}"
bash scripts/bootstrap.sh
old=$(mktemp -d /tmp/ct-ab-XXXXXX)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git worktree add --detach "$old" "$rev" >/dev/null
# Dependencies built once: start the old tree from this tree's release build.
[ -d target/release ] && mkdir -p "$old/target" && cp -a target/release "$old/target/"
# Each side measures with its own benchmark program (`bench --cost-only`,
# the same code before and after it moved from throttled/examples to the
# bench crate): a revision's programs are embedded in its own daemon library.
build_bench() {
  if [ -f throttled/examples/bench.rs ]; then
    cargo build --release -q -p throttled --example bench && echo "$PWD/target/release/examples/bench"
  else
    cargo build --release -q -p throttle-bench --bin bench && echo "$PWD/target/release/bench"
  fi
}
old_bench=$(cd "$old" && build_bench)
new_bench=$(build_bench)
short=$(git rev-parse --short "$rev")
for i in $(seq "$pairs"); do
  echo "## $short (round $i)"
  "$old_bench" --cost-only
  echo "## this tree (round $i)"
  "$new_bench" --cost-only
done
