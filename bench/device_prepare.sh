#!/usr/bin/env bash
# Run here, in the checkout, before bench/device_check.sh goes to the GPU
# machine. The device tool sends the checkout and a `shared/` folder inside
# it, not the ../shared beside it, so this copies the reference benchmarks
# (raw ceiling, user baselines, the BERT tokenizer) into ./shared/bench,
# which .gitignore keeps out of commits.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${POOLQ_BENCH_REF:-../shared/bench}
[ -f "$src/raw_ceiling.py" ] || { echo "no reference benchmarks in $src (set POOLQ_BENCH_REF)" >&2; exit 1; }
rm -rf shared/bench && mkdir -p shared
cp -r "$src" shared/bench
rm -rf shared/bench/device_stack  # the whole-stack kit is carried as .device/ when needed
du -sh shared/bench
echo "ready: run 'bash bench/device_check.sh' on the device (timeout_s 580)"
