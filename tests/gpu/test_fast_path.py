"""The torch op's eager fast path on CUDA (``torch_api.fast_path``): a call signature that was validated and
launched once goes straight to Triton's launcher on later calls. Each test checks which path a call took (the
checked path, ``op._checked_call``, is counted: white-box) and every call's results against the float64 oracle."""

import dataclasses

import pytest
import torch
from fused_qkv.torch_api import fast_path
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
from fused_qkv.torch_api import op as op_module
from helpers import SCALE_CACHES, Case, check_against_oracle, make_inputs
from triton import knobs

CASES = [
    Case(T=16),
    Case(T=5, gate="blocked", cache_dtype="float8_e4m3fn", scale="head", return_kv=False, table="vllm_view"),
    Case(T=9, cache_view=True, layout="HND", with_offsets=True, q_norm=False, rotary_dim=8, is_neox=False,
         slots="negative", index_dtype="int32"),
    Case(T=7, dtype="float32", gate="interleaved", scale="tensor", cache_dtype="float8_e5m2", slots="short",
         row_pad=8),
]


@pytest.fixture
def checked_calls(monkeypatch):
    """Counts the calls that took the checked path; starts with empty caches."""
    op_module.clear_caches()
    calls = []
    real = op_module._checked_call

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(op_module, "_checked_call", counting)
    yield calls
    op_module.clear_caches()


def _call_and_check(case, args, kwargs):
    kc0, vc0 = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
    out = op(**args, **kwargs)
    check_against_oracle(case, args, kwargs, out, kc0, vc0, args["key_cache"], args["value_cache"])
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c.T}-{c.gate}-{c.cache_dtype}-view{c.cache_view}")
def test_repeated_calls_take_the_fast_path_and_stay_correct(case, checked_calls):
    outs = []
    for seed in range(4):  # new tensors with new values, same shapes and strides
        c = dataclasses.replace(case, seed=seed)
        args, kwargs = make_inputs(c, "cuda")
        outs.append(_call_and_check(c, args, kwargs))
    assert len(checked_calls) == 1, "only the first call should take the checked path"
    assert len({o.q.data_ptr() for o in outs}) == len(outs), "each call returns new output tensors"


def test_overlapping_caches_are_rejected_after_a_fast_path_entry_exists(checked_calls):
    case = Case(T=6)
    args, kwargs = make_inputs(case, "cuda")
    _call_and_check(case, args, kwargs)
    _call_and_check(case, args, kwargs)
    assert len(checked_calls) == 1
    args["value_cache"] = args["key_cache"]  # same metadata as before, but the two caches now share every slot
    for _ in range(2):
        with pytest.raises(ValueError, match="overlap"):
            op(**args, **kwargs)


def test_qkv_view_inside_the_cache_allocation_is_rejected(checked_calls):
    """qkv placed inside the key cache's storage with the metadata of an earlier good call."""
    case = Case(T=4, num_blocks=64, dtype="float32", cache_dtype="float32")
    args, kwargs = make_inputs(case, "cuda")
    _call_and_check(case, args, kwargs)
    kc = args["key_cache"]
    args["qkv"] = kc.view(-1)[: args["qkv"].numel()].view(args["qkv"].shape)
    with pytest.raises(ValueError, match="overlap"):
        op(**args, **kwargs)


def test_misaligned_pointer_takes_the_checked_path(checked_calls):
    case = Case(T=8, dtype="float32", cache_dtype="float32")
    args, kwargs = make_inputs(case, "cuda")
    _call_and_check(case, args, kwargs)
    positions = args["positions"]
    base = torch.empty(positions.numel() + 1, dtype=positions.dtype, device="cuda")
    args["positions"] = base[1:]  # 8 bytes past a 16-byte boundary
    args["positions"].copy_(positions)
    _call_and_check(case, args, kwargs)
    assert len(checked_calls) == 2
    args["positions"] = positions
    _call_and_check(case, args, kwargs)
    assert len(checked_calls) == 2  # aligned again: fast


def test_launch_hooks_still_run_on_every_call(checked_calls):
    case = Case(T=3)
    args, kwargs = make_inputs(case, "cuda")
    _call_and_check(case, args, kwargs)
    seen = []
    chain = knobs.runtime.launch_enter_hook  # Triton's chain of hooks (empty unless a tool added one)
    chain.add(seen.append)
    try:
        for _ in range(3):
            _call_and_check(case, args, kwargs)
    finally:
        chain.remove(seen.append)
    assert len(seen) == 3


def test_a_config_value_of_another_type_is_still_validated(checked_calls):
    case = Case(T=3)
    args, kwargs = make_inputs(case, "cuda")
    _call_and_check(case, args, kwargs)
    with pytest.raises(TypeError, match="is_neox must be a bool"):
        op(**args, **dict(kwargs, is_neox=1))


