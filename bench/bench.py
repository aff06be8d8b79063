"""``fused-qkv bench``: the fused op against its baselines, side by side on identical inputs, in one process.

Implementations (the baselines are the tests' reference chains, ``torch_api.unfused`` / ``jax_api.unfused``):

- ``fused_torch``: this project's torch op;  ``fused_jax``: this project's JAX op (jitted, caches donated);
- ``unfused_eager``: the torch chain, eager;  ``compiled_math``: its split/norm/RoPE under ``torch.compile`` with
  the cache write kept as an eager ``index_copy_`` (how serving engines keep the cache write opaque);
- ``unfused_jax``: the JAX chain under ``jax.jit`` with donated caches;
- ``floor``: the fewest bytes this configuration must move / the device-to-device copy bandwidth measured in the
  same run (bytes read plus bytes written).

GPU time: torch callables are captured in a CUDA graph (20 back-to-back calls per graph at T <= 1024, 4 above)
and the replays timed with CUDA events. JAX callables
(one jitted call each, caches donated) are timed on the device: the durations of every kernel, copy and memset
that the calls ran, as CUPTI records them (``torch.profiler``, which sees XLA's kernels in the same process),
summed and divided by the number of calls. The fused torch op is also timed that way, one synchronised call at a
time as the JAX calls run (``kernel_us`` in the JSON), so the JAX/torch ratio compares like with like.
At T <= 1024 the working set fits the 50 MB L2, so those sizes are latency figures, not bandwidth.
Host overhead of one eager call is reported as a ratio to one small aten op timed the same way (median of five
alternating rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SHAPES = {
    "S1": dict(num_q_heads=32, num_kv_heads=8, head_dim=128, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="bfloat16", scale=False, return_kv=True),
    "S2": dict(num_q_heads=16, num_kv_heads=2, head_dim=256, norm_weight_offset=1.0, rotary_dim=64,
               attn_output_gate=True, cache="bfloat16", scale=False, return_kv=True),
    "S3": dict(num_q_heads=32, num_kv_heads=8, head_dim=128, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="float8_e4m3fn", scale=True, return_kv=True),
    "S4": dict(num_q_heads=32, num_kv_heads=8, head_dim=128, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="bfloat16", scale=False, return_kv=False),
    # Qwen3-VL-8B-like: interleaved mRoPE over [3, T] positions (images of 16 x 16 patches, see torch_inputs)
    "S5": dict(num_q_heads=32, num_kv_heads=8, head_dim=128, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="bfloat16", scale=False, return_kv=True,
               mrope_section=(24, 20, 20), mrope_interleaved=True),
    # Gemma-4-like global layer: D=512, K=V, V-norm, 'proportional' RoPE (partial_rotary_factor 0.25) as
    # transformers builds it: a full-width bf16 table whose last 3/4 of the frequencies are zero
    "S6": dict(num_q_heads=16, num_kv_heads=4, head_dim=512, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="bfloat16", scale=False, return_kv=True,
               k_eq_v=True, v_norm=True, table="proportional"),
    # fp8 attention (the fp8 entry point): S1 with a static fp8 q and an fp8 cache with per-tensor scales (S7), S1
    # with a dynamic per-token-head fp8 q and per-token-head K/V scale caches (S8)
    "S7": dict(num_q_heads=32, num_kv_heads=8, head_dim=128, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="float8_e4m3fn", scale=True, return_kv=True, q_fp8="static"),
    "S8": dict(num_q_heads=32, num_kv_heads=8, head_dim=128, norm_weight_offset=0.0, rotary_dim=None,
               attn_output_gate=False, cache="float8_e4m3fn", scale=False, return_kv=True, q_fp8="dynamic",
               scale_cache=True),
}
# the options only the fused op has (S5, S6): their rows add ``fused_plain``, the same shape without them, and
# leave out the unfused chains (which cover the options of S1-S4)
MODEL_OPTIONS = ("mrope_section", "mrope_interleaved", "k_eq_v", "v_norm")  # op keyword arguments
FP8_OPTIONS = ("q_fp8", "scale_cache")  # S7/S8: the fp8 entry point's arguments (see fp8_kwargs)
NEW_OPTIONS = MODEL_OPTIONS + FP8_OPTIONS


def plain_shape(shape: dict) -> dict:
    """The shape without the options of NEW_OPTIONS (plain positions, a V block, no V-norm; the same table)."""
    return {k: v for k, v in shape.items() if k not in NEW_OPTIONS}


def has_new_options(shape: dict) -> bool:
    return any(shape.get(k) for k in NEW_OPTIONS)
TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
CACHE_SLOTS = 1 << 18  # 256k slots: 512 MB per cache for S1 (10x the H100's L2)
BLOCK_SIZE = 16
MAX_POS = 1 << 17
L2_TOKENS = 1024  # at or below: latency only


def min_bytes(shape: dict, T: int) -> int:
    """Each input read once, each output written once (bf16 activations, fp32 half tables, int64 indices)."""
    QH, KVH, D = shape["num_q_heads"], shape["num_kv_heads"], shape["head_dim"]
    R = shape["rotary_dim"] or D
    gate = shape["attn_output_gate"]
    width = (QH * (2 if gate else 1) + (1 if shape.get("k_eq_v") else 2) * KVH) * D
    cache_item = 1 if shape["cache"].startswith("float8") else 2
    q_item = 1 if shape.get("q_fp8") else 2
    b = T * width * 2  # qkv
    b += 2 * T * (R // 2) * (2 if shape.get("table") == "proportional" else 4)  # cos, sin: one entry per pair
    b += T * 8 * (3 if shape.get("mrope_section") else 1) + T * 8  # positions, slot_mapping
    b += T * QH * D * (q_item + (2 if gate else 0))  # q (+ gate)
    b += T * QH * 4 if shape.get("q_fp8") == "dynamic" else 0  # q_scales
    b += 2 * T * KVH * 4 if shape.get("scale_cache") else 0  # scale cache writes
    b += (2 * T * KVH * D * 2) if shape["return_kv"] else 0  # k, v outputs
    b += 2 * T * KVH * D * cache_item  # cache writes
    return b


def _cfg(shape):
    cfg = {k: shape[k] for k in ("num_q_heads", "num_kv_heads", "head_dim", "norm_weight_offset", "rotary_dim",
                                 "attn_output_gate")}
    cfg.update({k: shape[k] for k in MODEL_OPTIONS if shape.get(k)})
    return cfg


def fp8_kwargs(shape: dict, inp: dict, framework: str = "torch") -> dict:
    """The fp8 entry point's arguments of S7/S8 (an empty dict for the other shapes: the main entry point)."""
    if not any(shape.get(k) for k in FP8_OPTIONS):
        return {}
    if framework == "torch":
        import torch

        kw = dict(q_dtype=torch.float8_e4m3fn)
    else:
        import jax.numpy as jnp

        kw = dict(q_dtype=jnp.float8_e4m3fn)
    kw.update(q_scale=inp.get("q_scale"), k_scale_cache=inp.get("k_scale_cache"),
              v_scale_cache=inp.get("v_scale_cache"))
    return kw


