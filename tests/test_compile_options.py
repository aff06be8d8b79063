"""The kernel is compiled with fused multiply-adds asked for (``plan.COMPILE_OPTIONS``), not left to Triton's
default, which Triton 3.9 warns that 3.10 turns off: with that default switched off through the environment, the
sm_90 PTX of a rotating call still fuses its products (the rotation and the norm's sum of squares)."""

import re

from fused_qkv.core.aot import compile_for, jax_pointer_dtypes
from fused_qkv.core.plan import COMPILE_OPTIONS
from helpers import Case, plan_for


def test_fp_fusion_is_asked_for_not_defaulted(monkeypatch):
    assert COMPILE_OPTIONS == {"enable_fp_fusion": True}
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    plan = plan_for(Case(T=16, num_blocks=16))
    ptx = compile_for(plan, jax_pointer_dtypes(plan), "cuda", aligned_pointers=True).asm["ptx"]
    assert len(re.findall(r"\bfma\.rn\.f32\b", ptx)) >= 8
