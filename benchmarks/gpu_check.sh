#!/usr/bin/env bash
# The CUDA backend's check on a machine with an NVIDIA GPU and no network.
#
#   benchmarks/gpu_check.sh WHEELS_DIR [OUT_DIR]
#
# WHEELS_DIR holds benchmarks/gpu_wheels.txt's files, fetched beforehand on a
# machine with network for the GPU machine's Python (cp312 there):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -r benchmarks/gpu_wheels.txt -d WHEELS_DIR
#   pip download --no-deps --no-binary :all: "pycuda==2026.1" -d WHEELS_DIR
# and, to save the GPU machine the pycuda build (minutes), the pycuda wheel a
# rehearsal of this script builds on a machine without a GPU (same Python
# version; CUDA_ROOT of the same major version; LIBCUDA_DIR pointing at a
# folder with any libcuda.so, e.g. the toolkit's stub):
#   cp TARGET/.build/dist/pycuda-2026.1-cp312-*.whl WHEELS_DIR
# It needs nvcc (CUDA_ROOT: the toolkit, found through nvcc by default), the
# NVIDIA driver's libcuda, and a Python (PYTHON, default python3) that already
# has dlc's dependencies (numpy, scipy, networkx, numba, pytest). Nothing is
# installed into that Python, and nothing is downloaded: pycuda and its
# dependencies go into a target folder (TARGET, default .gpu-target) put on
# PYTHONPATH, so the Python's own packages (numpy, numba, torch) stay visible.
# pycuda is installed from a carried wheel if WHEELS_DIR has one for this
# Python, else built from its sdist with a siteconf.py that names the toolkit,
# the driver library's folder and cuRAND off (its setup reads neither
# CUDA_ROOT from the environment nor finds curand.h in a minimal toolkit);
# the built wheel is kept in TARGET/.build/dist. A second run reuses pycuda.
#
# Steps, each under a timeout (7.5 minutes in all at most): build pycuda, run
# the GPU-marked tests, run benchmarks/gpu_bench.py --quick (its JSON is written
# after every section). MEMCHECK=1 adds compute-sanitizer over a few tests.
# Without a GPU (no nvidia-smi, or pycuda cannot start the driver) it stops
# after the build with exit status 3. Results go to OUT_DIR (default
# gpu-check/); otherwise the exit status is the tests'.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=$(cd "${1:?usage: benchmarks/gpu_check.sh WHEELS_DIR [OUT_DIR]}" && pwd)
OUT=${2:-gpu-check}
PY=${PYTHON:-python3}
TARGET=$(mkdir -p "${TARGET:-.gpu-target}" && cd "${TARGET:-.gpu-target}" && pwd)
BUILD=${BUILD:-$TARGET/.build}
PYCUDA_VERSION=2026.1
mkdir -p "$OUT" "$BUILD"
START=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - START ))s)"; }
die() { echo "gpu_check: $1" >&2; exit "${2:-1}"; }

step "device and toolkit"
HAVE_GPU=1
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.csv"
else
  HAVE_GPU=0; echo "no GPU visible (nvidia-smi missing or failing): building only"
fi
command -v nvcc >/dev/null || die "nvcc not on PATH: install the CUDA toolkit"
nvcc --version | tail -1
if [ -z "${CUDA_ROOT:-}" ]; then  # the toolkit around nvcc (through links), else the usual place
  for CUDA_ROOT in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
    [ -f "$CUDA_ROOT/include/cuda.h" ] && break
  done
fi
[ -f "$CUDA_ROOT/include/cuda.h" ] || die "no cuda.h under CUDA_ROOT=$CUDA_ROOT/include: set CUDA_ROOT"
TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
echo "python $("$PY" -c 'import sys; print(sys.version.split()[0])') ($TAG), CUDA_ROOT=$CUDA_ROOT"
ls "$WHEELS"/siphash24-*-"$TAG"-*.whl >/dev/null 2>&1 ||
  die "$WHEELS has no $TAG wheels (siphash24, markupsafe): fetch them for this Python (see the header)"
ls "$WHEELS"/pycuda-"$PYCUDA_VERSION".tar.gz >/dev/null 2>&1 || die "$WHEELS lacks pycuda-$PYCUDA_VERSION.tar.gz"

