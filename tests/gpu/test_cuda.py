"""GPU-only checks (collected when FUSED_QKV_TEST_DEVICE=cuda): CUDA graphs, devices, target fp8 support."""

import dataclasses

import pytest
import torch
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache_fp8 as op8
from helpers import Case, check_against_oracle, make_inputs


def test_cuda_graph_capture_and_replay_with_changing_inputs():
    """The op captures into a CUDA graph (no host sync) and each replay sees the new input values."""
    case = Case(T=16, gate="interleaved", cache_dtype="float8_e4m3fn", scale="head", num_blocks=8, block_size=4)
    args, kwargs = make_inputs(case, "cuda")
    static = dict(args)
    op(**static, **kwargs)  # warm up: compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(**static, **kwargs)
    for seed in (5, 6, 7):
        new, new_kw = make_inputs(dataclasses.replace(case, seed=seed), "cuda")
        for name in ("qkv", "positions", "slot_mapping", "cos", "sin", "q_weight", "k_weight"):
            static[name].copy_(new[name])
        kwargs["k_scale"].copy_(new_kw["k_scale"])
        kwargs["v_scale"].copy_(new_kw["v_scale"])
        kc0, vc0 = static["key_cache"].cpu().clone(), static["value_cache"].cpu().clone()
        graph.replay()
        torch.cuda.synchronize()
        check_against_oracle(dataclasses.replace(case, seed=seed), static, kwargs, out, kc0, vc0,
                             static["key_cache"], static["value_cache"])


def test_fp8_entry_point_captures_into_a_cuda_graph():
    """The fp8 entry point (dynamic fp8 q, per-token-head scale caches) captures and replays with new inputs; its
    launches do not sync the host."""
    case = Case(T=16, cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic", num_blocks=8, block_size=4)
    args, kwargs = make_inputs(case, "cuda")
    static = dict(args)
    op8(**static, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        op8(**static, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op8(**static, **kwargs)
    for seed in (5, 6):
        new, _ = make_inputs(dataclasses.replace(case, seed=seed), "cuda")
        for name in ("qkv", "positions", "slot_mapping", "cos", "sin", "q_weight", "k_weight"):
            static[name].copy_(new[name])
        kc0, vc0 = static["key_cache"].cpu().clone(), static["value_cache"].cpu().clone()
        scales0 = {n: kwargs[n].cpu().clone() for n in ("k_scale_cache", "v_scale_cache")}
        graph.replay()
        torch.cuda.synchronize()
        check_against_oracle(dataclasses.replace(case, seed=seed), static, kwargs, out, kc0, vc0,
                             static["key_cache"], static["value_cache"], scales0,
                             {n: kwargs[n] for n in scales0})


def test_fp8_q_fnuz_rejected_on_cuda():
    args, kwargs = make_inputs(Case(q_fp8="dynamic", q_dtype="float8_e4m3fnuz"), "cuda")
    with pytest.raises(TypeError, match="q_dtype float8_e4m3fnuz is not supported on target cuda"):
        op8(**args, **kwargs)


def test_launch_does_not_sync_the_host():
    args, kwargs = make_inputs(Case(T=8), "cuda")
    op(**args, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        op(**args, **kwargs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("name", ["cos", "positions", "key_cache", "slot_mapping", "q_weight", "k_scale"])
def test_tensor_on_cpu_rejected(name):
    args, kwargs = make_inputs(Case(scale="tensor"), "cuda")
    where = args if name in args else kwargs
    where[name] = where[name].cpu()
    with pytest.raises(ValueError, match=f"{name} must be on the same device as qkv"):
        op(**args, **kwargs)


def test_fnuz_cache_rejected_on_cuda():
    args, kwargs = make_inputs(Case(cache_dtype="float8_e4m3fnuz"), "cuda")
    with pytest.raises(TypeError, match="float8_e4m3fnuz is not supported on target cuda"):
        op(**args, **kwargs)


def test_misaligned_qkv_after_aligned_call_is_still_correct():
    """The direct-launch cache keys on Triton's specialisation bits: a qkv view that is not 16-byte aligned, with
    the same shape and strides as an earlier aligned call, must not reuse the aligned kernel."""
    case = Case(T=8, row_pad=8)
    for offset in (0, 1, 0, 3):
        args, kwargs = make_inputs(case, "cuda")
        base = torch.empty(args["qkv"].numel() + 64, dtype=args["qkv"].dtype, device="cuda")
        view = base[offset:offset + args["qkv"].shape[0] * args["qkv"].stride(0)].view(
            args["qkv"].shape[0], args["qkv"].stride(0))[:, :case.width]
        view.copy_(args["qkv"])
        args["qkv"] = view
        assert (view.data_ptr() % 16 == 0) == (offset == 0)
        kc0, vc0 = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
        out = op(**args, **kwargs)
        check_against_oracle(case, args, kwargs, out, kc0, vc0, args["key_cache"], args["value_cache"])
