"""One fused call and one copy of the same bytes inside a profiler window, for Nsight Compute.

``ncu --profile-from-start off --clock-control none ... python3 tools/ncu_window.py S8 8192`` profiles exactly
two kernels: the fused torch op on the bench's inputs (after warm-up calls outside the window) and a
device-to-device copy that reads and writes the op's minimum bytes (``bench.min_bytes``), so the op's counters
(DRAM throughput, issue activity, stall reasons) sit beside those of a kernel that only moves the bytes.
"""

import sys

import torch
from fused_qkv.bench.bench import SHAPES, min_bytes, torch_impls, torch_inputs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sname, T = argv[0], int(argv[1])
    fused = torch_impls(SHAPES[sname], torch_inputs(SHAPES[sname], T))["fused_torch"]
    n = min_bytes(SHAPES[sname], T)
    src = torch.empty(n // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        fused()
        dst.copy_(src)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    fused()
    dst.copy_(src)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"{sname} T={T}: fused op, then a copy of {n} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
