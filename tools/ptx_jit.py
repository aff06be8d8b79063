"""Where the JAX op's extra GPU time on S2 at small T comes from: ``python tools/ptx_jit.py S2 4 S2 16``.

The two frontends launch one kernel source, but not one binary. The torch op launches the cubin Triton's own
``ptxas`` builds; jax-triton hands XLA the PTX, which the CUDA driver compiles when the module is loaded. The two
also specialise differently: Triton's launcher tells the compiler which integer scalars are multiples of 16,
jax-triton does not. This tool times one kernel, on the bench's inputs with int32 indices (as the JAX bench passes
them), four ways through the same launcher and arguments:

- ``ptxas, torch spec``: the torch op's own kernel;
- ``driver JIT, torch spec``: the same PTX, compiled by the driver (``cuModuleLoadData``);
- ``ptxas, jax spec`` / ``driver JIT, jax spec``: compiled without the integer scalars' divisibility facts.

Beside them, the torch op and the jitted JAX op as the bench times them (CUPTI kernel time). Absent optional
pointers stay constexpr None in every variant (jax-triton passes 1-element dummies instead), so the jax-spec rows
isolate the scalars.
"""

import ctypes
import sys

from fused_qkv.bench.bench import SHAPES, device_time_us, graph_time_us, jax_impls, torch_impls, torch_inputs
from lab import recorded_launch


def _driver_function(ptx: str, name: str) -> int:
    """Load PTX through the CUDA driver's JIT into the current context; returns the CUfunction handle."""
    cuda = ctypes.CDLL("libcuda.so.1")
    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    err = cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(ptx.encode() + b"\0"))
    if err:
        raise RuntimeError(f"cuModuleLoadData failed: {err}")
    err = cuda.cuModuleGetFunction(ctypes.byref(function), module, name.encode())
    if err:
        raise RuntimeError(f"cuModuleGetFunction failed: {err}")
    return function.value


def _variants(shape, inp):
    """The recorded launcher arguments of one torch call and the four compiled variants to launch them with."""
    import triton
    from fused_qkv.core import get_kernel
    from fused_qkv.core.plan import INPUT_NAMES, SCALAR_NAMES
    from fused_qkv.torch_api import fast_path
    from triton.backends.compiler import GPUTarget

    _, args, keep = recorded_launch(torch_impls(shape, inp)["fused_torch"])
    (compiled, _, _), = fast_path._COMPILED.values()
    src, meta = compiled.src, compiled.metadata
    scalar_idx = {(len(INPUT_NAMES) + i,) for i in range(len(SCALAR_NAMES))}
    attrs = {k: v for k, v in src.attrs.items() if k not in scalar_idx}
    jax_src = triton.compiler.ASTSource(fn=get_kernel(interpret=False), signature=dict(src.signature),
                                        constexprs=dict(src.constants), attrs=attrs)
    jax_spec = triton.compile(jax_src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": meta.num_warps, "num_stages": meta.num_stages})
    variants = {}
    for label, ck in (("torch spec", compiled), ("jax spec", jax_spec)):
        variants[f"ptxas, {label}"] = (ck.run, ck.function, ck.packed_metadata)
        variants[f"driver JIT, {label}"] = (ck.run, _driver_function(ck.asm["ptx"], ck.metadata.name),
                                            ck.packed_metadata)
    return args, variants, keep


def main(argv=None) -> int:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    pairs = [(argv[i], int(argv[i + 1])) for i in range(0, len(argv), 2)]
    for sname, T in pairs:
        shape = SHAPES[sname]
        inp = torch_inputs(shape, T)
        inp32 = dict(inp, positions=inp["positions"].int(), slot_mapping=inp["slot_mapping"].int())
        args, variants, keep = _variants(shape, inp32)
        results = {}
        for label, (run, function, packed) in variants.items():
            def launch(run=run, function=function, packed=packed, args=args):
                run(args[0], 1, 1, torch.cuda.current_stream().cuda_stream, function, packed, None, None, None,
                    *args[9:])

            results[label] = (graph_time_us(launch, 200, calls_per_graph=20), device_time_us(launch, 50))
        torch_op = torch_impls(shape, inp32)["fused_torch"]
        results["torch op (int32)"] = (graph_time_us(torch_op, 200, calls_per_graph=20),
                                       device_time_us(torch_op, 50))
        results["jax op (int32)"] = (float("nan"), device_time_us(jax_impls(shape, inp)["fused_jax"], 50))
        for label, (graph_us, kernel_us) in results.items():
            print(f"{sname} T={T:<3} {label:<24} graph {graph_us:6.2f} us  kernel (CUPTI) {kernel_us:6.2f} us",
                  flush=True)
        del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