def torch_inputs(shape: dict, T: int, seed: int = 0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    QH, KVH, D = shape["num_q_heads"], shape["num_kv_heads"], shape["head_dim"]
    R = shape["rotary_dim"] or D
    width = (QH * (2 if shape["attn_output_gate"] else 1) + 2 * KVH) * D
    inv = 1.0 / (1e6 ** (torch.arange(0, R, 2, device="cuda", dtype=torch.float64) / R))
    if shape.get("table") == "proportional":
        inv[R // 8:] = 0.0  # partial_rotary_factor 0.25: the first quarter of the frequencies rotate
    ang = torch.arange(MAX_POS, device="cuda", dtype=torch.float64)[:, None] * inv
    cdt = getattr(torch, shape["cache"])
    cache_shape = (CACHE_SLOTS // BLOCK_SIZE, BLOCK_SIZE, KVH, D)
    # the plain qkv (with a V block); k_eq_v takes a copy of its columns without the V block
    qkv = torch.randn(T, width, device="cuda", generator=g).to(torch.bfloat16)
    positions = torch.randint(0, MAX_POS, (T,), device="cuda", generator=g)
    extra = {}
    if shape.get("mrope_section"):
        # laid out as get_rope_index lays out images of 16 x 16 patches: one temporal position per image (random),
        # height and width rows counting the patch's row and column from it; the plain variant reads the temporal row
        patch = torch.arange(T, device="cuda") % 256
        start = torch.randint(0, MAX_POS - 16, (T // 256 + 1,), device="cuda", generator=g)
        t_row = start[torch.arange(T, device="cuda") // 256]
        positions = torch.stack([t_row, t_row + patch // 16, t_row + patch % 16])
        extra["positions_plain"] = t_row
    if shape.get("k_eq_v"):
        extra["qkv_plain"] = qkv
        qkv = qkv[:, :width - KVH * D].contiguous()
    cos, sin = ang.cos().float(), ang.sin().float()
    if shape.get("table") == "proportional":  # as transformers hands it to the model: full width, model dtype
        cos, sin = (torch.cat([t, t], -1).to(torch.bfloat16) for t in (cos, sin))
    if shape.get("q_fp8") == "static":
        extra["q_scale"] = torch.tensor([0.02], device="cuda")
    if shape.get("scale_cache"):
        extra["k_scale_cache"] = torch.rand(cache_shape[:-1], device="cuda", generator=g) + 0.5
        extra["v_scale_cache"] = torch.rand(cache_shape[:-1], device="cuda", generator=g) + 0.5
    return dict(
        extra,
        qkv=qkv,
        q_weight=(torch.rand(D, device="cuda", generator=g) + 0.5).to(torch.bfloat16),
        k_weight=(torch.rand(D, device="cuda", generator=g) + 0.5).to(torch.bfloat16),
        cos=cos, sin=sin,
        positions=positions,
        key_cache=torch.randn(cache_shape, device="cuda", generator=g).to(cdt),
        value_cache=torch.randn(cache_shape, device="cuda", generator=g).to(cdt),
        slot_mapping=torch.randperm(CACHE_SLOTS, device="cuda", generator=g)[:T],
        k_scale=torch.tensor([0.5], device="cuda") if shape["scale"] else None,
        v_scale=torch.tensor([0.7], device="cuda") if shape["scale"] else None,
    )


def graph_time_us(fn, reps: int, calls_per_graph: int = 1) -> float:
    """Median over 5 rounds of CUDA-graph replays timed with events, per call. The graph holds
    ``calls_per_graph`` back-to-back calls, as a serving engine's graph holds a layer's kernels: otherwise, at
    small T, each replay's launch latency on the host (this VM launches slowly) would be timed instead of the GPU."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    # thread_local: XLA's own threads (the JAX rows of this run) may free or poll while this thread captures;
    # in the default global mode any such call from another thread invalidates the capture
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(calls_per_graph):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    replays = max(1, reps // calls_per_graph)
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / (replays * calls_per_graph))
    del graph
    return float(np.median(times))


def calls_per_graph(T: int, floor_us: float) -> int:
    """Back-to-back calls in one timed graph: 20 at small T; above, enough for about 1 ms of GPU work at the floor
    (at least 4), so the gap between two graph replays weighs under 1 % of the time per call."""
    if T <= L2_TOKENS:
        return 20
    return max(4, min(20, int(1000 // floor_us)))


def _triton_copy():
    import triton
    import triton.language as tl

    @triton.jit
    def copy_kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)

    return copy_kernel


def copy_bandwidth_gbps() -> float:
    """Best of several large device-to-device copies (bytes read + written per second): torch's copy_ and a
    plain vectorised Triton copy, 1 and 4 GiB."""
    import torch

    best = 0.0
    kern = _triton_copy()
    for nbytes in (1 << 30, 1 << 32):
        src = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda").random_(0, 1 << 30)
        dst = torch.empty_like(src)
        for block, warps in ((4096, 4), (8192, 8), (16384, 8)):
            grid = (triton_cdiv(src.numel(), block),)
            us = graph_time_us(lambda s=src, d=dst, b=block, w=warps, g=grid: kern[g](s, d, s.numel(), BLOCK=b,
                                                                                   num_warps=w), 5)
            best = max(best, 2 * nbytes / (us * 1e-6) / 1e9)
        del src, dst
    for nbytes in (1 << 30, 1 << 32):
        for dtype in (torch.uint8, torch.float32, torch.int64):
            src = torch.empty(nbytes // torch.empty(0, dtype=dtype).element_size(), dtype=dtype, device="cuda")
            src.view(torch.uint8).random_(0, 255)
            dst = torch.empty_like(src)
            us = graph_time_us(lambda dst=dst, src=src: dst.copy_(src), 5)
            best = max(best, 2 * nbytes / (us * 1e-6) / 1e9)
            del src, dst
    torch.cuda.empty_cache()
    return best


def same_bytes_copy_us(nbytes: int, reps: int, per_graph: int) -> float:
    """GPU time of one device copy that reads and writes ``nbytes`` in all (``nbytes / 2`` each way), timed as the
    fused op is (graph of ``per_graph`` back-to-back calls): what a single kernel moving that many bytes costs,
    per-call gaps included."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    us = graph_time_us(lambda d=dst, s=src: d.copy_(s), reps, calls_per_graph=per_graph)
    del src, dst
    return us


def triton_cdiv(a, b):
    return -(-a // b)


def host_overhead(fn, reps=200) -> float:
    """Wall time per eager call (microseconds), synchronising only at the end."""
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def host_ratio(fn, aten_fn, rounds: int = 5, reps: int = 400) -> tuple:
    """(median ratio, median us) of ``fn``'s host time per eager call to ``aten_fn``'s, measured in alternating
    rounds so that both see the same machine state (a single aten figure at the start drifts by 10-20 %)."""
    ratios, times = [], []
    for _ in range(rounds):
        ours = host_overhead(fn, reps)
        aten = host_overhead(aten_fn, reps)
        ratios.append(ours / aten)
        times.append(ours)
    return float(np.median(ratios)), float(np.median(times))


def torch_impls(shape, inp):
    import torch
    from fused_qkv.core import ARRAY_NAMES
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache_fp8 as op8
    from fused_qkv.torch_api.unfused import prologue_math, unfused, write_cache

    cfg = _cfg(shape)
    args = [inp[k] for k in ARRAY_NAMES[:9]]
    fp8 = fp8_kwargs(shape, inp)
    fused = lambda: (op8 if fp8 else op)(*args, **cfg, k_scale=inp["k_scale"], v_scale=inp["v_scale"],  # noqa: E731
                                         return_kv=shape["return_kv"], **fp8)
    if has_new_options(shape):  # and the same shape without them
        plain = dict(inp, qkv=inp.get("qkv_plain", inp["qkv"]), positions=inp.get("positions_plain",
                                                                                 inp["positions"]))
        pargs = [plain[k] for k in ARRAY_NAMES[:9]]
        fused_plain = lambda: op(*pargs, **_cfg(plain_shape(shape)), k_scale=inp["k_scale"],  # noqa: E731
                                 v_scale=inp["v_scale"], return_kv=shape["return_kv"])
        return {"fused_torch": fused, "fused_plain": fused_plain}
    eager = lambda: unfused(*args, k_scale=inp["k_scale"], v_scale=inp["v_scale"], **cfg)  # noqa: E731
    math_c = torch.compile(prologue_math, dynamic=True)

    def compiled():
        q, gate, k, v = math_c(*args[:6], **cfg)
        write_cache(k, v, inp["key_cache"], inp["value_cache"], inp["slot_mapping"], inp["k_scale"], inp["v_scale"])
        return q

    return {"fused_torch": fused, "unfused_eager": eager, "compiled_math": compiled}


def gpu_activities(call, n: int) -> list:
    """(name, microseconds) of every kernel, copy and memset that ``n`` calls ran, as CUPTI records them through
    ``torch.profiler`` (XLA's kernels included: CUPTI traces the whole process). One warm-up call first."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            call()
        torch.cuda.synchronize()
    events = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not events:
        raise RuntimeError("the profiler recorded no GPU activity")
    return events


def synced(call):
    """``call`` followed by a device synchronisation: one call at a time, as every JAX call below runs."""
    import torch

    def one_call():
        out = call()
        torch.cuda.synchronize()
        return out
    return one_call


def device_time_us(call, n: int) -> float:
    """GPU time per call: the summed durations of the kernels, copies and memsets that ``n`` calls ran."""
    return sum(us for _, us in gpu_activities(call, n)) / n


def jax_impls(shape, inp):
    """Jitted JAX callables (caches donated) on the same values as the torch inputs; each call runs the op once."""
    import jax
    import jax.numpy as jnp
    import torch
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jop
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache_fp8 as jop8
    from fused_qkv.jax_api.unfused import unfused as junfused

    cfg = _cfg(shape)

    def to_jax(t):
        if t is None:
            return None
        if t.dtype == torch.bfloat16 or t.element_size() == 1:
            return jnp.asarray(t.float().cpu().numpy()).astype(jnp.dtype(str(t.dtype).removeprefix("torch.")))
        return jnp.asarray(t.cpu().numpy())

    j = {k: to_jax(v) for k, v in inp.items() if not k.endswith("_plain")}
    j["positions"] = j["positions"].astype(jnp.int32)
    j["slot_mapping"] = j["slot_mapping"].astype(jnp.int32)
    state = {"kc": j.pop("key_cache"), "vc": j.pop("value_cache")}
    fp8 = fp8_kwargs(shape, j, "jax")
    if fp8:  # S7/S8: the fp8 entry point, its scale caches donated with the caches
        scales = {"ksc": fp8.pop("k_scale_cache"), "vsc": fp8.pop("v_scale_cache")}
        q_scale = fp8.pop("q_scale")

        @jax.jit(donate_argnums=(1, 2, 3))
        def fused8(j, kc, vc, sc):
            out = jop8(j["qkv"], j["q_weight"], j["k_weight"], j["cos"], j["sin"], j["positions"], kc, vc,
                       j["slot_mapping"], k_scale=j["k_scale"], v_scale=j["v_scale"], return_kv=shape["return_kv"],
                       q_scale=q_scale, k_scale_cache=sc["ksc"], v_scale_cache=sc["vsc"], **fp8, **cfg)
            return ((out.q, out.gate, out.k, out.v), out.key_cache, out.value_cache,
                    {"ksc": out.k_scale_cache, "vsc": out.v_scale_cache})

        def call8():
            outs, state["kc"], state["vc"], new = fused8(j, state["kc"], state["vc"], scales)
            scales.update(new)
            jax.block_until_ready(outs)
            return outs

        return {"fused_jax": call8}

    @jax.jit(donate_argnums=(1, 2))
    def fused(j, kc, vc):
        out = jop(j["qkv"], j["q_weight"], j["k_weight"], j["cos"], j["sin"], j["positions"], kc, vc,
                  j["slot_mapping"], k_scale=j["k_scale"], v_scale=j["v_scale"], return_kv=shape["return_kv"], **cfg)
        return (out.q, out.gate, out.k, out.v), out.key_cache, out.value_cache

    @jax.jit(donate_argnums=(1, 2))
    def chain(j, kc, vc):
        q, gate, k, v, kc, vc = junfused(j["qkv"], j["q_weight"], j["k_weight"], j["cos"], j["sin"], j["positions"],
                                         kc, vc, j["slot_mapping"], k_scale=j["k_scale"], v_scale=j["v_scale"], **cfg)
        if not shape["return_kv"]:  # the serving case: K/V only go to the cache
            k = v = None
        return (q, gate, k, v), kc, vc

    def caller(fn):
        def call():
            outs, state["kc"], state["vc"] = fn(j, state["kc"], state["vc"])
            jax.block_until_ready(outs)  # one call at a time: nothing else runs in the profiled window
            return outs
        return call

    if has_new_options(shape):
        return {"fused_jax": caller(fused)}
    return {"fused_jax": caller(fused), "unfused_jax": caller(chain)}


def _write_result(out_dir, dev, copy_bw, aten_us, host, kernel_us, checks, rows, complete):
    from fused_qkv.torch_api import native

    result = dict(device=dev, copy_bandwidth_gbps=copy_bw, aten_op_host_us=aten_us, host_overhead_ratio=host,
                  native_launcher=native.status(), kernel_us=kernel_us, oracle_check=checks, rows=rows,
                  complete=complete)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def run(shapes, tokens, out_dir, with_jax=True):
    import torch

    os.makedirs(out_dir, exist_ok=True)
    dev = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth_gbps()
    x, y = torch.randn(16, device="cuda"), torch.empty(16, device="cuda")
    aten = lambda: torch.add(x, 1.0, out=y)  # noqa: E731
    aten_us = host_overhead(aten, reps=2000)
    print(f"device: {dev}; copy bandwidth {copy_bw:.0f} GB/s (read + write); one aten op {aten_us:.1f} us host")
    rows, host, kernel_us, checks = [], {}, {}, {}
    check_T = 64 if 64 in tokens else min(tokens)
    for sname in shapes:
        shape = SHAPES[sname]
        for T in tokens:
            inp = torch_inputs(shape, T)
            nbytes = min_bytes(shape, T)
            reps = 200 if T <= 1024 else 40
            res = {}
            impls = torch_impls(shape, inp)
            per_graph = calls_per_graph(T, nbytes / (copy_bw * 1e9) * 1e6)
            for name, fn in impls.items():
                res[name] = graph_time_us(fn, reps, calls_per_graph=per_graph)
                if T == 16:
                    host[f"{sname}:{name}"] = host_ratio(fn, aten, reps=400 if name.startswith("fused") else 40)[0]
            n = 50 if T <= 1024 else 10
            kernel_us[f"{sname}:{T}:fused_torch"] = device_time_us(synced(impls["fused_torch"]), n)
            jimpls = jax_impls(shape, inp) if with_jax else {}
            for name, call in jimpls.items():
                res[name] = device_time_us(call, n)
            if with_jax:
                kernel_us[f"{sname}:{T}:fused_jax"] = res["fused_jax"]
            if T == check_T:  # the timed calls computed the right thing
                checks[sname] = verify(shape, inp, impls["fused_torch"](), jimpls.get("fused_jax"))
                print(f"{sname} T={T}: worst error / allowed vs the float64 oracle: {checks[sname]}", flush=True)
            res["copy_same_bytes"] = same_bytes_copy_us(nbytes, reps, per_graph)  # at decode sizes: one launch
            res["floor"] = nbytes / (copy_bw * 1e9) * 1e6
            for name, us in res.items():
                b = min_bytes(plain_shape(shape), T) if name == "fused_plain" else nbytes
                rows.append(dict(shape=sname, T=T, impl=name, us=us, bytes=b,
                                 gbps=b / (us * 1e-6) / 1e9, pct_copy=100 * b / (us * 1e-6) / 1e9 / copy_bw,
                                 latency_only=T <= L2_TOKENS))
            f = res["fused_torch"]
            line = " ".join(f"{k}={v:8.1f}" for k, v in res.items())
            print(f"{sname} T={T:>6} {line}  | fused {nbytes / (f * 1e-6) / 1e9:6.0f} GB/s "
                  f"{100 * nbytes / (f * 1e-6) / 1e9 / copy_bw:5.1f}% of copy", flush=True)
            del inp
            torch.cuda.empty_cache()
            # written after every size, so a run stopped part-way keeps what it measured ("complete": false)
            _write_result(out_dir, dev, copy_bw, aten_us, host, kernel_us, checks, rows, complete=False)
    result = _write_result(out_dir, dev, copy_bw, aten_us, host, kernel_us, checks, rows, complete=True)
    print_table(result)
    plot(result, os.path.join(out_dir, "bench.png"))
    return result


def verify(shape, inp, out, jax_call=None) -> dict:
    """Worst error of the fused outputs against the float64 oracle, in units of the allowed error (<= 1: correctly
    rounded); raises if any exceeds 1. ``out``: the torch op's outputs; ``jax_call``: runs the JAX op."""
    from fused_qkv.core import reference, rounding_error

    f64 = lambda t: None if t is None else t.detach().float().cpu().double().numpy()  # noqa: E731
    T = inp["qkv"].shape[0]
    kc = inp["key_cache"]
    ref = reference(f64(inp["qkv"]), f64(inp["q_weight"]), f64(inp["k_weight"]), f64(inp["cos"]), f64(inp["sin"]),
                    inp["positions"].cpu().numpy(), inp["slot_mapping"].cpu().numpy(),
                    num_q_heads=shape["num_q_heads"], num_kv_heads=shape["num_kv_heads"],
                    head_dim=shape["head_dim"], num_cache_slots=CACHE_SLOTS, key_cache_dtype=shape["cache"],
                    value_cache_dtype=shape["cache"], norm_weight_offset=shape["norm_weight_offset"],
                    rotary_dim=shape["rotary_dim"], attn_output_gate=shape["attn_output_gate"],
                    k_scale=f64(inp["k_scale"]), v_scale=f64(inp["v_scale"]),
                    q_dtype="float8_e4m3fn" if shape.get("q_fp8") else None, q_scale=f64(inp.get("q_scale")),
                    k_scale_cache=bool(shape.get("scale_cache")), v_scale_cache=bool(shape.get("scale_cache")),
                    **{k: shape[k] for k in MODEL_OPTIONS if shape.get(k)})
    slots = inp["slot_mapping"].cpu()
    flat = lambda c: c.reshape(-1, *c.shape[-2:])[slots.to(c.device)]  # noqa: E731
    q_exact, q_dtype = (ref.exact_q, "float8_e4m3fn") if shape.get("q_fp8") else (ref.q, "bfloat16")
    scores = {"q": rounding_error(f64(out.q), q_exact, q_dtype)[0],
              "key_cache": rounding_error(f64(flat(kc)), ref.exact_key_cache, shape["cache"])[0],
              "value_cache": rounding_error(f64(flat(inp["value_cache"])), ref.exact_value_cache, shape["cache"])[0]}
    if shape.get("q_fp8") == "dynamic":  # fp32 scales: relative error in units of 2**-16
        scores["q_scales"] = np.max(np.abs(f64(out.q_scales) - ref.q_scales) / ref.q_scales) * 2**16
    if shape.get("scale_cache"):
        for name, exact in (("k_scale_cache", ref.key_scales), ("v_scale_cache", ref.value_scales)):
            got = f64(inp[name].reshape(-1, inp[name].shape[-1])[slots.to(inp[name].device)])
            scores[name] = np.max(np.abs(got - exact) / exact) * 2**16
    if shape["return_kv"]:
        scores["k"] = rounding_error(f64(out.k), ref.k, "bfloat16")[0]
        scores["v"] = rounding_error(f64(out.v), ref.v, "bfloat16")[0]
    if jax_call is not None:
        import jax.numpy as jnp

        jout = jax_call()
        scores["jax q"] = rounding_error(np.asarray(jout[0].astype(jnp.float32), np.float64), q_exact, q_dtype)[0]
    scores = {k: round(float(v), 3) for k, v in scores.items()}
    if not all(v <= 1.0 for v in scores.values()) or T == 0:
        raise AssertionError(f"fused op disagrees with the oracle: {scores}")
    return scores


def _sweep_cases(shapes, tokens, out_dir, filename, reps_large, measure):
    """Run ``measure(sname, shape, T, inp, fn, reps, per_graph, nbytes, copy_bw)`` (a JSON-able record) on the bench
    inputs of every shape and size, with the fused torch op as ``fn`` timed as the bench times it and the copy
    bandwidth measured at the start; the plan caches are cleared after each size; writes ``filename``."""
    import torch
    from fused_qkv.torch_api.op import clear_caches

    os.makedirs(out_dir, exist_ok=True)
    copy_bw = copy_bandwidth_gbps()
    print(f"copy bandwidth {copy_bw:.0f} GB/s (read + write)", flush=True)
    found = []
    for sname in shapes:
        shape = SHAPES[sname]
        for T in tokens:
            inp = torch_inputs(shape, T)
            fn = torch_impls(shape, inp)["fused_torch"]
            nbytes = min_bytes(shape, T)
            reps = 200 if T <= L2_TOKENS else reps_large
            per_graph = calls_per_graph(T, nbytes / (copy_bw * 1e9) * 1e6)  # as the bench times the op
            try:
                found.append(measure(sname, shape, T, inp, fn, reps, per_graph, nbytes, copy_bw))
            finally:
                clear_caches()
            del inp
            torch.cuda.empty_cache()
    with open(os.path.join(out_dir, filename), "w") as f:
        json.dump(dict(copy_bandwidth_gbps=copy_bw, results=found), f, indent=1)


def sweep(shapes, tokens, out_dir):
    """Time the fused torch op over (BLOCK_T, num_warps) choices, to set ``plan.choose_tiles`` from data."""
    from fused_qkv.core import plan
    from fused_qkv.torch_api.op import clear_caches

    def measure(sname, shape, T, inp, fn, reps, per_graph, nbytes, copy_bw):
        block_d = plan.next_pow2(shape["head_dim"])
        timings = []
        for bt in (1, 2, 4, 8, 16, 32, 64):
            for warps in (1, 2, 4, 8):
                if bt > max(T, 1) * 2 or bt * block_d > 16384 or bt * block_d < warps * 32:
                    continue
                with plan.tile_override(bt, warps):
                    clear_caches()
                    timings.append((graph_time_us(fn, reps, per_graph), bt, warps))
        clear_caches()
        default = graph_time_us(fn, reps, per_graph)
        timings.sort()
        pct = lambda us: 100 * nbytes / (us * 1e-6) / 1e9 / copy_bw  # noqa: E731
        print(f"{sname} T={T}: default {default:.1f} us ({pct(default):.0f}% of copy); best " + ", ".join(
            f"BLOCK_T={bt} warps={w}: {us:.1f} us ({pct(us):.0f}%)" for us, bt, w in timings[:4]), flush=True)
        return dict(shape=sname, T=T, default_us=default,
                    timings=[dict(us=us, block_t=bt, num_warps=w) for us, bt, w in timings])

    _sweep_cases(shapes, tokens, out_dir, "sweep.json", 20, measure)


def sweep_stream(shapes, tokens, out_dir):
    """Time the fused torch op with the kernel's evict-first hints forced off and on (``plan.evict_first``), in
    alternating rounds, to check its window (``EVICT_FIRST_MIN_BYTES`` .. ``EVICT_FIRST_MAX_BYTES``) against data."""
    from fused_qkv.core import plan
    from fused_qkv.torch_api.op import clear_caches

    def measure(sname, shape, T, inp, fn, reps, per_graph, nbytes, copy_bw):
        times = {False: [], True: []}
        for _ in range(3):
            for hints in (False, True):
                with plan.evict_first_override(hints):
                    clear_caches()
                    times[hints].append(graph_time_us(fn, reps, per_graph))
        off, on = (float(np.median(times[k])) for k in (False, True))
        qkv_bytes = inp["qkv"].numel() * inp["qkv"].element_size()
        default = plan.evict_first(T, qkv_bytes // max(T, 1), "cuda")
        print(f"{sname} T={T}: hints off {off:.2f} us, on {on:.2f} us (on/off {on / off:.3f}); the default for "
              f"this size: {'on' if default else 'off'}", flush=True)
        return dict(shape=sname, T=T, off_us=times[False], on_us=times[True], default_on=default)

    _sweep_cases(shapes, tokens, out_dir, "sweep_stream.json", 40, measure)


def print_table(result):
    rows = result["rows"]
    impls = ["fused_torch", "fused_jax", "fused_plain", "unfused_eager", "compiled_math", "unfused_jax", "floor"]
    print("\nGPU time per call (us); fused GB/s and % of copy bandwidth; speed-up of fused_torch over baselines"
          " (fused_jax over unfused_jax); jax/torch: kernel time of the fused JAX op over the fused torch op's, both"
          " from the profiler; jax bound: unfused_jax / floor, the most any op could gain over the jax chain;"
          " 1-copy %: one device copy of the same bytes, timed the same way, in % of copy bandwidth;"
          " x plain: fused_torch / fused_plain, the cost of S5-S8's options (fused_plain: the same shape without"
          " them, its own bytes);"
          " * = T <= 1024: latency only (working set in L2)")
    kernel = result.get("kernel_us", {})
    kern = lambda s, T, i: kernel.get(f"{s}:{T}:{i}", float("nan"))  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault((r["shape"], r["T"]), {})[r["impl"]] = r
    head = f"{'shape':<5} {'T':>6} " + " ".join(f"{i:>13}" for i in impls) + \
        f" {'GB/s':>6} {'%copy':>6} {'x eager':>8} {'x compile':>9} {'jax x':>6} {'jax bound':>9}" \
        f" {'jax/torch':>9} {'1-copy %':>8} {'x plain':>7}"
    print(head)
    for (s, T), d in by.items():
        get = lambda k, d=d: d[k]["us"] if k in d else float("nan")  # noqa: E731
        f = d["fused_torch"]
        print(f"{s:<5} {T:>6} " + " ".join(f"{get(i):>13.1f}" for i in impls) +
              f" {f['gbps']:>6.0f} {f['pct_copy']:>5.1f}{'*' if f['latency_only'] else ' '}"
              f" {get('unfused_eager') / get('fused_torch'):>8.2f} {get('compiled_math') / get('fused_torch'):>9.2f}"
              f" {get('unfused_jax') / get('fused_jax'):>6.2f} {get('unfused_jax') / get('floor'):>9.2f}"
              f" {kern(s, T, 'fused_jax') / kern(s, T, 'fused_torch'):>9.2f}"
              f" {d['copy_same_bytes']['pct_copy'] if 'copy_same_bytes' in d else float('nan'):>8.1f}"
              f" {get('fused_torch') / get('fused_plain'):>7.2f}")
    print(f"torch eager launcher: native {result.get('native_launcher', 'not recorded')}")
    print("host overhead per eager call at T=16, in aten ops:",
          ", ".join(f"{k} {v:.2f}" for k, v in result["host_overhead_ratio"].items()))


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in result["rows"]}, key=lambda s: (len(s), s))
    cols = min(4, len(shapes))
    nrows = -(-len(shapes) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(shapes):]:
        ax.set_visible(False)
    impls = ["fused_torch", "fused_jax", "fused_plain", "unfused_eager", "compiled_math", "unfused_jax"]
    for ax, s in zip(axes.flat, shapes, strict=False):
        for color, impl in enumerate(impls):
            pts = [(r["T"], r["gbps"]) for r in result["rows"] if r["shape"] == s and r["impl"] == impl]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{color}", label=impl)
        pts = [(r["T"], r["gbps"]) for r in result["rows"] if r["shape"] == s and r["impl"] == "copy_same_bytes"]
        if pts:
            ax.plot(*zip(*pts, strict=True), color="k", ls=":", marker=".", label="one copy of the same bytes")
        ax.axhline(result["copy_bandwidth_gbps"], color="k", ls="--", label="copy bandwidth")
        ax.axvspan(1, L2_TOKENS, color="0.9", label="T <= 1024: in L2 (latency)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens T")
        ax.set_ylabel("achieved GB/s (minimal bytes / time)")
        ax.set_title(f"{s} on {result['device']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def smoke(with_jax: bool = True) -> int:
    """No GPU: nothing is timed. Check instead that what the bench times runs here, on the demo's small Qwen3-like
    batch: the fused ops against the float64 oracle (correctly rounded), the unfused chains within 4 ulps of each
    output's largest value (they round after every op)."""
    from fused_qkv.bench import demo
    from fused_qkv.core import format_quantum, reference

    print("fused-qkv bench: timing needs a CUDA GPU and none is visible here, so nothing was timed.")
    print(f"Checked instead, under Triton's interpreter on the demo's Qwen3-like batch (T={demo.TOKENS}), that "
          "each implementation the bench times runs and computes the op:")
    batch = demo.make_batch()
    cfg = dict(demo.CONFIG)
    ok = True
    for name, runner in demo.frontends():
        if name == "jax" and not with_jax:
            continue
        rows = demo.verify(batch, runner(batch, "cpu", "bfloat16"), "bfloat16")
        worst = max(score for _, _, score, _ in rows if score == score)
        good = all(r[3] for r in rows)
        ok &= good
        print(f"  fused_{name:<14} worst error / allowed vs the oracle {worst:5.2f} (<= 1)   "
              f"{'PASS' if good else 'FAIL'}")
    ref = reference(batch["qkv"], batch["q_weight"], batch["k_weight"], batch["cos"], batch["sin"],
                    batch["positions"], batch["slot_mapping"], num_cache_slots=demo.NUM_BLOCKS * demo.BLOCK_SIZE,
                    key_cache_dtype="bfloat16", value_cache_dtype="bfloat16", **cfg)
    for name, q in _unfused_q(batch, cfg, with_jax):
        ulps = float(np.abs(q - ref.q).max() / format_quantum(np.abs(ref.q).max(), "bfloat16"))
        good = ulps <= 4
        ok &= good
        print(f"  {name:<20} worst error {ulps:5.2f} ulps of max |q| (<= 4)        {'PASS' if good else 'FAIL'}")
    return 0 if ok else 1


def _unfused_q(batch, cfg, with_jax):
    """(name, q as float64) of each unfused chain, on the demo batch (bf16 activations, a scratch cache)."""
    import torch
    from fused_qkv.bench import demo
    from fused_qkv.torch_api.unfused import unfused

    t = {k: torch.from_numpy(v) for k, v in batch.items() if k not in ("k_scale", "v_scale")}
    for k in ("qkv", "q_weight", "k_weight"):
        t[k] = t[k].to(torch.bfloat16)
    shape = (demo.NUM_BLOCKS, demo.BLOCK_SIZE, cfg["num_kv_heads"], cfg["head_dim"])
    kc, vc = torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(shape, dtype=torch.bfloat16)
    yield "unfused_eager", unfused(**t, key_cache=kc, value_cache=vc, **cfg)[0].double().numpy()
    if not with_jax:
        return
    try:
        import jax.numpy as jnp
        from fused_qkv.jax_api.unfused import unfused as junfused
    except ImportError:
        return
    j = {k: jnp.asarray(v) for k, v in batch.items() if k not in ("k_scale", "v_scale")}
    for k in ("qkv", "q_weight", "k_weight"):
        j[k] = j[k].astype(jnp.bfloat16)
    kc = jnp.zeros(shape, jnp.bfloat16)
    q = junfused(**j, key_cache=kc, value_cache=kc, **cfg)[0]
    yield "unfused_jax", np.asarray(q.astype(jnp.float32), np.float64)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fused-qkv bench", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--shapes", default="S1,S2,S3,S4",
                        help="comma-separated shapes to time: " + "; ".join(
                            f"{k}: {v['num_q_heads']} q / {v['num_kv_heads']} kv heads, D={v['head_dim']}"
                            + (", gate" if v["attn_output_gate"] else "") + f", {v['cache']} cache"
                            + ("" if v["return_kv"] else ", no k/v outputs")
                            + (f", mRoPE {v['mrope_section']}" if v.get("mrope_section") else "")
                            + (", K=V" if v.get("k_eq_v") else "") + (", V-norm" if v.get("v_norm") else "")
                            + (f", {v['q_fp8']} fp8 q" if v.get("q_fp8") else "")
                            + (", per-token-head K/V scale caches" if v.get("scale_cache") else "")
                            for k, v in SHAPES.items()))
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)),
                        help="comma-separated token counts T to time at each shape")
    parser.add_argument("--out", default="bench/results",
                        help="directory for bench.json (every timing), bench.png (the plot) and sweep results")
    parser.add_argument("--no-jax", action="store_true",
                        help="skip the JAX implementations (fused_jax, unfused_jax)")
    parser.add_argument("--sweep", action="store_true",
                        help="time the fused torch op over tile choices instead (writes sweep.json)")
    parser.add_argument("--sweep-stream", action="store_true",
                        help="time the fused torch op with its evict-first hints off and on instead "
                             "(writes sweep_stream.json)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        return smoke(with_jax=not args.no_jax)
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.sweep:
        sweep(args.shapes.split(","), tokens, args.out)
        return 0
    if args.sweep_stream:
        sweep_stream(args.shapes.split(","), tokens, args.out)
        return 0
    run(args.shapes.split(","), tokens, args.out, with_jax=not args.no_jax)
    return 0
