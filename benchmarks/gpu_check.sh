#!/usr/bin/env bash
# The CUDA backend's check on a machine with an NVIDIA GPU and no network.
#
#   benchmarks/gpu_check.sh WHEELS_DIR [OUT_DIR]
#
# WHEELS_DIR holds a pycuda sdist and its dependencies, fetched beforehand on a
# machine with network:
#   pip download --no-binary pycuda "pycuda>=2024.1" -d WHEELS_DIR
#   pip download setuptools wheel -d WHEELS_DIR        # pycuda's build requirements
# It needs nvcc (the CUDA toolkit) and the NVIDIA driver, and runs in a Python
# that already has dlc's dependencies (numpy, scipy, networkx, numba, pytest).
# Steps, each under a timeout (7.5 minutes in all at most, about 5 usually):
# build pycuda offline into a virtual environment that sees the system's
# packages, run the GPU-marked tests, run benchmarks/gpu_bench.py --quick.
# Results go to OUT_DIR (default gpu-check/); the exit status is the tests'.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:?usage: benchmarks/gpu_check.sh WHEELS_DIR [OUT_DIR]}
OUT=${2:-gpu-check}
mkdir -p "$OUT"
START=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - START ))s)"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.csv"
command -v nvcc >/dev/null || { echo "nvcc not on PATH: install the CUDA toolkit" >&2; exit 1; }
nvcc --version | tail -1

step "build pycuda offline"
VENV=${VENV:-.gpu-venv}
python3 -m venv --system-site-packages "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export CUDA_ROOT=${CUDA_ROOT:-$(dirname "$(dirname "$(command -v nvcc)")")}
# the build requirements first (seconds), then pycuda's C++ extension (the long part)
timeout 30 python3 -m pip install --no-index --find-links "$WHEELS" -q setuptools wheel
timeout 190 python3 -m pip install --no-index --find-links "$WHEELS" --no-build-isolation -q pycuda
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # dlc from this checkout, no install needed
python3 -c "import pycuda.autoinit, pycuda.driver as d; print('pycuda', d.get_version(), pycuda.autoinit.device.name())"

step "GPU tests"
set +e
timeout 130 python3 -m pytest -q -m gpu tests/test_cuda_runtime.py --junitxml "$OUT/gpu-tests.xml" \
  2>&1 | tee "$OUT/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}

step "benchmarks"
timeout 100 python3 benchmarks/gpu_bench.py --quick --json "$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.txt"
bench_rc=${PIPESTATUS[0]}
set -e

step "done: tests exit $tests_rc, benchmarks exit $bench_rc"
exit "$tests_rc"