# linking pycuda needs libcuda.so: the driver ships libcuda.so.1 (often without the .so link), the
# toolkit a stub; LIBCUDA_DIR overrides the search
find_libcuda() {
  local d
  for d in ${LIBCUDA_DIR:-} /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/wsl/lib \
           "$CUDA_ROOT/lib64/stubs" "$CUDA_ROOT/targets/x86_64-linux/lib/stubs"; do
    for f in "$d/libcuda.so" "$d/libcuda.so.1"; do [ -e "$f" ] && { readlink -f "$f"; return; }; done
  done
  ldconfig -p 2>/dev/null | awk '/libcuda\.so/ {print $NF; exit}'
}
LIBCUDA=$(find_libcuda)
[ -n "$LIBCUDA" ] || die "no libcuda.so (NVIDIA driver) found; set LIBCUDA_DIR"
mkdir -p "$BUILD/lib" && ln -sf "$LIBCUDA" "$BUILD/lib/libcuda.so"
echo "libcuda: $LIBCUDA"

# pycuda's wheel from its sdist, offline, against this toolkit and driver library: into $BUILD/dist
build_pycuda() {
  pip_offline 60 --target "$BUILD/tools" setuptools wheel  # apart: a venv of Python 3.12 has no setuptools
  rm -rf "$BUILD/src" "$BUILD/dist" && mkdir -p "$BUILD/src"
  tar xzf "$WHEELS/pycuda-$PYCUDA_VERSION.tar.gz" -C "$BUILD/src" --strip-components 1
  cat > "$BUILD/src/siteconf.py" <<EOF
CUDA_ROOT = "$CUDA_ROOT"
CUDA_INC_DIR = ["$CUDA_ROOT/include"]
CUDADRV_LIB_DIR = ["$BUILD/lib"]
CUDADRV_LIBNAME = ["cuda"]
CUDART_LIB_DIR = ["$CUDA_ROOT/lib64"]
CUDA_ENABLE_CURAND = False
CUDA_ENABLE_GL = False
USE_SHIPPED_BOOST = True
EOF
  PYTHONPATH="$BUILD/tools:$PYTHONPATH" timeout "${BUILD_TIMEOUT:-300}" "$PY" -m pip wheel --no-index \
    --find-links "$WHEELS" --no-deps --no-build-isolation -q -w "$BUILD/dist" "$BUILD/src"
}

step "install pycuda offline into $TARGET"
export PYTHONPATH="$TARGET:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # dlc from this checkout, pycuda from the target
pip_offline() { timeout "$1" "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --upgrade -q "${@:2}"; }
if "$PY" -c "import pycuda, sys; sys.exit(pycuda.VERSION_TEXT != '$PYCUDA_VERSION')" 2>/dev/null; then
  echo "pycuda $PYCUDA_VERSION already in $TARGET"
else
  "$PY" -c "import numpy" 2>/dev/null || pip_offline 60 --target "$TARGET" numpy
  pip_offline 60 --target "$TARGET" pytools platformdirs siphash24 mako markupsafe typing_extensions
  CARRIED=$(ls "$WHEELS"/pycuda-"$PYCUDA_VERSION"-"$TAG"-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$CARRIED" ]; then
    echo "pycuda: the carried wheel $(basename "$CARRIED")"
  else
    echo "pycuda: building from the sdist (minutes)"
    build_pycuda
    CARRIED=$(ls "$BUILD"/dist/pycuda-"$PYCUDA_VERSION"-*.whl)
    # a libcuda.so without the driver's symbols (an empty stub) links to nothing: refuse such a build
    "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [f for f in z.namelist() if
        f.startswith('pycuda/_driver')][0]; open(sys.argv[2], 'wb').write(z.read(n))" "$CARRIED" "$BUILD/_driver.so"
    grep -q 'libcuda\.so' "$BUILD/_driver.so" ||
      die "the pycuda build does not link libcuda ($LIBCUDA has no driver symbols?)"
  fi
  pip_offline 60 --target "$TARGET" "$CARRIED"
fi
"$PY" -c "import pycuda; print('pycuda', pycuda.VERSION_TEXT, 'in', pycuda.__path__[0])"
[ "$HAVE_GPU" = 1 ] || die "pycuda installed; no GPU here, so the tests and benchmarks do not run" 3
"$PY" -c "
import pycuda.driver as d
d.init()
print('driver', d.get_driver_version(), 'pycuda built for CUDA', d.get_version(), d.Device(0).name())" ||
  die "pycuda cannot start the driver" 3

step "GPU tests"
set +e
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_runtime.py --junitxml "$OUT/gpu-tests.xml" \
  2>&1 | tee "$OUT/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}

step "benchmarks"
timeout 120 "$PY" benchmarks/gpu_bench.py --quick --json "$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.txt"
bench_rc=${PIPESTATUS[0]}

if [ "${MEMCHECK:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck"
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_cuda_runtime.py -k "sample_program or take" 2>&1 | tail -40 | tee "$OUT/memcheck.txt"
fi
set -e

step "done: tests exit $tests_rc, benchmarks exit $bench_rc"
exit "$tests_rc"
