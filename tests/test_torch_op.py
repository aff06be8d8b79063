"""The torch entrypoint against the float64 oracle: an explicit case list that covers every flag of the contract.

Runs on whatever device ``FUSED_QKV_TEST_DEVICE`` names (default: cpu, under Triton's
interpreter; on a GPU machine ``cuda`` runs the compiled kernel).
"""

import dataclasses

import pytest
import torch
from conftest import DEVICE, FP8_ON_DEVICE
from helpers import Case, make_inputs, plan_for, run_torch

C = Case
CASES = [
    C(),  # bf16, GQA 4/2, D=64, NeoX, half tables, NHD, plain gamma
    C(dtype="float16", offset=1.0),  # zero-centred gamma (Gemma3 / Qwen3-Next)
    C(dtype="float32", eps=1e-5),
    C(is_neox=False),  # GPT-J pairs, half table
    C(is_neox=False, table="full"),  # GPT-J full table (entries repeated twice)
    C(table="full", table_dtype="bfloat16"),  # NeoX full table (halves repeated), bf16 table
    C(table="vllm_view", table_dtype="float16"),  # cos_sin_cache[:, :R/2] / [:, R/2:] views, strided rows
    C(rotary_dim=32),  # partial rotary, NeoX
    C(rotary_dim=48, is_neox=False, table="full"),  # partial rotary, GPT-J, full table
    C(with_offsets=True, index_dtype="int32"),  # positions + offsets, int32 indices
    C(with_offsets=True, index_dtype="int64", T=9),
    C(gate="interleaved", offset=1.0, rotary_dim=16),  # Qwen3-Next style
    C(gate="blocked"),
    C(layout="HND"),
    C(layout="HND", gate="interleaved", is_neox=False, T=11),
    C(cache_dtype="float8_e4m3fn", scale="tensor"),
    C(cache_dtype="float8_e4m3fn", scale="head", layout="HND"),
    C(cache_dtype="float8_e5m2", scale="head"),
    C(cache_dtype="float8_e5m2"),  # fp8 without scales
    C(cache_dtype="float8_e4m3fnuz", scale="tensor", dtype="float16"),
    C(cache_dtype="float8_e4m3fn", scale="tensor", qkv_scale=300.0),  # saturation: |k/scale|, |v/scale| > 448
    C(scale="head"),  # bf16 cache holding k / k_scale
    C(slots="negative"),
    C(slots="out_of_range"),
    C(slots="out_of_range", index_dtype="int32"),
    C(slots="short", index_dtype="int32"),
    C(slots="boundary", T=8, block_size=16, num_blocks=5),
    C(D=80, QH=2, KVH=1),  # non-power-of-two head dims
    C(D=96, QH=3, KVH=3, T=5),  # MHA
    C(D=192, QH=2, KVH=1, rotary_dim=64),
    C(D=16, QH=8, KVH=1, T=3),  # MQA, smallest head_dim
    C(D=512, QH=2, KVH=1, T=3, num_blocks=3),  # largest head_dim
    C(D=128, QH=8, KVH=8, T=13, block_size=16, num_blocks=2),
    C(row_pad=24),  # strided qkv rows
    C(q_norm=False),
    C(k_norm=False, q_norm=False),
    C(return_kv=False, cache_dtype="float8_e4m3fn", scale="tensor"),
    C(layers=3),  # caches [L, ...], layer=L-1
    C(layers=2, layout="HND", cache_dtype="float8_e5m2"),
    C(cache_view=True),  # caches are strided views of one [blocks, 2, ...] allocation
    C(cache_view=True, layout="HND", gate="blocked"),
    C(T=1),  # decode
    C(T=1, D=256, QH=4, KVH=1, gate="interleaved", offset=1.0, rotary_dim=64),  # Qwen3-Next decode
    C(pos_out_of_range=True),  # positions clamped to the table
    C(pos_out_of_range=True, with_offsets=True, index_dtype="int32"),
    C(pos_out_of_range=True, index_dtype="int32"),  # clamped in int32, widened after
    C(T=24, block_size=8, num_blocks=4, seed=3),  # more tokens than one tile
    # multimodal RoPE: [3, T] positions, each frequency reads its section's row
    C(mrope="contiguous"),  # Qwen2.5-VL proportions (16, 24, 24) scaled to R/2
    C(mrope="interleaved"),  # Qwen3-VL proportions (24, 20, 20) scaled
    C(mrope="interleaved", is_neox=False, table="full"),  # GPT-J pairs, full table
    C(mrope="contiguous", rotary_dim=32, table="full", table_dtype="bfloat16"),  # partial rotary
    C(mrope="interleaved", with_offsets=True, index_dtype="int32", mrope_rows="view"),  # strided [3, T] rows
    C(mrope="contiguous", section=(0, 32, 0)),  # empty sections
    C(mrope="interleaved", section=(2, 15, 15), table="vllm_view", table_dtype="float16"),  # 3h, 3w > R/2
    C(mrope="interleaved", pos_out_of_range=True, slots="short"),  # each row clamped
    C(mrope="interleaved", gate="interleaved", offset=1.0, layout="HND", cache_dtype="float8_e4m3fn", scale="head"),
    C(mrope="contiguous", layers=2, T=1),  # decode, layered caches
    # from plan.GROUP_MIN_TOKENS tokens, Q/K programs rotate up to 4 heads with one read of the tables
    C(mrope="interleaved", QH=8, KVH=4, D=32, T=600, block_size=16, num_blocks=40, scale="head",
      cache_dtype="float8_e4m3fn", slots="short"),  # 4 heads per program
    C(mrope="contiguous", QH=6, KVH=2, D=32, T=520, block_size=16, num_blocks=33, with_offsets=True,
      gate="blocked", layout="HND"),  # 2 heads per program
    C(mrope="contiguous", QH=3, KVH=3, D=96, T=5, return_kv=False),
    # NoPE layers: no tables, no positions
    C(nope=True),
    C(nope=True, gate="blocked", cache_dtype="float8_e5m2", scale="tensor", layout="HND"),
    C(nope=True, D=80, QH=2, KVH=1, q_norm=False, slots="negative"),
    # V-norm (Gemma 4), K = V (Gemma 4 global layers)
    C(v_norm=True),
    C(v_norm=True, dtype="float16", cache_dtype="float8_e4m3fn", scale="tensor", qkv_scale=50.0),
    C(v_norm=True, return_kv=False, dtype="float32", eps=1e-5),
    C(v_norm=True, D=256, QH=2, KVH=1, offset=1.0, T=5),  # Gemma 4 sliding-layer-like
    C(k_eq_v=True),
    C(k_eq_v=True, v_norm=True, D=512, QH=2, KVH=1, T=3, num_blocks=3, table="full"),  # Gemma 4 global-like
    C(k_eq_v=True, gate="interleaved", is_neox=False, scale="head"),
    C(k_eq_v=True, row_pad=8, slots="short", cache_view=True),
    C(k_eq_v=True, v_norm=True, nope=True, layers=2, layout="HND"),
    # fp8 attention (the fp8 entry point): fp8 q with a static or dynamic per-token-head scale, per-token-head
    # K/V scale caches
    C(q_fp8="static"),
    C(q_fp8="dynamic"),
    C(q_fp8="dynamic", qkv_scale=40.0, q_norm=False, k_norm=False),  # large values: scales well above 1
    C(q_fp8="static", qkv_scale=60.0, q_norm=False),  # saturation: |q / q_scale| > 448
    C(q_fp8="dynamic", gate="interleaved", offset=1.0, rotary_dim=16, T=9),  # gate stays in the input dtype
    C(q_fp8="dynamic", is_neox=False, table="full", rotary_dim=48, dtype="float16"),
    C(cache_dtype="float8_e4m3fn", scale_cache="kv"),
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", layout="HND", slots="negative"),
    C(cache_dtype="float8_e4m3fn", scale_cache="k", scale="head", return_kv=False),  # V keeps its static scale
    C(cache_dtype="float8_e5m2", scale_cache="v", slots="out_of_range", index_dtype="int32"),
    C(cache_dtype="float8_e4m3fnuz", scale_cache="kv", q_fp8="dynamic", q_dtype="float8_e4m3fnuz",
      dtype="float16", slots="short"),
    C(cache_dtype="float8_e4m3fnuz", q_fp8="static", q_dtype="float8_e4m3fnuz", scale="tensor"),
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", layers=3, with_offsets=True, q_fp8="static"),
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", layout="HND", cache_view=True),
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", mrope="interleaved", v_norm=True,
      zero_heads=True),
    C(cache_dtype="float8_e4m3fnuz", scale_cache="kv", q_fp8="dynamic", q_dtype="float8_e4m3fnuz", zero_heads=True,
      eps=1e-12),  # zero heads with r = 1e6: the scale floor's factor must not overflow
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", k_eq_v=True, v_norm=True, nope=True,
      D=256, QH=2, KVH=1, T=5),
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", mrope="contiguous", QH=6, KVH=2, D=32,
      T=520, block_size=16, num_blocks=33, slots="short"),  # 2 heads per Q/K program
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", T=1, D=128, QH=8, KVH=2),  # decode
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", QH=8, KVH=4, D=32, T=4100, block_size=16,
      num_blocks=257, slots="short", gate="blocked", zero_heads=True),  # 4 heads in rows (GPUs: 32-row tiles)
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", QH=16, KVH=8, D=16, T=16400, block_size=16,
      num_blocks=1026, slots="short", is_neox=False, table="full"),  # a loop of 4 tiles of 2 heads in rows (S8's)
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", QH=8, KVH=8, D=128, T=40, block_size=16,
      num_blocks=4, slots="negative"),  # GPUs: 8-row tiles of one token's 8 heads (S8's below 16384 tokens)
    C(cache_dtype="float8_e4m3fn", scale_cache="k", q_fp8="dynamic", nope=True, QH=4, KVH=4, D=16, T=4096,
      block_size=16, num_blocks=256, layout="HND"),  # NoPE, 4 heads per program: no tables to share
    C(cache_dtype="float8_e4m3fn", scale_cache="kv", D=80, QH=2, KVH=1, q_fp8="static", row_pad=8),
    # several heads side by side in a tile's rows (plan.head_rows): 4, 8 and 2 here, and on CUDA (16-row tiles)
    C(T=40, QH=8, KVH=4, D=32, block_size=16, num_blocks=4, gate="interleaved", scale="head",
      cache_dtype="float8_e4m3fn", is_neox=False, table="full", rotary_dim=16, slots="short", index_dtype="int32"),
    C(T=37, QH=16, KVH=8, D=16, block_size=8, num_blocks=6, q_fp8="static", cache_dtype="float8_e4m3fn",
      scale_cache="kv", layout="HND", v_norm=True, with_offsets=True, zero_heads=True),
    C(T=33, QH=8, KVH=2, D=64, gate="blocked", k_eq_v=True, layers=2, q_fp8="dynamic", cache_dtype="float8_e4m3fn",
      scale="tensor", pos_out_of_range=True, slots="negative", num_blocks=10),
]


