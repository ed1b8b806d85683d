#!/usr/bin/env bash
# Run every cvops benchmark, stock vs ours, and collect the tables in bench/results/.
#
#   bash bench/run.sh            # --quick: bounded, a few minutes each, for a shared machine
#   bash bench/run.sh --full     # the sizes and durations published in docs/performance.md
#   BENCHES="latency search" bash bench/run.sh
#
# Each benchmark starts its own PostgreSQL, S3 stand-in, stock server and our server on free
# 127.0.0.1 ports and stops them when it ends.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
MODE=${1:---quick}
case "$MODE" in --quick|--full) ;; *) echo "usage: bench/run.sh [--quick|--full]" >&2; exit 64 ;; esac
BENCHES=${BENCHES:-latency throughput saturation training_overhead artifacts startup search serving serving_frameworks sweep ui_speed}

for bench in $BENCHES; do
    echo "===== $bench $MODE ($(date -u +%H:%M:%S))"
    module=$bench
    [ "$bench" = training_overhead ] && module=bench_training_overhead  # the SDK helper's file
    "$PYTHON" -m "bench.$module" "$MODE"
done
echo "===== done; tables in bench/results/*.md"
