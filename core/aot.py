"""Ahead-of-time compilation of the kernel for a GPU target, from a launch plan alone (no GPU needed).

Used by the portability tests: every specialisation the tests launch is compiled for
``cuda`` sm_90, ``hip`` gfx942 and gfx950 on a CPU-only machine.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .plan import COMPILE_OPTIONS, INPUT_NAMES, OUTPUT_NAMES, SCALAR_NAMES, LaunchPlan

_TRITON_DTYPES = {
    "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int32": "i32", "int64": "i64",
    "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5", "float8_e4m3fnuz": "fp8e4b8",
}

TARGETS = {
    "cuda": ("cuda", 90, 32),
    "hip:gfx942": ("hip", "gfx942", 64),
    "hip:gfx950": ("hip", "gfx950", 64),
}


def signature(plan: LaunchPlan, pointer_dtypes: Mapping[str, Optional[str]], *, eps_type: str = "fp32"):
    """(signature, constants) for ``triton.compiler.ASTSource``.

    ``pointer_dtypes`` maps every input/output name to its dtype name, or None when the
    frontend passes None (absent optional tensor: a constexpr None, as the torch binding does).
    ``eps_type``: ``fp32`` (Triton's launcher) or ``fp64`` (jax-triton passes Python floats as fp64).
    """
    sig, consts = {}, {}
    for name in INPUT_NAMES + OUTPUT_NAMES:
        arg = _arg_name(name)
        dt = pointer_dtypes.get(name)
        if dt is None:
            sig[arg], consts[arg] = "constexpr", None
        else:
            sig[arg] = "*" + _TRITON_DTYPES[dt]
    for name in SCALAR_NAMES:
        if name in ("eps", "norm_weight_offset"):
            sig[name] = eps_type
        else:
            sig[name] = "i64" if abs(plan.scalars[name]) >= 2**31 else "i32"
    for k, v in plan.constexprs.items():
        sig[k], consts[k] = "constexpr", v
    return sig, consts


def retarget(plan: LaunchPlan, target: str) -> LaunchPlan:
    """The same specialisation as ``target`` would launch it: its own tile heuristics (and the heads in a tile's
    rows, which follow the tile), hardware fp8 casts, and the target's evict-first hints for an interpreter plan
    (which never has them); a GPU plan keeps its own hints."""
    import dataclasses

    from .plan import (
        ITEMSIZE,
        choose_tiles,
        dynamic_rows,
        evict_first,
        head_program_constexprs,
        head_rows,
        hw_cast,
        launch_grid,
    )

    c = plan.constexprs
    warp = TARGETS[target][2]
    qh, kvh, group, d = c["NUM_Q_HEADS"], c["NUM_KV_HEADS"], c["HEAD_GROUP"], c["HEAD_DIM"]
    plain_rope = bool(c["HAS_ROPE"] and c["MROPE"] == 0)
    block_t, num_warps = choose_tiles(plan.num_tokens, c["BLOCK_D"], target, warp,
                                      dynamic_rows=dynamic_rows(c["Q_SCALE_MODE"], qh, kvh, d, plain_rope))
    rows = head_rows(qh, kvh, d, plain_rope, group, block_t)
    qkv_row_bytes = (c["V_COL0"] + kvh * d) * ITEMSIZE[plan.pointer_dtypes["qkv"]]  # the V block ends the row
    constexprs = dict(c, BLOCK_T=block_t, Q_SOFT_FP8=False, K_SOFT_FP8=False, V_SOFT_FP8=False,
                      HW_CAST=hw_cast(target), EVICT_FIRST=c["EVICT_FIRST"] if c["HW_CAST"]
                      else evict_first(plan.num_tokens, qkv_row_bytes, target),
                      **head_program_constexprs(qh, kvh, group, rows, c["HAS_GATE"]))
    return dataclasses.replace(plan, constexprs=constexprs, num_warps=num_warps,
                               grid=launch_grid(plan.num_tokens, constexprs))


def jax_pointer_dtypes(plan: LaunchPlan) -> dict:
    """Pointer dtypes as the JAX frontend passes them: 1-element float32 dummies for absent arguments."""
    return {k: v if v is not None else "float32" for k, v in plan.pointer_dtypes.items()}


def compile_for(plan: LaunchPlan, pointer_dtypes: Mapping[str, Optional[str]], target: str, *,
                aligned_pointers: bool = False, **kw):
    """Compile the kernel for ``target`` (a key of ``TARGETS``); returns Triton's compiled kernel.

    ``aligned_pointers``: tell the compiler every pointer is 16-byte aligned, as jax-triton always does and Triton's
    launcher does for aligned tensors (integer scalars get no such facts: jax-triton's view of them)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from .launch import get_kernel

    fn = get_kernel(interpret=False)
    sig, consts = signature(plan, pointer_dtypes, **kw)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if aligned_pointers and sig.get(name, "").startswith("*")}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget(*TARGETS[target]),
                          options={"num_warps": plan.num_warps, **COMPILE_OPTIONS})


def _arg_name(name: str) -> str:
    return {"q": "q_out", "gate": "gate_out", "k": "k_out", "v": "v_out"}.get(name, name) + "_ptr"
