#!/usr/bin/env bash
# Long fuzz run of every parser that takes outside input: the rate parser,
# the config and rules parser, and D-Bus argument decoding (proptest with
# fresh random seeds each round). CI runs the same tests with a few thousand
# cases each; this runs them with many more until time is up.
#   scripts/fuzz.sh [--minutes N]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
[ "${1:-}" = --minutes ] && minutes="$2"
cases="${CT_FUZZ_CASES:-100000}"
end=$(( $(date +%s) + minutes * 60 ))
rounds=0
cargo build --release --tests -p throttle-common -p throttled --lib >/dev/null 2>&1 || true
while [ "$(date +%s)" -lt "$end" ]; do
  CT_FUZZ_CASES="$cases" cargo test --release -q -p throttle-common --lib -- never_panics display_round_trips accepted_rates >/dev/null
  CT_FUZZ_CASES="$cases" cargo test --release -q -p throttled --lib -- never_panics >/dev/null
  rounds=$((rounds + 1))
done
echo "fuzz.sh: $rounds rounds of $cases cases per test in $minutes min, no failure"