def _replay_on_new_inputs(fn, case, args, kwargs, warm_calls, checked_calls, refill=()):
    """Capture one call of ``fn`` after ``warm_calls`` eager ones (only the first validated), copy another seed's
    inputs (and the ``refill`` keyword tensors) into the captured tensors, replay, check the replay's results."""
    for _ in range(warm_calls):
        fn(**args, **kwargs)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(**args, **kwargs)
    assert len(checked_calls) == 1
    new_case = dataclasses.replace(case, seed=case.seed + 3)
    new, new_kw = make_inputs(new_case, "cuda")
    for name in ("qkv", "positions", "slot_mapping", "cos", "sin", "q_weight", "k_weight"):
        args[name].copy_(new[name])
    for name in refill:
        kwargs[name].copy_(new_kw[name])
    kc0, vc0 = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
    scales = [n for n in SCALE_CACHES if kwargs.get(n) is not None]
    scales0 = {n: kwargs[n].cpu().clone() for n in scales}
    graph.replay()
    torch.cuda.synchronize()
    check_against_oracle(new_case, args, kwargs, out, kc0, vc0, args["key_cache"], args["value_cache"],
                         scales0 or None, {n: kwargs[n] for n in scales} or None)


def test_fast_path_is_captured_by_a_cuda_graph(checked_calls):
    case = Case(T=12, cache_dtype="float8_e4m3fn", scale="tensor")
    args, kwargs = make_inputs(case, "cuda")
    _replay_on_new_inputs(op, case, args, kwargs, 1, checked_calls, refill=("k_scale", "v_scale"))


def test_repeated_calls_launch_from_the_native_launcher(checked_calls, monkeypatch):
    """On CUDA the recorded signature launches from native.cpp: neither the checks nor the Python fast path run,
    and the results are bit-identical to the Python fast path's."""
    from fused_qkv.torch_api import native

    python_fast = []
    real_call = fast_path._FastLaunch.__call__
    monkeypatch.setattr(fast_path._FastLaunch, "__call__",
                        lambda self, *a: python_fast.append(1) or real_call(self, *a))
    case = Case(T=11, gate="interleaved", cache_dtype="float8_e4m3fn", scale="head")
    args, kwargs = make_inputs(case, "cuda")
    _call_and_check(case, args, kwargs)
    assert native.loaded() is not None, native.status()
    assert native.status().startswith("in use")
    kc0, vc0 = args["key_cache"].clone(), args["value_cache"].clone()
    out_native = _call_and_check(case, args, kwargs)
    kc_native, vc_native = args["key_cache"].clone(), args["value_cache"].clone()
    assert len(checked_calls) == 1 and not python_fast
    args["key_cache"].copy_(kc0)
    args["value_cache"].copy_(vc0)
    monkeypatch.setattr(native, "loaded", lambda: None)
    out_python = op(**args, **kwargs)
    assert len(checked_calls) == 1 and len(python_fast) == 1
    for a, b in zip(out_native, out_python, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert torch.equal(args["key_cache"].view(torch.uint8), kc_native.view(torch.uint8))
    assert torch.equal(args["value_cache"].view(torch.uint8), vc_native.view(torch.uint8))


FP8_CASES = [
    Case(T=13, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv", gate="interleaved"),
    Case(T=16, q_fp8="static", cache_dtype="float8_e4m3fn", scale="tensor", layout="HND", slots="negative"),
    Case(T=6, cache_dtype="float8_e4m3fn", scale_cache="v", scale="head", return_kv=False, index_dtype="int32"),
]


def _fp8_call_and_check(case, args, kwargs):
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache_fp8 as fp8_op
    from helpers import SCALE_CACHES

    kc0, vc0 = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
    scales0 = {n: kwargs[n].cpu().clone() for n in SCALE_CACHES if kwargs.get(n) is not None}
    out = fp8_op(**args, **kwargs)
    check_against_oracle(case, args, kwargs, out, kc0, vc0, args["key_cache"], args["value_cache"], scales0,
                         {n: kwargs[n] for n in scales0})
    return out


@pytest.mark.parametrize("case", FP8_CASES, ids=lambda c: c.id())
def test_fp8_entry_point_repeats_launch_natively_and_match_the_checked_path(case, checked_calls, monkeypatch):
    """The fp8 entry point's repeat calls launch from native.cpp (fp8 q, q_scales and the scale caches among its
    parameters): oracle-checked, and bit-identical to the checked path's launch of the same inputs."""
    from fused_qkv.torch_api import native
    from helpers import SCALE_CACHES

    args, kwargs = make_inputs(case, "cuda")
    _fp8_call_and_check(case, args, kwargs)
    assert native.loaded() is not None, native.status()
    state0 = {n: t.clone() for n, t in (("key_cache", args["key_cache"]), ("value_cache", args["value_cache"]),
                                        *((s, kwargs[s]) for s in SCALE_CACHES if kwargs.get(s) is not None))}
    out_native = _fp8_call_and_check(case, args, kwargs)
    assert len(checked_calls) == 1, "the repeat must launch natively"
    native_state = {n: (args.get(n) if n in args else kwargs[n]).clone() for n in state0}
    for n, t in state0.items():
        (args.get(n) if n in args else kwargs[n]).copy_(t)
    monkeypatch.setattr(native, "loaded", lambda: None)
    out_checked = _fp8_call_and_check(case, args, kwargs)
    assert len(checked_calls) == 2
    for a, b in zip(out_native, out_checked, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    for n, t in native_state.items():
        assert torch.equal((args.get(n) if n in args else kwargs[n]).view(torch.uint8), t.view(torch.uint8)), n


def test_fp8_native_call_is_captured_by_a_cuda_graph(checked_calls):
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache_fp8 as fp8_op

    case = Case(T=12, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv")
    args, kwargs = make_inputs(case, "cuda")
    _replay_on_new_inputs(fp8_op, case, args, kwargs, 2, checked_calls)  # the second call: native
