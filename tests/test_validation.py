"""Every bad input raises TypeError/ValueError naming the argument, and nothing is written to the caches."""

import pytest
import torch
from conftest import DEVICE
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
from helpers import Case, make_inputs


def _set(key, value):
    def mutate(args, kwargs):
        (args if key in args else kwargs)[key] = value(args, kwargs) if callable(value) else value
    return mutate


def _ones(*shape, dtype=torch.float32):
    return lambda a, k: torch.ones(*shape, dtype=dtype, device=a["qkv"].device)


def _all(*mutations):
    def mutate(args, kwargs):
        for m in mutations:
            m(args, kwargs)
    return mutate


_NOPE = (_set("cos", None), _set("sin", None), _set("offsets", None))


def _dt(key, dtype):
    return _set(key, lambda a, k: (a if key in a else k)[key].to(dtype))


BAD = [
    # (id, mutation, exception, text that must appear in the message)
    ("qkv_rank", _set("qkv", lambda a, k: a["qkv"][None]), ValueError, "qkv must be 2-D"),
    ("qkv_width", _set("qkv", lambda a, k: a["qkv"][:, :-64]), ValueError, "qkv must have width"),
    ("qkv_dtype", _dt("qkv", torch.float64), TypeError, "qkv must have dtype"),
    ("qkv_int", _dt("qkv", torch.int32), TypeError, "qkv must have dtype"),
    ("qkv_not_tensor", _set("qkv", lambda a, k: a["qkv"].tolist()), TypeError, "qkv must be a torch.Tensor"),
    ("qkv_col_stride", _set("qkv", lambda a, k: a["qkv"].t().contiguous().t()), ValueError, "qkv must be contiguous"),
    ("heads_divide", _set("num_kv_heads", 3), ValueError, "multiple of num_kv_heads"),
    ("heads_zero", _set("num_q_heads", 0), ValueError, "num_q_heads"),
    ("heads_type", _set("num_q_heads", 4.0), TypeError, "num_q_heads must be an int"),
    ("head_dim_small", _set("head_dim", 8), ValueError, "head_dim must be in [16, 512]"),
    ("head_dim_cache", _set("head_dim", 32), ValueError, "qkv must have width"),
    ("rotary_odd", _set("rotary_dim", 31), ValueError, "rotary_dim must be even"),
    ("rotary_big", _set("rotary_dim", 128), ValueError, "rotary_dim must be in"),
    ("table_width", _set("cos", lambda a, k: a["cos"][:, :7]), ValueError, "cos last dim must be rotary_dim/2"),
    ("table_shape_mismatch", _set("sin", lambda a, k: a["sin"][:5]), ValueError, "cos and sin must have the same"),
    ("table_dtype", _dt("cos", torch.float64), TypeError, "cos must have dtype"),
    ("table_int", _dt("sin", torch.int32), TypeError, "sin must have dtype"),
    ("table_rank", _set("sin", lambda a, k: a["sin"][0]), ValueError, "sin must be 2-D"),
    ("weight_len", _set("q_weight", lambda a, k: a["q_weight"][:32]), ValueError, "q_weight must have head_dim"),
    ("weight_dtype", _dt("k_weight", torch.int64), TypeError, "k_weight must have dtype"),
    ("positions_len", _set("positions", lambda a, k: a["positions"][:-1]), ValueError, "positions must have 7"),
    ("positions_dtype", _dt("positions", torch.float32), TypeError, "positions must have dtype"),
    ("offsets_len", _set("offsets", lambda a, k: a["positions"][:3]), ValueError, "offsets must have 7"),
    ("slots_long", _set("slot_mapping", lambda a, k: torch.cat([a["slot_mapping"]] * 2)), ValueError,
     "slot_mapping must have at most 7"),
    ("slots_dtype", _dt("slot_mapping", torch.int16), TypeError, "slot_mapping must have dtype"),
    ("slots_rank", _set("slot_mapping", lambda a, k: a["slot_mapping"][None]), ValueError, "slot_mapping must be 1-D"),
    ("cache_dtype", _dt("key_cache", torch.float32), TypeError, "key_cache dtype must be the input dtype"),
    ("cache_rank", _set("value_cache", lambda a, k: a["value_cache"][0]), ValueError, "value_cache must be 4-D"),
    ("cache_heads", _set("key_cache", lambda a, k: torch.cat([a["key_cache"]] * 2, 2)), ValueError,
     "key_cache and value_cache must have the same shape"),
    ("cache_layout", _set("kv_cache_layout", "HND"), ValueError, "does not match layout HND"),
    ("layout_string", _set("kv_cache_layout", "nhd"), ValueError, "kv_cache_layout must be one of"),
    ("gate_layout_string", _set("gated_qkv_layout", "split"), ValueError, "gated_qkv_layout must be one of"),
    ("cache_last_stride", _set("key_cache", lambda a, k: a["key_cache"].transpose(2, 3).contiguous().transpose(2, 3)),
     ValueError, "key_cache must be contiguous in head_dim"),
    ("caches_alias", _set("value_cache", lambda a, k: a["key_cache"]), ValueError, "must not overlap"),
    ("cache_stride0", _set("value_cache", lambda a, k: a["value_cache"][:1].expand_as(a["value_cache"])), ValueError,
     "value_cache is written in place, so no two of its elements may share memory; got shape (6, 4, 2, 64) "
     "with strides (0, 128, 64, 1)"),
    ("scale_dtype", _set("k_scale", _ones(1, dtype=torch.float64)), TypeError, "k_scale must have dtype"),
    ("scale_int", _set("k_scale", _ones(1, dtype=torch.int32)), TypeError, "k_scale must have dtype"),
    ("scale_size", _set("v_scale", _ones(3)), ValueError, "v_scale must hold 1 element or num_kv_heads"),
    ("scale_rank", _set("v_scale", _ones(2, 1)), ValueError, "v_scale must hold 1 element"),
    ("eps_type", _set("eps", "1e-6"), TypeError, "eps must be a Python float"),
    ("eps_negative", _set("eps", -1.0), ValueError, "eps must be a finite non-negative"),
    ("is_neox_type", _set("is_neox", 1), TypeError, "is_neox must be a bool"),
    ("layer_without_axis", _set("layer", 0), ValueError, "layer is only valid"),
    ("layer_type", _set("layer", 0.0), TypeError, "layer must be None or a Python int"),
    ("missing_tensor", _set("slot_mapping", None), TypeError, "slot_mapping must be a torch.Tensor"),
    # RoPE / NoPE / mRoPE / V-norm / K=V
    ("only_sin", _set("cos", None), ValueError, "cos is None but sin is given"),
    ("only_cos", _set("sin", None), ValueError, "sin is None but cos is given"),
    ("positions_missing", _set("positions", None), TypeError, "positions is required when cos and sin are given"),
    ("nope_offsets", _all(_set("cos", None), _set("sin", None)), ValueError, "offsets must be None when cos"),
    ("nope_rotary_dim", _all(*_NOPE, _set("rotary_dim", 32)), ValueError, "rotary_dim must be None when cos"),
    ("nope_mrope", _all(*_NOPE, _set("mrope_section", [16, 8, 8])), ValueError, "mrope_section must be None when"),
    ("nope_positions_len", _all(*_NOPE, _set("positions", lambda a, k: a["positions"][:3])), ValueError,
     "positions must have 7"),
    ("mrope_sum", _set("mrope_section", [10, 10, 10]), ValueError, "t + h + w == rotary_dim // 2 = 32"),
    ("mrope_negative", _set("mrope_section", (40, -4, -4)), ValueError, "three non-negative ints"),
    ("mrope_len", _set("mrope_section", [16, 16]), TypeError, "mrope_section must hold three ints"),
    ("mrope_float", _set("mrope_section", [16.0, 8, 8]), TypeError, "mrope_section must hold three ints"),
    ("mrope_type", _set("mrope_section", "16,8,8"), TypeError, "mrope_section must be None or a list/tuple"),
    ("mrope_positions_1d", _set("mrope_section", [16, 8, 8]), ValueError, "positions must be 2-D [3, T]"),
    ("mrope_positions_rows", _all(_set("mrope_section", [16, 8, 8]),
                                  _set("positions", lambda a, k: a["positions"].expand(2, -1))), ValueError,
     "positions must be [3, num_tokens=7]"),
    ("mrope_positions_dtype", _all(_set("mrope_section", [16, 8, 8]),
                                   _set("positions", lambda a, k: a["positions"].expand(3, -1).float())), TypeError,
     "positions must have dtype"),
    ("interleaved_alone", _set("mrope_interleaved", True), ValueError, "mrope_interleaved=True needs mrope_section"),
    ("v_norm_type", _set("v_norm", 1), TypeError, "v_norm must be a bool"),
    ("k_eq_v_type", _set("k_eq_v", "yes"), TypeError, "k_eq_v must be a bool"),
    ("k_eq_v_width", _set("k_eq_v", True), ValueError, "(k_eq_v: no V block)"),
]


