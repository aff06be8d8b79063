"""Large calls mark the data the kernel touches once (qkv loads, every store) evict-first in L2
(``plan.evict_first``, docs/performance.md). The rule is checked on the plan; the hints in the compiled sm_90
code; and the same specialisations compile for ROCm gfx942 and gfx950 (ahead of time, on a CPU)."""

import dataclasses
import re

import pytest
from fused_qkv.core import plan as plan_module
from fused_qkv.core.aot import compile_for, jax_pointer_dtypes, retarget
from helpers import Case, plan_for

CASES = [  # every load and store the hints touch: gate copy, pass-through channels, fp8 caches with scales
    Case(T=16, num_blocks=16, D=256, QH=2, KVH=1, rotary_dim=64, gate="interleaved", offset=1.0),
    Case(T=16, num_blocks=16, cache_dtype="float8_e4m3fn", scale="head"),
    Case(T=16, num_blocks=16, return_kv=False, layout="HND"),
]


def test_the_rule_is_the_size_of_the_qkv_input():
    row = (32 + 2 * 8) * 128 * 2  # S1: 12288 bytes per token
    rule = plan_module.evict_first
    assert not rule(1365, row, "cuda") and rule(1366, row, "cuda")  # 16 MiB of qkv
    assert rule(10922, row, "cuda") and not rule(10923, row, "cuda")  # below 128 MiB
    assert rule(4096, row, "hip:gfx942")
    assert not rule(4096, row, "interpreter")


def test_the_plan_applies_the_rule(monkeypatch):
    case = Case(T=16, num_blocks=16)
    row_bytes = (case.QH + 2 * case.KVH) * case.D * 2
    assert not plan_for(case).constexprs["EVICT_FIRST"]
    monkeypatch.setattr(plan_module, "EVICT_FIRST_MIN_BYTES", 16 * row_bytes)
    assert plan_for(case).constexprs["EVICT_FIRST"]
    monkeypatch.setattr(plan_module, "EVICT_FIRST_MIN_BYTES", 16 * row_bytes + 1)
    assert not plan_for(case).constexprs["EVICT_FIRST"]


def _evict_first_accesses(plan, evict):
    plan = dataclasses.replace(plan, constexprs=dict(plan.constexprs, EVICT_FIRST=evict))
    ptx = compile_for(plan, jax_pointer_dtypes(plan), "cuda", aligned_pointers=True).asm["ptx"]
    loads = re.findall(r"ld\.global\S*L2::cache_hint", ptx)
    stores = re.findall(r"st\.global\S*L2::cache_hint", ptx)
    return len(loads), len(stores), "evict_first" in ptx


@pytest.mark.parametrize("case", CASES[:2], ids=["gate-pass", "fp8-scaled"])
def test_sm90_code_carries_the_hints_only_when_evict_first(case):
    plan = plan_for(case)
    loads, stores, policy = _evict_first_accesses(plan, True)
    assert policy and loads > 0 and stores > 0, (loads, stores)
    assert _evict_first_accesses(plan, False) == (0, 0, False)


def test_evict_first_specialisations_compile_for_rocm():
    from aot_compile import Compilers

    plans = [dataclasses.replace(p, constexprs=dict(p.constexprs, EVICT_FIRST=True)) for p in map(plan_for, CASES)]
    assert all(retarget(p, "hip:gfx942").constexprs["EVICT_FIRST"] for p in plans)  # retargeting keeps the choice
    results = Compilers.compile_all(plans, ("hip:gfx942", "hip:gfx950"))
    for target, (code, out) in results.items():
        storable = [p for p in plans if all(not c.startswith("float8") or c in plan_module.TARGET_FP8[target]
                                            for c in (p.pointer_dtypes["key_cache"], p.pointer_dtypes["value_cache"]))]
        expect = f"compiled {2 * len(storable)} distinct specialisations for {target}"  # torch and JAX styles
        assert code == 0 and expect in out and "0 failed" in out, out[-6000:]