# cases whose cache dtype this device's target cannot store (fnuz on CUDA) are tested to raise in tests/gpu/
DEVICE_CASES = [c for c in CASES if (c.cache_dtype is None or c.cache_dtype in FP8_ON_DEVICE)
                and (c.q_fp8 is None or c.q_dtype in FP8_ON_DEVICE)]


@pytest.mark.parametrize("case", DEVICE_CASES, ids=lambda c: c.id())
def test_matches_oracle(case):
    run_torch(case, DEVICE)


def test_cases_cover_every_flag():
    """Guard against the case list losing coverage when edited."""
    seen = {f.name: {getattr(c, f.name) for c in CASES} for f in dataclasses.fields(Case)}
    assert seen["is_neox"] == {True, False}
    assert seen["table"] == {"half", "full", "vllm_view"}
    assert seen["gate"] == {None, "interleaved", "blocked"}
    assert seen["layout"] == {"NHD", "HND"}
    assert {"float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", None} <= seen["cache_dtype"]
    assert seen["scale"] == {"none", "tensor", "head"}
    assert seen["slots"] >= {"random", "negative", "out_of_range", "short", "boundary"}
    assert seen["index_dtype"] == {"int32", "int64"}
    assert seen["dtype"] == {"bfloat16", "float16", "float32"}
    assert seen["offset"] == {0.0, 1.0}
    assert {80, 96, 192} <= seen["D"]
    assert seen["with_offsets"] == seen["return_kv"] == seen["q_norm"] == {True, False}
    assert any(c.rotary_dim for c in CASES) and any(c.row_pad for c in CASES)
    assert any(c.QH == c.KVH for c in CASES) and any(c.KVH == 1 for c in CASES)
    assert seen["mrope"] == {None, "contiguous", "interleaved"} and seen["mrope_rows"] == {"random", "view"}
    assert seen["nope"] == seen["v_norm"] == seen["k_eq_v"] == {True, False}
    assert seen["q_fp8"] == {None, "static", "dynamic"} and seen["scale_cache"] == {"none", "k", "v", "kv"}
    assert seen["q_dtype"] == {"float8_e4m3fn", "float8_e4m3fnuz"}
    assert seen["zero_heads"] == {True, False}


