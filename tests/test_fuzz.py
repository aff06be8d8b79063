"""Hypothesis fuzz over configurations: every draw is checked against the oracle, untouched slots included.

Every option is drawn independently, so any combination of them (mRoPE, NoPE, V-norm and K=V with the gate,
GPT-J, partial rotary, HND, fp8 caches, per-head scales, ``layer=``, short ``slot_mapping``; fp8 q and
per-token-head scale caches, through the fp8 entry point) is reachable."""

import dataclasses

from conftest import DEVICE, FP8_ON_DEVICE, Q_FP8_ON_DEVICE
from helpers import Case, run_torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@st.composite
def cases(draw):
    kvh = draw(st.sampled_from([1, 2, 3]))
    qh = kvh * draw(st.sampled_from([1, 2, 4]))
    d = draw(st.sampled_from([16, 32, 48, 64, 80, 96, 128, 160]))
    rot = draw(st.one_of(st.none(), st.integers(1, d // 2).map(lambda r: 2 * r)))
    block_size = draw(st.sampled_from([1, 3, 4, 16]))
    num_blocks = draw(st.integers(1, 6))
    t = draw(st.integers(1, min(20, block_size * num_blocks)))
    if draw(st.integers(0, 9)) == 0:  # now and then a prefill past plan.GROUP_MIN_TOKENS (mRoPE head groups)
        t = draw(st.integers(513, 560))
        block_size, num_blocks = 16, 36
    cache_dtype = draw(st.sampled_from([None] + FP8_ON_DEVICE))
    rope = draw(st.sampled_from(["rope", "nope", "contiguous", "interleaved"]))
    section = None
    if rope in ("contiguous", "interleaved"):
        half = (rot or d) // 2
        t_sec = draw(st.integers(0, half))
        h_sec = draw(st.integers(0, half - t_sec))
        section = (t_sec, h_sec, half - t_sec - h_sec)
    elif rope == "nope":
        rot = None
    eps = draw(st.sampled_from([1e-6, 1e-5, 0.0]))
    return Case(
        T=t, QH=qh, KVH=kvh, D=d, rotary_dim=rot,
        dtype=draw(st.sampled_from(["bfloat16", "float16", "float32"])),
        eps=eps, zero_heads=eps > 0 and draw(st.booleans()),  # eps 0: an all-zero head has no defined norm
        offset=draw(st.sampled_from([0.0, 1.0])),
        is_neox=draw(st.booleans()), table=draw(st.sampled_from(["half", "full", "vllm_view"])),
        table_dtype=draw(st.sampled_from(["float32", "bfloat16", "float16"])),
        with_offsets=draw(st.booleans()), gate=draw(st.sampled_from([None, "interleaved", "blocked"])),
        layout=draw(st.sampled_from(["NHD", "HND"])), cache_dtype=cache_dtype,
        scale=draw(st.sampled_from(["none", "tensor", "head"])),
        slots=draw(st.sampled_from(["random", "negative", "out_of_range", "short"])),
        index_dtype=draw(st.sampled_from(["int32", "int64"])), row_pad=draw(st.sampled_from([0, 8])),
        block_size=block_size, num_blocks=num_blocks, q_norm=draw(st.booleans()), k_norm=draw(st.booleans()),
        return_kv=draw(st.booleans()), qkv_scale=draw(st.sampled_from([0.5, 1.0, 50.0])),
        pos_out_of_range=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
        nope=rope == "nope", mrope=None if section is None else rope, section=section,
        mrope_rows=draw(st.sampled_from(["random", "equal", "view"])), v_norm=draw(st.booleans()),
        k_eq_v=draw(st.booleans()), layers=draw(st.sampled_from([None, None, 2])),
        q_fp8=draw(st.sampled_from([None, None, "static", "dynamic"])),
        q_dtype=draw(st.sampled_from(Q_FP8_ON_DEVICE)),
        scale_cache=draw(st.sampled_from(["none", "none", "k", "v", "kv"])),
    )


def valid(case: Case) -> Case:
    """A drawn case made valid: vLLM's table views are never float32; a layer without RoPE takes no offsets; scale
    caches need an fp8 cache (and replace that cache's static scale)."""
    if case.table == "vllm_view" and case.table_dtype == "float32":
        case = dataclasses.replace(case, table_dtype="float16")
    if case.nope:
        case = dataclasses.replace(case, with_offsets=False)
    if case.scale_cache != "none" and case.cache_dtype is None:
        case = dataclasses.replace(case, scale_cache="none")
    return case


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_fuzz_against_oracle(case):
    run_torch(valid(case), DEVICE)
