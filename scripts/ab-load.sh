#!/usr/bin/env bash
# Before/after for the control plane: the load bench's clients against the
# daemon of revision REV and of this tree, alternately, PAIRS times
# (default 3), as one markdown table. Root; about 2 minutes a pair.
#   scripts/ab-load.sh REV [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
rev="${1:?usage: scripts/ab-load.sh REV [PAIRS]}" pairs="${2:-3}"
bash scripts/bootstrap.sh
old=$(mktemp -d /tmp/ct-ab-XXXXXX)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git worktree add --detach "$old" "$rev" >/dev/null
(cd "$old" && cargo build --release -q -p throttled --bin chadthrottled)
cargo build --release -q -p throttle-bench --bin bench_ab
# On its own, as installed (without the benchmarks' `testing` feature).
cargo build --release -q -p throttled --bin chadthrottled
echo "| daemon | round | p50 | p99 | Limit p99 | daemon CPU per call | calls/s | CPU stolen |"
echo "|---|---|---|---|---|---|---|---|"
for _ in $(seq "$pairs"); do
  ./target/release/bench_ab "$old/target/release/chadthrottled" "$(git rev-parse --short "$rev")"
  ./target/release/bench_ab ./target/release/chadthrottled "this tree"
done
