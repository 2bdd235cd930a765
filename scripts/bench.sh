#!/usr/bin/env bash
# Reproduces the data-path tables in docs/BENCHMARKS.md (root; about 4 minutes).
# Extra arguments go to the benchmark, e.g. --rates 1M,10M --dirs down --skip-overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
bash scripts/bootstrap.sh
cargo build --release -p throttled --example bench
exec ./target/release/examples/bench "$@"
