#!/usr/bin/env bash
# The CUDA backend's check on a machine with an NVIDIA GPU and no network.
#
#   benchmarks/gpu_check.sh WHEELS_DIR [OUT_DIR]
#
# WHEELS_DIR holds a pycuda sdist and its dependencies, fetched beforehand on a
# machine with network:
#   pip download --no-binary pycuda "pycuda>=2024.1" -d WHEELS_DIR
#   pip download setuptools wheel "numpy>=1.26" -d WHEELS_DIR   # build requirements
# It needs nvcc (the CUDA toolkit) and the NVIDIA driver. Steps, about 5
# minutes in all and never more than 8 (each has a timeout): build pycuda offline into a virtual
# environment that sees the system's packages, run the GPU-marked tests, run
# benchmarks/gpu_bench.py --quick. Results go to OUT_DIR (default gpu-check/).
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
# with the system's setuptools first; else with the build requirements from WHEELS_DIR
timeout 120 python3 -m pip install --no-index --find-links "$WHEELS" --no-build-isolation -q pycuda \
  || timeout 120 python3 -m pip install --no-index --find-links "$WHEELS" -q pycuda
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # dlc from this checkout, no install needed
python3 -c "import pycuda.autoinit, pycuda.driver as d; print('pycuda', d.get_version(), pycuda.autoinit.device.name())"

step "GPU tests"
timeout 150 python3 -m pytest -q -m gpu tests/test_cuda_runtime.py --junitxml "$OUT/gpu-tests.xml" | tee "$OUT/gpu-tests.txt"

step "benchmarks"
timeout 90 python3 benchmarks/gpu_bench.py --quick --json "$OUT/gpu-bench.json" | tee "$OUT/gpu-bench.txt"

step "done"
