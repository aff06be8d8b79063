#!/usr/bin/env bash
# One GPU session's checks (run through the device tool on the H100; see README "Platforms").
# Writes full logs under $OUT (default ./gpu-out).
set -o pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
rc=0
FUSED_QKV_TEST_DEVICE=cuda PYTHONUNBUFFERED=1 python3 -m pytest -q -p no:cacheprovider tests -rf 2>&1 \
  | tee "$OUT/pytest_cuda.log" | tail -25 || rc=1
python3 -m fused_qkv.bench.cli demo --device cuda 2>&1 | tee "$OUT/demo_cuda.log" || rc=1
exit $rc
