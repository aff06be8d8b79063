"""The fp8 stores of compiled code: on sm_90 the kernel adds nothing to the cast (``HW_CAST`` 2), because Triton
lowers fp32 -> fp8 to ``cvt.rn.satfinite``, which rounds to nearest-even and saturates to the finite range as the
oracle does. That lowering is checked here in the PTX, for every fp8 store (q, both caches, static and dynamic
scales), on a CPU. ROCm plans keep the explicit clamp (``HW_CAST`` 1). The values themselves are checked on the
GPU by the rest of the suite (test_rounding.py: saturation and ties at the binade edges)."""

import re

import pytest
from fused_qkv.core.aot import compile_for, jax_pointer_dtypes, retarget
from helpers import Case, plan_for

CASES = [
    Case(T=16, num_blocks=16, cache_dtype="float8_e4m3fn", scale="tensor", q_fp8="static"),
    Case(T=16, num_blocks=16, cache_dtype="float8_e4m3fn", q_fp8="dynamic", scale_cache="kv"),
    Case(T=16, num_blocks=16, cache_dtype="float8_e5m2", scale="head"),
]


@pytest.mark.parametrize("case", CASES, ids=["static-q-e4m3", "dynamic-e4m3", "e5m2-cache"])
def test_sm90_fp8_stores_are_saturating_round_to_nearest_casts(case):
    plan = plan_for(case)
    assert plan.constexprs["HW_CAST"] == 2
    ptx = compile_for(plan, jax_pointer_dtypes(plan), "cuda", aligned_pointers=True).asm["ptx"]
    casts = re.findall(r"cvt(?:\.\w+)*\.e[45]m[23]x2\.f32", ptx)
    assert casts and all(c.startswith("cvt.rn.satfinite.") for c in casts), sorted(set(casts))
    # nothing clamps to the fp8 range before the cast (448 = 0f43E00000, 57344 = 0f47600000)
    assert not re.search(r"(?:min|max)(?:\.\w+)*\.f32\s[^;]*0f(?:43E00000|C3E00000|47600000|C7600000)", ptx)


@pytest.mark.parametrize("target", ["hip:gfx942", "hip:gfx950"])
def test_rocm_plans_clamp_explicitly(target):
    assert retarget(plan_for(CASES[0], target="interpreter"), target).constexprs["HW_CAST"] == 1
