"""Where the eager host time of one torch call goes: ``python -m fused_qkv.bench.host_profile`` on a GPU machine
prints the wall time per call against one aten op, then a cProfile of 2000 calls (S1 shape, T=16)."""

import cProfile
import pstats
import sys

from .bench import SHAPES, host_overhead, torch_impls, torch_inputs


def main() -> int:
    import torch

    fn = torch_impls(SHAPES["S1"], torch_inputs(SHAPES["S1"], 16))["fused_torch"]
    x, y = torch.randn(16, device="cuda"), torch.empty(16, device="cuda")
    aten = host_overhead(lambda: torch.add(x, 1.0, out=y), reps=2000)
    ours = host_overhead(fn, reps=2000)
    print(f"one aten op {aten:.1f} us; fused op {ours:.1f} us per eager call = {ours / aten:.2f} aten ops")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
