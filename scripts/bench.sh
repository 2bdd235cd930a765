#!/usr/bin/env bash
# Reproduces the data-path tables of docs/BENCHMARKS.md (root; about 5 minutes).
#   scripts/bench.sh            print the tables
#   scripts/bench.sh --write    also splice them into docs/BENCHMARKS.md
# Other arguments go to the benchmark, e.g. --rates 1M,10M --dirs down --skip-overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
write=false
if [ "${1:-}" = "--write" ]; then write=true; shift; fi
bash scripts/bootstrap.sh
cargo build --release -p throttled --example bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
./target/release/examples/bench "$@" | tee "$out"
$write || exit 0
python3 - "$out" docs/BENCHMARKS.md <<'PY'
import re, sys, datetime
tables = open(sys.argv[1]).read().strip().split("\n\n")
head, tables = tables[0], tables[1:]
doc = open(sys.argv[2]).read()
stamp = f"{head} Measured {datetime.date.today()}."
for name, body in zip(["ACCURACY", "CONTROL", "COST", "OVERHEAD"], [stamp + "\n\n" + tables[0]] + tables[1:]):
    doc = re.sub(rf"<!-- BEGIN {name} -->.*?<!-- END {name} -->",
                 f"<!-- BEGIN {name} -->\n{body}\n<!-- END {name} -->", doc, flags=re.S)
open(sys.argv[2], "w").write(doc)
PY
echo "bench.sh: docs/BENCHMARKS.md updated"
