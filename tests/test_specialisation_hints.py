"""jax-triton tells the compiler nothing about integer scalars, Triton's own launcher says which are multiples of
16. The launch plan carries that fact for both frontends (``TOKENS_MULT16``, ``SLOTS_MULT16``), and the kernel
restates it, so a tile of tokens loads its positions and slots as one vector under either frontend. Checked in the
sm_90 code compiled ahead of time, on a CPU."""

import dataclasses
import re

import pytest
from fused_qkv.core.aot import compile_for, jax_pointer_dtypes
from fused_qkv.torch_api.op import _plan
from helpers import Case, make_inputs


def _plan_for(case):
    args, kw = make_inputs(case)
    plan, _ = _plan(args["qkv"], args["q_weight"], args["k_weight"], args["cos"], args["sin"], args["positions"],
                    args["key_cache"], args["value_cache"], args["slot_mapping"], kw["num_q_heads"],
                    kw["num_kv_heads"], kw["head_dim"], kw.get("eps", 1e-6), kw.get("norm_weight_offset", 0.0),
                    kw.get("is_neox", True), kw.get("rotary_dim"), kw.get("offsets"), kw.get("attn_output_gate", False),
                    kw.get("gated_qkv_layout", "interleaved"), kw.get("k_scale"), kw.get("v_scale"),
                    kw.get("kv_cache_layout", "NHD"), kw.get("return_kv", True), with_ptr=False, target="cuda")
    return plan


def _vector_index_loads(plan):
    ptx = compile_for(plan, jax_pointer_dtypes(plan), "cuda", aligned_pointers=True).asm["ptx"]
    return len(re.findall(r"ld\.global(?:\.\w+)*\.v2\.b64", ptx))


@pytest.mark.parametrize("T, expect", [(16, (True, True)), (32, (True, True)), (12, (False, False))])
def test_plan_states_which_counts_are_multiples_of_16(T, expect):
    plan = _plan_for(Case(T=T, num_blocks=16))
    assert (plan.constexprs["TOKENS_MULT16"], plan.constexprs["SLOTS_MULT16"]) == expect


def test_short_slot_mapping_gets_its_own_flag():
    plan = _plan_for(Case(T=16, slots="short", num_blocks=16))
    assert plan.constexprs["TOKENS_MULT16"] and not plan.constexprs["SLOTS_MULT16"]


def test_the_hint_vectorises_the_index_loads_without_scalar_facts():
    # a Qwen3-Next-like head (D=256: 2-token tiles, one warp on sm_90, each thread holds both tokens of a tile)
    plan = _plan_for(Case(T=16, num_blocks=16, D=256, QH=2, KVH=1, rotary_dim=64, gate="interleaved", offset=1.0))
    assert (plan.constexprs["BLOCK_T"], plan.num_warps) == (2, 1)
    hinted = _vector_index_loads(plan)
    plain = _vector_index_loads(dataclasses.replace(
        plan, constexprs=dict(plan.constexprs, TOKENS_MULT16=False, SLOTS_MULT16=False)))
    assert hinted > plain, (hinted, plain)