def test_head_groups_follow_the_plan_rule():
    """Which calls rotate several heads per program in a loop (``plan.head_group``): mRoPE from 513 tokens,
    dynamic fp8 q from 16384 where heads in rows apply (rotating, head_dim <= 128), else from 4096; the group
    divides both head counts. The case list runs one of each (T=520 / 16400 / 4096 NoPE)."""
    dyn = C(cache_dtype="float8_e4m3fn", q_fp8="dynamic", QH=8, KVH=4, D=32, num_blocks=1100, block_size=16)
    long = C(QH=8, KVH=4, D=32, T=16384, num_blocks=520, block_size=32)
    for case, group in ((dataclasses.replace(dyn, T=16383), 1), (dataclasses.replace(dyn, T=16384), 4),
                        (dataclasses.replace(dyn, T=16384, q_fp8="static"), 1),
                        (dataclasses.replace(dyn, T=16384, KVH=2), 2),
                        (dataclasses.replace(dyn, T=16384, QH=6, KVH=3), 1),
                        (dataclasses.replace(dyn, T=4095, nope=True), 1),
                        (dataclasses.replace(dyn, T=4096, nope=True), 4),
                        (dataclasses.replace(dyn, T=4096, D=256), 4),
                        (dataclasses.replace(dyn, T=4096, mrope="interleaved"), 2),
                        (C(mrope="contiguous", QH=6, KVH=2, D=32, T=520, num_blocks=40, block_size=16), 2),
                        (long, 1), (dataclasses.replace(long, q_fp8="static", cache_dtype="float8_e4m3fn"), 1)):
        plan = plan_for(case)
        assert plan.constexprs["HEAD_GROUP"] == group, case.id()
        assert plan.constexprs["NUM_Q_PROGS"] == case.QH // (group * plan.constexprs["HEAD_ROWS"])