@pytest.mark.parametrize("mutate,exc,text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_and_writes_nothing(mutate, exc, text):
    args, kwargs = make_inputs(Case(with_offsets=True), DEVICE)
    before = [args["key_cache"].clone(), args["value_cache"].clone()]
    mutate(args, kwargs)
    with pytest.raises(exc) as info:
        op(**args, **kwargs)
    if text is not None:
        assert text in str(info.value)
    if args["key_cache"].shape == before[0].shape and args["key_cache"].dtype == before[0].dtype:
        assert torch.equal(before[0].view(torch.int16), args["key_cache"].view(torch.int16))


def test_layer_out_of_range_and_missing():
    args, kwargs = make_inputs(Case(layers=2), DEVICE)
    before = args["key_cache"].clone()
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\), got 2"):
        op(**args, **dict(kwargs, layer=2))
    with pytest.raises(ValueError, match="layer must be given"):
        op(**args, **dict(kwargs, layer=None))
    assert torch.equal(before.view(torch.int16), args["key_cache"].view(torch.int16))


def test_caches_overlapping_qkv_rejected():
    args, kwargs = make_inputs(Case(), DEVICE)
    buf = torch.randn(args["qkv"].numel() + args["key_cache"].numel(), dtype=args["qkv"].dtype, device=DEVICE)
    args["qkv"] = buf[: args["qkv"].numel()].view(args["qkv"].shape)
    args["key_cache"] = buf[-args["key_cache"].numel() - 64:-64].view(args["key_cache"].shape)
    with pytest.raises(ValueError, match="key_cache must not overlap qkv"):
        op(**args, **kwargs)


