"""Where the eager host time of one torch call goes: ``python tools/host_profile.py`` on a GPU machine
prints, for the S1 shape at T=16 (and S2, gated; S4, q only), the wall time per call against one aten op measured
in the same run: through the native launcher (``torch_api/native.cpp``), through the Python fast path alone, and
beside them the parts no Python launcher can avoid: allocating the outputs (``torch.empty``) and Triton's own
launcher called with prepared arguments. Then a cProfile of 2000 S1 calls."""

import cProfile
import pstats
import sys

from fused_qkv.bench.bench import SHAPES, host_overhead, torch_impls, torch_inputs
from lab import python_launcher_only, recorded_launch


def _parts(fn, inp, reps):
    """Host time per call in microseconds: (native path or None, the native module's call alone or None, Python
    fast path, outputs only, Triton's launcher only, number of outputs), for the fast-path entry of ``fn``, one
    eager call of the op on the bench inputs ``inp``."""
    import torch
    from fused_qkv.core import FAST_PATH_ARRAYS
    from fused_qkv.torch_api import fast_path
    from fused_qkv.torch_api.op import clear_caches

    clear_caches()
    fn()
    fn()
    ((key, entry),) = fast_path._FAST.items()
    ours = host_overhead(fn, reps=reps) if entry.native is not None else None
    call_only = None
    if entry.native is not None:  # the C++ part alone: what the public function adds is Python
        cfg = key[1]  # the configuration values, as the public function passes them to the native module
        tensors = [inp.get(k) for k in FAST_PATH_ARRAYS]  # no offsets in the bench inputs: None
        module = entry.native[0]
        if module.call(cfg, *tensors) is None:
            raise RuntimeError("the native module did not take the recorded call")
        call_only = host_overhead(lambda: module.call(cfg, *tensors), reps=reps)
    with python_launcher_only():
        python_path = host_overhead(fn, reps=reps)
    # Triton's launcher with the exact arguments of one Python fast-path call (whose outputs stay alive)
    entry, args, out = recorded_launch(fn)
    shapes = [s for s in entry.outs if s is not None]
    dtype, device = out.q.dtype, out.q.device

    def alloc():
        return [torch.empty(s, dtype=dtype, device=device) for s in shapes]

    allocs = host_overhead(alloc, reps=reps)
    launch = host_overhead(lambda: entry.run(*args), reps=reps)
    return ours, call_only, python_path, allocs, launch, len(shapes)


def main() -> int:
    import torch

    x, y = torch.randn(16, device="cuda"), torch.empty(16, device="cuda")
    aten = host_overhead(lambda: torch.add(x, 1.0, out=y), reps=2000)
    from fused_qkv.torch_api import native

    print(f"one aten op (torch.add(x, 1.0, out=y)): {aten:.1f} us")
    for name in ("S1", "S2", "S4"):
        inp = torch_inputs(SHAPES[name], 16)
        fn = torch_impls(SHAPES[name], inp)["fused_torch"]
        ours, call_only, python_path, allocs, launch, n = _parts(fn, inp, 2000)
        rest = python_path - allocs - launch
        native_txt = "unavailable" if ours is None else (
            f"{ours:.1f} us = {ours / aten:.2f} aten ops (its C++ call alone {call_only:.1f} us = "
            f"{call_only / aten:.2f})")
        print(f"{name} T=16 per eager call: native launcher {native_txt}; Python fast path {python_path:.1f} us = "
              f"{python_path / aten:.2f} aten ops, of which {n} x torch.empty {allocs:.1f} us = {allocs / aten:.2f}, "
              f"Triton's launcher alone {launch:.1f} us = {launch / aten:.2f}, the rest (Python) {rest:.1f} us = "
              f"{rest / aten:.2f}")
    fn = torch_impls(SHAPES["S1"], torch_inputs(SHAPES["S1"], 16))["fused_torch"]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    print(f"native launcher: {native.status()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
