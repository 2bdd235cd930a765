#!/usr/bin/env bash
# Reproduces the tables of docs/BENCHMARKS.md (root; about 35 minutes).
#   scripts/bench.sh                  print every table
#   scripts/bench.sh --write          also splice them into docs/BENCHMARKS.md
#   scripts/bench.sh --only data|rtt|rtt6|core|monitor|load|metrics|share
#                                     one benchmark: the data path (accuracy,
#                                     control plane, cost with the monitor off
#                                     and on, overhead), downloads at real
#                                     round trips (0.05, 20 and 80 ms, through
#                                     the test kit's delay line; ~7 minutes),
#                                     both directions over IPv6 at those round
#                                     trips (~12 minutes),
#                                     the daemon core (migration, process
#                                     churn), or the monitor's daemon CPU with
#                                     500 processes, or the control plane
#                                     under D-Bus load, or the metrics
#                                     exporter's cost with 1,000 throttles,
#                                     or priorities and caps against a
#                                     hand-written HTB tree (~6 minutes)
# Other arguments go to the data-path benchmark, e.g. --rates 1M,10M --dirs down --skip-overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || exec sudo -E env "PATH=$PATH" "$0" "$@"
write=false only=all
while [ $# -gt 0 ]; do
  case "$1" in
    --write) write=true; shift ;;
    --only) only="$2"; shift 2 ;;
    *) break ;;
  esac
done
bash scripts/bootstrap.sh
cargo build --release -p throttle-bench --bin bench --bin bench_core --bin bench_monitor --bin bench_load \
  --bin bench_metrics --bin bench_share
# The daemon as installed: built on its own, without the `testing` feature
# that the benchmarks enable in throttled.
cargo build --release -p throttled --bin chadthrottled
data=$(mktemp) rtt=$(mktemp) rtt6=$(mktemp) core=$(mktemp) mon=$(mktemp) load=$(mktemp) metrics=$(mktemp) series=$(mktemp) series80=$(mktemp) share=$(mktemp)
trap 'rm -f "$data" "$rtt" "$rtt6" "$core" "$mon" "$load" "$metrics" "$series" "$series80" "$share"' EXIT
case "$only" in all|data) ./target/release/bench --plot-csv "$series" "$@" | tee "$data" ;; esac
# Downloads only: the round trip matters where the sender is remote.
case "$only" in all|rtt) ./target/release/bench --dirs down --rates 256K,1M,10M --rtts 0.05,20,80 \
  --warmup 3 --skip-control --skip-overhead --plot-csv "$series80" --plot-at 80 | tee "$rtt" ;; esac
# IPv6, both directions, every backend and the script (its filters match ip6).
case "$only" in all|rtt6) ./target/release/bench --family 6 --dirs up,down --rates 1M,10M --rtts 0.05,20,80 \
  --warmup 3 --skip-control --skip-overhead | tee "$rtt6" ;; esac
case "$only" in all|core) ./target/release/bench_core | tee "$core" ;; esac
case "$only" in all|monitor) ./target/release/bench_monitor | tee "$mon" ;; esac
case "$only" in all|load) ./target/release/bench_load | tee "$load" ;; esac
case "$only" in all|metrics) ./target/release/bench_metrics | tee "$metrics" ;; esac
case "$only" in all|share) ./target/release/bench_share | tee "$share" ;; esac
$write || exit 0
# The per-second plot of every backend at 10 MiB/s (gnuplot, no X).
plot() { # series-csv png title
  [ -s "$1" ] || return 0
  command -v gnuplot >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox
  cols=$(head -1 "$1" | tr ',' '\n' | wc -l)
  gnuplot <<GP
set terminal pngcairo size 1000,560 font ",10" noenhanced
set output "$2"
set datafile separator ","
set key outside right autotitle columnhead
set title "$3"
set xlabel "second of the run"
set ylabel "MiB/s"
set yrange [0:14]
set grid
plot for [i=2:$cols] "$1" using 1:i with linespoints pointsize 0.6, 10 title "limit" dashtype 2 lc "black"
GP
  echo "bench.sh: $2 written"
}
plot "$series" docs/bench-per-second-10M.png "IP-layer rate per second under a 10 MiB/s limit (one iperf3 flow each)"
plot "$series80" docs/bench-per-second-10M-80ms.png "Downloads at an 80 ms round trip: IP-layer rate per second under a 10 MiB/s limit"
python3 - "$data" "$core" docs/BENCHMARKS.md "$mon" "$load" "$rtt" "$rtt6" "$metrics" "$share" <<'PY'
import re, sys, datetime
def splice(doc, names, tables):
    for name, body in zip(names, tables):
        doc = re.sub(rf"<!-- BEGIN {name} -->.*?<!-- END {name} -->",
                     f"<!-- BEGIN {name} -->\n{body}\n<!-- END {name} -->", doc, flags=re.S)
    return doc
doc = open(sys.argv[3]).read()
today = datetime.date.today()
data = open(sys.argv[1]).read().strip()
if data:
    head, *tables = data.split("\n\n")
    tables[0] = f"{head} Measured {today}.\n\n{tables[0]}"
    doc = splice(doc, ["ACCURACY", "CONTROL", "COST", "OVERHEAD"], tables)
core = open(sys.argv[2]).read().strip()
if core:
    tables = core.split("\n\n")
    tables[0] = f"Measured {today}.\n\n{tables[0]}"
    doc = splice(doc, ["MIGRATION", "CHURN"], tables)
mon = open(sys.argv[4]).read().strip()
if mon:
    doc = splice(doc, ["MONITOR"], [f"Measured {today}.\n\n{mon}"])
for arg, name in ((6, "RTT"), (7, "RTT6")):
    rtt = open(sys.argv[arg]).read().strip()
    if rtt:
        head, table = rtt.split("\n\n", 1)
        doc = splice(doc, [name], [f"{head} Measured {today}.\n\n{table}"])
load = open(sys.argv[5]).read().strip()
if load:
    doc = splice(doc, ["LOAD"], [f"Measured {today}.\n\n{load}"])
metrics = open(sys.argv[8]).read().strip()
if metrics:
    doc = splice(doc, ["METRICS"], [f"Measured {today}.\n\n{metrics}"])
share = open(sys.argv[9]).read().strip()
if share:
    doc = splice(doc, ["SHARE"], [f"Measured {today}.\n\n{share}"])
open(sys.argv[3], "w").write(doc)
PY
echo "bench.sh: docs/BENCHMARKS.md updated"
