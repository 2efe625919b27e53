#!/usr/bin/env bash
# The GPU check of issue 13 (docs/devices.md), one prepared run for a machine with one CUDA GPU:
#   benchmarks/gpu_check.sh            # from the repository root; under 8 minutes
# 1. benchmarks/gpu_check.py: training img/s (synthetic on-device data and a real JPEG folder) of
#    mobilenet_v2_x1_0 and shufflenet_v1_g3_x1_0 at 224 px, batch 256, against a plain PyTorch loop over
#    torchvision's mobilenet_v2; eval img/s; batch-1/64 latency (eager, compiled) against torchvision;
#    GPU memory peak; GPU utilisation while training from the folder. Printed and saved to
#    benchmarks/results/gpu_check.json.
# 2. The GPU-only tests (pytest -m gpu).
# --smoke (or GPU_CHECK_SMOKE=1): the whole script on the CPU with tiny sizes, writing nothing under
# benchmarks/results unless --out is given (the test suite runs this so the script cannot rot).
# PYTHON=... picks the interpreter (default .venv/bin/python, created by `make setup` when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    make setup
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever the venv points at
smoke=0
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
    set -- --smoke "$@"
fi
for arg in "$@"; do
    if [ "$arg" = --smoke ]; then smoke=1; fi
done
if [ "$smoke" = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
start=$(date +%s)
# 6.5 + 1.25 minutes at most; the JSON is saved after every part ("complete": false until the end)
rc=0
timeout 390 "$PY" benchmarks/gpu_check.py "$@" || rc=$?
if [ "$rc" != 0 ]; then echo "gpu_check.py stopped with status $rc (the JSON holds the parts measured)" >&2; fi
if [ "$smoke" = 0 ]; then
    timeout 75 "$PY" -m pytest -q -m gpu tests/test_device.py -p no:cacheprovider || rc=$?
fi
echo "gpu_check.sh: $(( $(date +%s) - start )) s"
exit "$rc"
