"""jax-triton tells the compiler nothing about integer scalars, Triton's own launcher says which are multiples of
16. The launch plan carries that fact for both frontends (``TOKENS_MULT16``, ``SLOTS_MULT16``), and the kernel
restates it, so a tile of tokens loads its positions and slots as one vector under either frontend. Checked in the
sm_90 code compiled ahead of time, on a CPU."""

import dataclasses
import re

import pytest
from fused_qkv.core.aot import compile_for, jax_pointer_dtypes
from helpers import Case, plan_for


def _vector_index_loads(plan):
    ptx = compile_for(plan, jax_pointer_dtypes(plan), "cuda", aligned_pointers=True).asm["ptx"]
    return len(re.findall(r"ld\.global(?:\.\w+)*\.v2\.b64", ptx))


@pytest.mark.parametrize("T, expect", [(16, (True, True)), (32, (True, True)), (12, (False, False))])
def test_plan_states_which_counts_are_multiples_of_16(T, expect):
    plan = plan_for(Case(T=T, num_blocks=16))
    assert (plan.constexprs["TOKENS_MULT16"], plan.constexprs["SLOTS_MULT16"]) == expect


def test_short_slot_mapping_gets_its_own_flag():
    plan = plan_for(Case(T=16, slots="short", num_blocks=16))
    assert plan.constexprs["TOKENS_MULT16"] and not plan.constexprs["SLOTS_MULT16"]


def test_the_hint_vectorises_the_index_loads_without_scalar_facts():
    # a Qwen3-Next-like head (D=256: 2-token tiles, one warp on sm_90, each thread holds both tokens of a tile)
    plan = plan_for(Case(T=16, num_blocks=16, D=256, QH=2, KVH=1, rotary_dim=64, gate="interleaved", offset=1.0))
    assert (plan.constexprs["BLOCK_T"], plan.num_warps) == (2, 1)
    hinted = _vector_index_loads(plan)
    plain = _vector_index_loads(dataclasses.replace(
        plan, constexprs=dict(plan.constexprs, TOKENS_MULT16=False, SLOTS_MULT16=False)))
    assert hinted > plain, (hinted, plain)