def test_tensors_on_different_devices_rejected():
    args, kwargs = make_inputs(Case(), DEVICE)
    meta = torch.empty_like(args["cos"], device="meta")
    from fused_qkv.core import ArrayInfo, OpConfig, plan_launch

    def info(t):
        return ArrayInfo(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."), str(t.device))

    arrays = {n: info(args[n]) for n in ("qkv", "sin", "positions", "key_cache", "value_cache", "slot_mapping")}
    with pytest.raises(ValueError, match="cos must be on the same device as qkv"):
        plan_launch(dict(arrays, cos=info(meta)), OpConfig(num_q_heads=4, num_kv_heads=2, head_dim=64))


def test_fp8_dtype_per_target():
    """e4m3fnuz only on gfx942 (and the interpreter), OCP e4m3fn/e5m2 not on gfx942, fnuz not on CUDA."""
    from fused_qkv.core import ArrayInfo, OpConfig, plan_launch

    args, _ = make_inputs(Case(), "cpu")

    def info(t, dtype=None):
        return ArrayInfo(tuple(t.shape), tuple(t.stride()), dtype or str(t.dtype).removeprefix("torch."))

    def plan(cache_dtype, target):
        kc = info(args["key_cache"], cache_dtype)
        arrays = {n: info(args[n]) for n in ("qkv", "cos", "sin", "positions", "slot_mapping")}
        return plan_launch(dict(arrays, key_cache=kc, value_cache=kc),
                           OpConfig(num_q_heads=4, num_kv_heads=2, head_dim=64), target=target)

    for target, ok, bad in [("cuda", ["float8_e4m3fn", "float8_e5m2"], ["float8_e4m3fnuz"]),
                            ("hip:gfx942", ["float8_e4m3fnuz"], ["float8_e4m3fn", "float8_e5m2"]),
                            ("hip:gfx950", ["float8_e4m3fn", "float8_e5m2"], ["float8_e4m3fnuz"]),
                            ("interpreter", ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz"], [])]:
        for dt in ok:
            assert plan(dt, target).constexprs["K_MBITS"] > 0
        for dt in bad:
            with pytest.raises(TypeError, match=f"key_cache dtype {dt} is not supported on target {target}"):
                plan(dt, target)


# The same bad inputs through the JAX frontend. Not applicable there: strides (JAX arrays are contiguous),
# aliasing (functional caches), devices (JAX places arrays itself). float64 stays float64 here (the test turns
# jax_enable_x64 on); with it off the argument is named too (tests/test_first_use.py).
JAX_NOT_APPLICABLE = {"qkv_col_stride", "cache_last_stride", "caches_alias", "cache_stride0"}
JAX_TEXT = {"qkv_not_tensor": "qkv must be a jax.Array", "missing_tensor": "slot_mapping must be a jax.Array",
            "layer_type": "layer must be None, an int"}
JAX_BAD = [b for b in BAD if b[0] not in JAX_NOT_APPLICABLE]


@pytest.mark.parametrize("mutate,exc,text", [b[1:] for b in JAX_BAD], ids=[b[0] for b in JAX_BAD])
def test_bad_input_raises_in_jax(request, mutate, exc, text, x64_on):
    import jax
    import jax.numpy as jnp
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jop
    from helpers import to_numpy

    case_id = request.node.callspec.id
    args, kwargs = make_inputs(Case(with_offsets=True), "cpu")
    mutate(args, kwargs)

    def conv(v):
        return jnp.asarray(to_numpy(v)) if isinstance(v, torch.Tensor) else v

    jargs = {k: conv(v) for k, v in args.items()}
    jkw = {k: conv(v) for k, v in kwargs.items()}
    with pytest.raises(exc) as info:
        jax.block_until_ready(jop(**jargs, **jkw))
    want = JAX_TEXT.get(case_id, text)
    if want is not None:
        assert want in str(info.value)


# The fp8 entry point's own arguments, on a case that uses all of them (dynamic fp8 q, both scale caches)
FP8_CASE = Case(with_offsets=True, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv")


def _scale_view_of_key_cache(a, k):
    """float32 [blocks, block_size, KVH] view of the key cache's own bytes."""
    return a["key_cache"].view(torch.float32)[..., 0]


FP8_BAD = [
    ("scale_cache_shape", _set("k_scale_cache", lambda a, k: k["k_scale_cache"][..., :1]), ValueError,
     "k_scale_cache must have the shape of key_cache without its last (head_dim) axis, (6, 4, 2)"),
    ("scale_cache_hnd_shape", _set("v_scale_cache", lambda a, k: k["v_scale_cache"].transpose(1, 2)), ValueError,
     "v_scale_cache must have the shape of value_cache without its last"),
    ("scale_cache_rank", _set("k_scale_cache", lambda a, k: k["k_scale_cache"][..., None]), ValueError,
     "k_scale_cache must have the shape of key_cache"),
    ("scale_cache_dtype", _dt("v_scale_cache", torch.float16), TypeError, "v_scale_cache must have dtype"),
    ("scale_cache_not_tensor", _set("k_scale_cache", lambda a, k: k["k_scale_cache"].tolist()), TypeError,
     "k_scale_cache must be a torch.Tensor"),
    ("scale_cache_and_static", _set("k_scale", _ones(1)), ValueError,
     "k_scale_cache and k_scale are both given"),
    ("scale_cache_bf16_cache", _all(_dt("key_cache", torch.bfloat16), _dt("value_cache", torch.bfloat16)), TypeError,
     "k_scale_cache needs an fp8 key_cache, got key_cache dtype bfloat16"),
    ("scale_cache_overlaps_cache", _set("k_scale_cache", _scale_view_of_key_cache), ValueError,
     "k_scale_cache must not overlap key_cache"),
    ("scale_cache_stride0", _set("v_scale_cache", lambda a, k: k["v_scale_cache"][:, :1].expand_as(k["v_scale_cache"])),
     ValueError, "v_scale_cache is written in place, so no two of its elements may share memory"),
    ("q_dtype_e5m2", _set("q_dtype", torch.float8_e5m2), TypeError,
     "q_dtype float8_e5m2 is not supported on target"),
    ("q_dtype_not_fp8", _set("q_dtype", torch.bfloat16), TypeError, "q_dtype must be None or an fp8 dtype"),
    ("q_dtype_type", _set("q_dtype", "float8_e4m3fn"), TypeError, "q_dtype must be None or a torch.dtype"),
    ("q_scale_size", _set("q_scale", _ones(2)), ValueError, "q_scale must hold 1 element"),
    ("q_scale_dtype", _set("q_scale", _ones(1, dtype=torch.float16)), TypeError, "q_scale must have dtype"),
    ("q_scale_without_q_dtype", _all(_set("q_dtype", None), _set("q_scale", _ones(1))), ValueError,
     "q_scale is given but q_dtype is None"),
]


def _fp8_state(args, kwargs):
    return [t.clone() for t in (args["key_cache"], args["value_cache"], kwargs["k_scale_cache"],
                                kwargs["v_scale_cache"]) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("mutate,exc,text", [b[1:] for b in FP8_BAD], ids=[b[0] for b in FP8_BAD])
def test_fp8_bad_input_raises_and_writes_nothing(mutate, exc, text):
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache_fp8 as op8
    from helpers import as_bytes

    args, kwargs = make_inputs(FP8_CASE, DEVICE)
    mutate(args, kwargs)
    before = _fp8_state(args, kwargs)
    with pytest.raises(exc) as info:
        op8(**args, **kwargs)
    assert text in str(info.value)
    for a, b in zip(before, _fp8_state(args, kwargs), strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))


def test_fp8_q_dtype_and_q_scale_device_per_target():
    """fp8 q is e4m3 in each target's variant (e4m3fnuz on gfx942 only); q_scale must be on qkv's device."""
    from fused_qkv.core import ArrayInfo, OpConfig, plan_launch

    args, kwargs = make_inputs(Case(), "cpu")

    def info(t, device="cpu"):
        return ArrayInfo(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."), device)

    arrays = {n: info(args[n]) for n in ("qkv", "cos", "sin", "positions", "slot_mapping", "key_cache",
                                         "value_cache")}

    def plan(q_dtype, target, **extra):
        return plan_launch(dict(arrays, **extra), OpConfig(num_q_heads=4, num_kv_heads=2, head_dim=64,
                                                           q_dtype=q_dtype), target=target)

    for target, ok, bad in [("cuda", ["float8_e4m3fn"], ["float8_e4m3fnuz", "float8_e5m2"]),
                            ("hip:gfx942", ["float8_e4m3fnuz"], ["float8_e4m3fn", "float8_e5m2"]),
                            ("hip:gfx950", ["float8_e4m3fn"], ["float8_e4m3fnuz", "float8_e5m2"]),
                            ("interpreter", ["float8_e4m3fn", "float8_e4m3fnuz"], ["float8_e5m2"])]:
        for dt in ok:
            p = plan(dt, target)
            assert p.constexprs["Q_SCALE_MODE"] == 2 and p.out_shapes["q"] == ((7, 4, 64), dt)
            assert p.out_shapes["q_scales"] == ((7, 4), "float32")
        for dt in bad:
            with pytest.raises(TypeError, match=f"q_dtype {dt} is not supported on target {target}"):
                plan(dt, target)
    scale = torch.ones(1)
    assert plan("float8_e4m3fn", "cuda", q_scale=info(scale)).out_shapes["q_scales"] is None
    with pytest.raises(ValueError, match="q_scale must be on the same device as qkv"):
        plan("float8_e4m3fn", "cuda", q_scale=info(scale, "meta"))


JAX_FP8_NOT_APPLICABLE = {"scale_cache_overlaps_cache", "scale_cache_stride0", "q_dtype_type", "scale_cache_not_tensor"}
JAX_FP8_BAD = [b for b in FP8_BAD if b[0] not in JAX_FP8_NOT_APPLICABLE]


@pytest.mark.parametrize("mutate,exc,text", [b[1:] for b in JAX_FP8_BAD], ids=[b[0] for b in JAX_FP8_BAD])
def test_fp8_bad_input_raises_in_jax(mutate, exc, text):
    import jax.numpy as jnp
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache_fp8 as jop8
    from helpers import to_numpy

    args, kwargs = make_inputs(FP8_CASE, "cpu")
    mutate(args, kwargs)

    def conv(v):
        if isinstance(v, torch.dtype):
            return jnp.dtype(str(v).removeprefix("torch."))
        return jnp.asarray(to_numpy(v)) if isinstance(v, torch.Tensor) else v

    with pytest.raises(exc) as info:
        jop8(**{k: conv(v) for k, v in args.items()}, **{k: conv(v) for k, v in kwargs.items()})
    assert text in str(info.value)
