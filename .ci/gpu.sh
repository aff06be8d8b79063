#!/usr/bin/env bash
# One GPU session's checks (run through the device tool on the H200; see README "Platforms").
#   bash .ci/gpu.sh            the whole test suite on cuda + the demo
#   bash .ci/gpu.sh tests 1|2  one half of it (1: tests/gpu, integration, test_[a-n]*; 2: the rest + the demo),
#                              each under the device tool's 10-minute limit; both halves end with the AOT compiles
#   bash .ci/gpu.sh tests par N
#                              the whole suite but the AOT compiles (CI's job) in N pytest-xdist workers on the one
#                              GPU (the pytest-xdist and execnet wheels carried in .whl/xd/), then the demo
#   bash .ci/gpu.sh sanitize   compute-sanitizer memcheck over the oracle cases and fuzzed configurations,
#                              then the JAX donation benchmark
#   bash .ci/gpu.sh bench ARGS fused-qkv bench ARGS, results (table, JSON, PNG) under $OUT
#   bash .ci/gpu.sh compare DIR [TESTS...]
#                              the fused op alone, an older version (a checkout in DIR, e.g. `git worktree add
#                              .old REV`, carried) then this one (tools/compare_versions.py); the host-time
#                              profile; then pytest on TESTS (cuda), if given
#   bash .ci/gpu.sh native [TESTS...]
#                              build the native eager launcher (timed), its tests and the fast-path tests on cuda
#                              (plus TESTS), then the host-time profile
# Writes full logs under $OUT (default ./gpu-out).
mode=${1:-tests}
set -o pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# jax-triton, nbclient, ipykernel and jupyter_client are not on the GPU image: carry their wheels (.whl/, and
# .whl/nb/ with their dependencies for Python 3.12, see README) and install them beside the project; of .whl/nb/
# pip takes only what the image lacks.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl $(ls .whl/xd/*.whl 2>/dev/null) \
    >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
if ls .whl/nb/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --find-links .whl/nb nbclient nbformat ipykernel >>"$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 1; }
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and JAX share the GPU in one pytest process
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton, jax; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"
rc=0
if [ "$mode" = bench ]; then
  shift
  PYTHONUNBUFFERED=1 python3 -m fused_qkv.bench.cli bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
  exit "${PIPESTATUS[0]}"
fi
if [ "$mode" = compare ]; then
  old=$2; shift 2
  python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/oldsite "$old" >>"$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 1; }
  # the older install comes first on the path; the script uses only what every version's bench.py has
  PYTHONPATH=/tmp/oldsite:$PYTHONPATH python3 tools/compare_versions.py --out "$OUT/compare_old.json" \
    2>&1 | tee "$OUT/compare_old.log" || rc=1
  python3 tools/compare_versions.py --out "$OUT/compare_new.json" 2>&1 | tee "$OUT/compare_new.log" || rc=1
  python3 tools/host_profile.py >"$OUT/host_profile.log" 2>&1 || rc=1
  head -8 "$OUT/host_profile.log"
  if [ $# -gt 0 ]; then
    FUSED_QKV_TEST_DEVICE=cuda PYTHONUNBUFFERED=1 python3 -m pytest -q -p no:cacheprovider "$@" -rf 2>&1 \
      | tee "$OUT/pytest_cuda_focused.log" | tail -15 || rc=1
  fi
  exit $rc
fi
if [ "$mode" = native ]; then
  shift
  python3 -c "
import time; t = time.perf_counter()
from fused_qkv.torch_api import native
native.load()
print(f'native launcher: {native.status()} (load/build {time.perf_counter() - t:.1f} s)')" 2>&1 | tee "$OUT/native_build.log"
  FUSED_QKV_TEST_DEVICE=cuda PYTHONUNBUFFERED=1 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fast_path.py \
    tests/test_native_launcher.py tests/test_launch_cache.py "$@" -rf 2>&1 | tee "$OUT/pytest_native.log" | tail -15 \
    || rc=1
  python3 tools/host_profile.py >"$OUT/host_profile.log" 2>&1 || rc=1
  head -8 "$OUT/host_profile.log"
  exit $rc
fi
if [ "$mode" = sanitize ]; then
  # no caching allocator: every tensor is its own allocation, so memcheck sees any access past its end
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONUNBUFFERED=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
    python3 tests/gpu/sanitize_cases.py 40 >"$OUT/sanitizer.log" 2>&1 || rc=1
  grep -E "SANITIZE RUN DONE|ERROR SUMMARY" "$OUT/sanitizer.log"; tail -3 "$OUT/sanitizer.log"
  python3 tools/jax_donation.py --out "$OUT/jax_donation.json" 2>&1 | tee "$OUT/jax_donation.log" || rc=1
  exit $rc
fi
part=${2:-all}
log=pytest_cuda${2:+_part$2}.log
case $part in
  all) files=(tests) ;;
  1) files=(tests/gpu tests/integration tests/test_[a-n]*.py tests/test_zz_aot.py) ;;
  2) files=(tests/test_[o-y]*.py tests/test_zz_aot.py) ;;
  par) files=(tests/gpu tests/integration tests/test_[a-y]*.py -n "${3:-6}"); log=pytest_cuda_parallel.log ;;
  *) echo "usage: bash .ci/gpu.sh tests [1|2|par N]"; exit 2 ;;
esac
FUSED_QKV_TEST_DEVICE=cuda PYTHONUNBUFFERED=1 python3 -m pytest -q -p no:cacheprovider "${files[@]}" -rf 2>&1 \
  | tee "$OUT/$log" | tail -25 || rc=1
if [ "$part" != 1 ]; then
  python3 -m fused_qkv.bench.cli demo --device cuda 2>&1 | tee "$OUT/demo_cuda.log" || rc=1
fi
exit $rc