def test_head_rows_follow_the_plan_rule():
    """How many heads sit side by side in a tile's rows (``plan.head_rows``): 8 per Q/K program with the group for
    rotating calls without mRoPE at head_dim <= 128, not in the 2-token tiles of T <= 16, as far as both head
    counts divide; the grid then has BLOCK_T / rows tokens per program. Checked on the CUDA plan and the
    interpreter's."""
    s1 = C(QH=32, KVH=8, D=128, T=4096, num_blocks=1100, block_size=16)
    s8 = dataclasses.replace(s1, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv")
    for case, rows in ((s1, 8), (dataclasses.replace(s1, T=17), 8), (dataclasses.replace(s1, T=16), 1),
                       (dataclasses.replace(s8, T=16384), 2), (s8, 8),  # group 4 / 1
                       (dataclasses.replace(s1, KVH=2), 2), (dataclasses.replace(s1, QH=24, KVH=6), 2),
                       (dataclasses.replace(s1, QH=6, KVH=3), 1), (dataclasses.replace(s1, nope=True), 1),
                       (dataclasses.replace(s1, mrope="interleaved"), 1), (dataclasses.replace(s1, D=160), 1),
                       (dataclasses.replace(s1, D=256), 1), (dataclasses.replace(s1, D=32, gate="blocked"), 8)):
        plan = plan_for(case)
        c = plan.constexprs
        assert c["HEAD_ROWS"] == rows, case.id()
        qk = c["HEAD_GROUP"] * rows
        assert c["K_END"] == case.QH // qk + case.KVH // qk and c["V_END"] == c["K_END"] + case.KVH // rows
        assert c["NUM_HEAD_PROGS"] == c["V_END"] + (case.QH // rows if case.gate else 0)
        assert plan.grid == (-(-case.T // (c["BLOCK_T"] // rows)) * c["NUM_HEAD_PROGS"],)
    for case, rows in ((CASES[-3], 4), (CASES[-2], 8), (CASES[-1], 2)):
        assert plan_for(case, "interpreter").constexprs["HEAD_ROWS"] == rows, case.id()


def test_dynamic_fp8_q_with_heads_in_rows_takes_1024_element_tiles_below_16384_tokens():
    """``plan.choose_tiles(dynamic_rows=True)``: S8's layout on the GPUs is 8-row tiles (one token of 8 heads) in
    two warps (one on ROCm's 64-lane waves) for 16 < T < 16384, 16-row tiles in four warps otherwise, and where
    heads in rows do not apply (NoPE, mRoPE, an odd head count)."""
    s8 = C(QH=8, KVH=8, D=128, T=4096, num_blocks=1100, block_size=16, q_fp8="dynamic",
           cache_dtype="float8_e4m3fn", scale_cache="kv")
    for case, cuda, hip in ((s8, (8, 2), (8, 1)), (dataclasses.replace(s8, T=17), (8, 2), (8, 1)),
                            (dataclasses.replace(s8, T=16), (2, 1), (2, 1)),
                            (dataclasses.replace(s8, T=16383), (8, 2), (8, 1)),
                            (dataclasses.replace(s8, T=16384), (16, 4), (16, 2)),
                            (dataclasses.replace(s8, mrope="interleaved"), (16, 4), (16, 2)),
                            (dataclasses.replace(s8, QH=7, KVH=1), (16, 4), (16, 2)),
                            (dataclasses.replace(s8, q_fp8="static", scale_cache="none", scale="tensor"), (16, 4),
                             (16, 2)),
                            (dataclasses.replace(s8, nope=True), (16, 4), (16, 2)),
                            (dataclasses.replace(s8, D=64), (16, 2), (16, 1))):
        for target, want in (("cuda", cuda), ("hip:gfx950", hip)):
            plan = plan_for(case, target)
            assert (plan.constexprs["BLOCK_T"], plan.num_warps) == want, (case.id(), target)


def test_retargeted_interpreter_plans_are_the_targets_own():
    """``aot.retarget`` (the CPU CI's ahead-of-time compiles) gives an interpreter plan the tiles, head rows, head
    list, evict-first hints and grid that the target's own plan has: T=13 has 16-row interpreter tiles (8 heads in
    rows) against the GPUs' 2-token tiles (1); the interpreter never hints evict-first."""
    from fused_qkv.core.aot import retarget

    keys = ("BLOCK_T", "HEAD_ROWS", "HEAD_GROUP", "NUM_HEAD_PROGS", "K_END", "V_END", "NUM_Q_PROGS", "EVICT_FIRST")
    loop, rows8 = (next(c for c in CASES if c.q_fp8 == "dynamic" and c.T == t) for t in (16400, 40))
    for case in (C(T=13, QH=8, KVH=8, D=128, block_size=16, num_blocks=2), CASES[-3], CASES[-2], loop, rows8,
                 C(mrope="interleaved", T=40, QH=8, KVH=4, D=32, block_size=16, num_blocks=4),
                 C(q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv", QH=16, KVH=8, D=16, T=4100,
                   block_size=16, num_blocks=257, slots="short", gate="interleaved")):
        interp = plan_for(case, "interpreter")
        for target in ("cuda", "hip:gfx950"):
            own, moved = plan_for(case, target), retarget(interp, target)
            assert {k: moved.constexprs[k] for k in keys} == {k: own.constexprs[k] for k in keys}, (case.id(), target)
            assert moved.grid == own.grid and moved.num_warps == own.num_warps, (case.id(), target)
    assert plan_for(C(T=13, QH=8, KVH=8, D=128, block_size=16, num_blocks=2), "interpreter").constexprs[
        "HEAD_ROWS"] == 8


def test_mrope_with_equal_rows_is_plain_rope_bit_for_bit():
    """[3, T] positions whose rows are all equal give exactly the bits of plain RoPE with [T] positions."""
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op

    for case in (C(gate="interleaved", rotary_dim=48, is_neox=False, table="full"), C(T=13, with_offsets=True)):
        args, kwargs = make_inputs(case, DEVICE)
        caches = [args["key_cache"].clone(), args["value_cache"].clone()]
        plain = op(**args, **kwargs)
        for section, interleaved in (((case.R // 2 - 4, 2, 2), False), ((case.R // 2 - 10, 5, 5), True)):
            kc, vc = caches[0].clone(), caches[1].clone()
            mrope = op(**dict(args, positions=args["positions"].expand(3, -1), key_cache=kc, value_cache=vc),
                       **kwargs, mrope_section=section, mrope_interleaved=interleaved)
            for name in ("q", "gate", "k", "v"):
                a, b = getattr(plain, name), getattr(mrope, name)
                assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name
            assert torch.equal(kc.view(torch.int16), args["key_cache"].view(torch.int16))
            assert torch.equal(vc.view(torch.int16), args["value_cache"].view(torch.int16))


def test_second_call_overwrites_and_keeps_other_slots():
    """Two calls into the same cache: the second writes only its own slots."""
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op

    case = C(T=5, seed=11)
    args, kwargs = make_inputs(case, DEVICE)
    op(**args, **kwargs)
    after_first = [args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()]
    args2, kwargs2 = make_inputs(dataclasses.replace(case, seed=12), DEVICE)
    args2["key_cache"], args2["value_cache"] = args["key_cache"], args["value_cache"]
    from helpers import check_against_oracle

    out = op(**args2, **kwargs2)
    check_against_oracle(case, args2, kwargs2, out, after_first[0], after_first[1], args["key_cache"],
                         args["value_cache"])


def test_empty_batch_is_a_no_op():
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op

    args, kwargs = make_inputs(C(T=3), DEVICE)
    before = args["key_cache"].clone()
    for k in ("qkv", "positions", "slot_mapping"):
        args[k] = args[k][:0]
    out = op(**args, **kwargs)
    assert out.q.shape == (0, 4, 64) and out.k.shape == (0, 2, 64)
    assert torch.equal(before.view(torch.int16), args["key_cache"].view(torch.int16))
