"""Portability: every kernel specialisation the oracle tests launch, as the torch and as the JAX frontend
specialise it, compiles ahead of time for CUDA sm_90, ROCm gfx942 (MI300) and gfx950 (MI350) -- on a
CPU-only machine.

The interpreter does not type-check the kernel as the compiler does, so this is also
what keeps CPU CI honest about compiled code. fp8 cache dtypes go to the targets that
store them (e4m3fnuz: gfx942; e4m3fn/e5m2: sm_90 and gfx950).

Each target compiles in its own process: Triton 3.6's AMD backend keeps process-wide
state, and a gfx942 e4m3fnuz compile after gfx950 compiles in the same process trips an
assertion in its software fp8 conversion (each target alone compiles cleanly).
"""

import os
import subprocess
import sys

import pytest
import torch
from fused_qkv.core import plan_launch
from fused_qkv.core.aot import compile_for
from fused_qkv.core.spec import TARGET_FP8
from fused_qkv.torch_api.op import _info, _plan, _select_layer
from helpers import make_inputs
from test_torch_op import CASES

TARGETS = ("cuda", "hip:gfx942", "hip:gfx950")


def _dtype(t):
    return None if t is None else str(t.dtype).removeprefix("torch.")


def specialisations(target):
    return [c for c in CASES if c.cache_dtype is None or c.cache_dtype in TARGET_FP8[target]]


@pytest.mark.parametrize("target", TARGETS)
def test_compiles_ahead_of_time(target):
    proc = subprocess.run([sys.executable, __file__, target], capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"compiled {len(specialisations(target))} specialisations for {target}" in proc.stdout


def compile_case(case, target):
    args, kwargs = make_inputs(case, "cpu")
    kc, vc = _select_layer(args["key_cache"], args["value_cache"], kwargs.get("layer"))
    plan, _ = _plan(args["qkv"], args["q_weight"], args["k_weight"], args["cos"], args["sin"], args["positions"],
                    kc, vc, args["slot_mapping"], kwargs["num_q_heads"], kwargs["num_kv_heads"],
                    kwargs["head_dim"], kwargs["eps"], kwargs["norm_weight_offset"], kwargs["is_neox"],
                    kwargs["rotary_dim"], kwargs["offsets"], kwargs["attn_output_gate"], kwargs["gated_qkv_layout"],
                    kwargs["k_scale"], kwargs["v_scale"], kwargs["kv_cache_layout"], kwargs["return_kv"],
                    with_ptr=False, target=target)
    c = plan.constexprs
    ptrs = dict(qkv=_dtype(args["qkv"]), q_weight=_dtype(args["q_weight"]), k_weight=_dtype(args["k_weight"]),
                cos=_dtype(args["cos"]), sin=_dtype(args["sin"]), positions=_dtype(args["positions"]),
                offsets=_dtype(kwargs["offsets"]), slot_mapping=_dtype(args["slot_mapping"]),
                k_scale=_dtype(kwargs["k_scale"]), v_scale=_dtype(kwargs["v_scale"]), layer=None,
                key_cache_in=_dtype(kc), value_cache_in=_dtype(vc), q=_dtype(args["qkv"]),
                gate=_dtype(args["qkv"]) if c["HAS_GATE"] else None,
                k=_dtype(args["qkv"]) if c["RETURN_KV"] else None, v=_dtype(args["qkv"]) if c["RETURN_KV"] else None,
                key_cache=_dtype(kc), value_cache=_dtype(vc))
    binary = "cubin" if target == "cuda" else "hsaco"
    assert len(compile_for(plan, ptrs, target).asm[binary]) > 0

    # the JAX frontend's specialisation of the same case: every pointer present (jax-triton passes 1-element
    # dummies for absent ones), caches with their layer axis and the layer index read inside the kernel
    infos = {k: _info(v, k, False) for k, v in {**args, **kwargs}.items() if isinstance(v, torch.Tensor)}
    jplan = plan_launch(infos["qkv"], infos.get("q_weight"), infos.get("k_weight"), infos["cos"], infos["sin"],
                        infos["positions"], infos["key_cache"], infos["value_cache"], infos["slot_mapping"],
                        num_q_heads=kwargs["num_q_heads"], num_kv_heads=kwargs["num_kv_heads"],
                        head_dim=kwargs["head_dim"], eps=kwargs["eps"], norm_weight_offset=kwargs["norm_weight_offset"],
                        is_neox=kwargs["is_neox"], rotary_dim=kwargs["rotary_dim"], offsets=infos.get("offsets"),
                        attn_output_gate=kwargs["attn_output_gate"], gated_qkv_layout=kwargs["gated_qkv_layout"],
                        k_scale=infos.get("k_scale"), v_scale=infos.get("v_scale"),
                        kv_cache_layout=kwargs["kv_cache_layout"], return_kv=kwargs["return_kv"],
                        layer="dynamic" if case.layers else None, target=target,
                        warp_size=64 if target.startswith("hip") else 32)
    jptrs = {k: v if v is not None else "float32" for k, v in ptrs.items()}
    jptrs["layer"] = "int32" if case.layers else "float32"
    assert len(compile_for(jplan, jptrs, target).asm[binary]) > 0


def main(target):
    failures = 0
    cases = specialisations(target)
    for case in cases:
        try:
            compile_case(case, target)
        except Exception as exc:  # report every failing specialisation, not only the first
            failures += 1
            print(f"FAILED {target} {case.id()}: {str(exc)[:2000]}")
    suffix = f", {failures} failed" if failures else ""
    print(f"compiled {len(cases) - failures} specialisations for {target}{suffix}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
