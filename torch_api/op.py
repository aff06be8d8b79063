"""PyTorch binding of the fused kernel, registered as the mutating op ``fused_qkv::split_qk_norm_rope_cache``."""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch
from fused_qkv.core import (
    INPUT_NAMES,
    ArrayInfo,
    check_config,
    check_layer,
    get_kernel,
    ordered_args,
    plan_launch,
)
from fused_qkv.core import indices as _indices
from fused_qkv.core.launch import launch_interpreted
from fused_qkv.core.spec import SCALAR_NAMES, check_overlaps
from fused_qkv.torch_api import native as _native
from triton import knobs
from triton.knobs import HookChain

OP_NAME = "fused_qkv::split_qk_norm_rope_cache"
_REQUIRED = ("qkv", "cos", "sin", "positions", "key_cache", "value_cache", "slot_mapping")
# the tensor arguments in the order of the public function (the first 9 positional), of the native module's `call`
# and of the fast paths
TENSOR_ARGS = ("qkv", "q_weight", "k_weight", "cos", "sin", "positions", "key_cache", "value_cache", "slot_mapping",
               "offsets", "k_scale", "v_scale")


class FusedQKVOutput(NamedTuple):
    """Outputs of :func:`fused_qkv_split_qk_norm_rope_cache`.

    q: ``[T, num_q_heads, head_dim]``, input dtype: RMS-normalised (if ``q_weight``) and rotated.
    gate: ``[T, num_q_heads, head_dim]`` copy of the gate, or ``None`` without ``attn_output_gate``.
    k: ``[T, num_kv_heads, head_dim]`` normalised and rotated, before ``k_scale``; ``None`` if not ``return_kv``.
    v: ``[T, num_kv_heads, head_dim]`` copy of V, before ``v_scale``; ``None`` if not ``return_kv``.

    Every output is contiguous. Eager CUDA calls taken by the native launcher place all outputs in one
    allocation (each at a 256-byte aligned offset, none overlapping another); its memory returns to the
    allocator when the last of them is freed.
    """

    q: torch.Tensor
    gate: Optional[torch.Tensor]
    k: Optional[torch.Tensor]
    v: Optional[torch.Tensor]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _info(t: Optional[torch.Tensor], name: str, with_ptr: bool) -> Optional[ArrayInfo]:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    ptr = t.data_ptr() if with_ptr else None
    return ArrayInfo(tuple(t.shape), tuple(t.stride()), _dtype_name(t.dtype), str(t.device), ptr)


def _target(device: torch.device) -> str:
    if device.type == "cpu":
        return "interpreter"
    if device.type == "cuda" and torch.version.hip:
        arch = torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
        return f"hip:{arch}"
    if device.type == "cuda":
        return "cuda"
    raise ValueError(f"qkv must be on a CPU or CUDA/ROCm device, got {device}")


def _plan(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
          num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
          gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, with_ptr, target=None):
    """The launch plan for these tensors (``target`` overrides the one of qkv's device: AOT tests)."""
    tensors = (qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, offsets,
               k_scale, v_scale)
    infos = {n: _info(t, n, with_ptr) for t, n in zip(tensors, TENSOR_ARGS, strict=True)}
    for required in _REQUIRED:
        if infos[required] is None:
            raise TypeError(f"{required} must be a torch.Tensor, got None")
    target = target or _target(qkv.device)
    warp_size = 64 if target.startswith("hip:gfx9") else 32
    return plan_launch(
        infos["qkv"], infos["q_weight"], infos["k_weight"], infos["cos"], infos["sin"], infos["positions"],
        infos["key_cache"], infos["value_cache"], infos["slot_mapping"],
        num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, eps=eps,
        norm_weight_offset=norm_weight_offset, is_neox=is_neox, rotary_dim=rotary_dim, offsets=infos["offsets"],
        attn_output_gate=attn_output_gate, gated_qkv_layout=gated_qkv_layout, k_scale=infos["k_scale"],
        v_scale=infos["v_scale"], kv_cache_layout=kv_cache_layout, return_kv=return_kv, target=target,
        warp_size=warp_size,
    ), target


_PLAN_CACHE: dict = {}
_PLAN_CACHE_MAX = 512


def _meta(t):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def _cached_plan(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
                 num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                 gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv):
    """``_plan`` memoised on tensor metadata and configuration (the plan depends on nothing else); the checks
    that depend on data pointers (overlaps) run on every call."""
    key = (tuple(_meta(t) for t in (qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache,
                                     slot_mapping, offsets, k_scale, v_scale)),
           num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, attn_output_gate,
           gated_qkv_layout, kv_cache_layout, return_kv)
    hit = _PLAN_CACHE.get(key)
    if hit is None:
        hit = _plan(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
                    num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                    gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, with_ptr=False)
        spans = tuple(_info(t, n, False).byte_extent() for t, n in ((qkv, "qkv"), (key_cache, "key_cache"),
                                                                       (value_cache, "value_cache")))
        if len(_PLAN_CACHE) >= _PLAN_CACHE_MAX:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = hit = (hit, spans)
    plan_and_target, spans = hit
    # overlap check: the exact one (spec.check_overlaps) only when the byte ranges of qkv and the caches meet
    (q0, q1), (k0, k1), (v0, v1) = ((t.data_ptr() + lo, t.data_ptr() + hi)
                                    for t, (lo, hi) in zip((qkv, key_cache, value_cache), spans, strict=True))
    if (k0 < v1 and v0 < k1) or (q0 < k1 and k0 < q1) or (q0 < v1 and v0 < q1):
        check_overlaps(*(_info(t, n, True) for t, n in ((qkv, "qkv"), (key_cache, "key_cache"),
                                                         (value_cache, "value_cache"))))
    return plan_and_target, spans


_VALID_CONFIGS: set = set()


def _check_config(**config):
    """spec.check_config, skipped for a configuration (values and their types) that passed before."""
    key = tuple((type(v), v) for v in config.values())
    try:
        if key in _VALID_CONFIGS:
            return
    except TypeError:  # unhashable value: check_config names the argument
        key = None
    check_config(**config)
    if key is not None and len(_VALID_CONFIGS) < 1024:
        _VALID_CONFIGS.add(key)


_COMPILED: dict = {}  # (plan, device, Triton's specialisation bits) -> CompiledKernel


def _specialisation_bits(args):
    """What Triton specialises a compiled kernel on, for the runtime arguments: 16-byte alignment of each
    pointer; for each int, whether it is 1, a multiple of 16, or needs 64 bits."""
    return tuple(a.data_ptr() % 16 == 0 if isinstance(a, torch.Tensor)
                 else (a == 1, a % 16 == 0, -(2**31) <= a < 2**31) if type(a) is int
                 else a is None for a in args)


def _launch_compiled(plan, args, device: int):
    """Launch on GPU ``device`` (the current device). The first launch of a specialisation goes through Triton's
    JITFunction (compiles, caches); later ones call the compiled kernel directly, skipping the per-call binding of
    ~80 arguments that dominates the eager host time. Returns (compiled kernel, constexpr values, whether every
    pointer argument was 16-byte aligned)."""
    bits = _specialisation_bits(args)
    key = (id(plan), device, bits)
    compiled = _COMPILED.get(key)
    aligned = all(b for a, b in zip(args, bits, strict=True) if isinstance(a, torch.Tensor))
    if compiled is None:
        kernel = get_kernel(interpret=False)
        compiled = kernel[plan.grid](*args, **plan.constexprs, num_warps=plan.num_warps)
        if len(_COMPILED) > 4096:
            _COMPILED.clear()
        _COMPILED[key] = (compiled, [plan.constexprs[n] for n in kernel.arg_names[len(args):]], plan)
        return compiled, _COMPILED[key][1], aligned
    compiled, constexpr_values, _ = compiled
    bound = (*args, *constexpr_values)
    stream = torch._C._cuda_getCurrentRawStream(device)  # what Triton's own launcher asks torch for
    grid = (plan.grid[0], 1, 1)
    compiled.run(grid[0], 1, 1, stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(grid, stream, *bound), knobs.runtime.launch_enter_hook,
                 knobs.runtime.launch_exit_hook, *bound)
    return compiled, constexpr_values, aligned


_FAST: dict = {}  # eager fast path: (tensor metadata, configuration, their types) -> _FastLaunch
_FAST_MAX = 512


def _fast_key(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, offsets, k_scale,
              v_scale, num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
              attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv):
    """Everything a launch plan depends on, cheap to build: the metadata of every tensor, the configuration and
    the types of its values (``True`` and ``1`` hash alike; validation tells them apart). Raises AttributeError
    or TypeError for arguments that are not tensors or not hashable (the checked path then names them)."""
    return (_meta(qkv), _meta(q_weight), _meta(k_weight), _meta(cos), _meta(sin), _meta(positions),
            _meta(key_cache), _meta(value_cache), _meta(slot_mapping), _meta(offsets), _meta(k_scale),
            _meta(v_scale), num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
            attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv, type(num_q_heads), type(num_kv_heads),
            type(head_dim), type(eps), type(norm_weight_offset), type(is_neox), type(rotary_dim),
            type(attn_output_gate), type(gated_qkv_layout), type(kv_cache_layout), type(return_kv))


def _hooked(hook) -> bool:
    """Whether a Triton launch hook is set: a function, or Triton's hook chain holding functions."""
    return hook is not None and (type(hook) is not HookChain or bool(hook.calls))


def _ptr(t):
    return None if t is None else t.data_ptr()


class _FastLaunch:
    """A validated call signature on CUDA, ready to launch: the plan's outputs, scalars and constexprs, and the
    compiled kernel for 16-byte-aligned pointers. Pointers go to Triton's launcher as ints: every tensor was
    checked to be on this device when the plan was made, so the launcher's per-pointer driver query is skipped.
    Returns None (the caller takes the checked path) when anything the entry does not cover comes up: another
    current device, a misaligned pointer, launch hooks, or qkv/cache byte ranges that meet at a pointer difference
    not yet checked exactly."""

    __slots__ = ("spans", "ok_pairs", "outs", "device", "index", "scalars", "tail", "grid0", "run",
                 "function", "packed_metadata", "native")

    def __init__(self, plan, device, compiled, constexpr_values, spans):
        self.spans = spans
        self.ok_pairs = frozenset()
        self.native = None  # (native module, generation, index) when the native path also has this signature
        self.outs = tuple(None if plan.out_shapes[n] is None else plan.out_shapes[n][0]
                          for n in ("q", "gate", "k", "v"))
        self.device = device
        self.index = device.index
        self.scalars = tuple(plan.scalars[n] for n in SCALAR_NAMES)
        self.tail = tuple(constexpr_values)
        self.grid0 = plan.grid[0]
        self.run, self.function, self.packed_metadata = compiled.run, compiled.function, compiled.packed_metadata

    def __call__(self, qkv, q_weight, k_weight, cos, sin, positions, kc, vc, slot_mapping, offsets, k_scale,
                 v_scale):
        if torch._C._cuda_getDevice() != self.index or _hooked(knobs.runtime.launch_enter_hook) \
                or _hooked(knobs.runtime.launch_exit_hook):
            return None
        pq, pk, pv = qkv.data_ptr(), kc.data_ptr(), vc.data_ptr()
        (q0, q1), (k0, k1), (v0, v1) = self.spans
        if ((pk + k0 < pv + v1 and pv + v0 < pk + k1) or (pq + q0 < pk + k1 and pk + k0 < pq + q1)
                or (pq + q0 < pv + v1 and pv + v0 < pq + q1)) \
                and _meeting_pairs(self.spans, pq, pk, pv) - self.ok_pairs:
            return None
        ptrs = (pq, _ptr(q_weight), _ptr(k_weight), cos.data_ptr(), sin.data_ptr(), positions.data_ptr(),
                _ptr(offsets), slot_mapping.data_ptr(), _ptr(k_scale), _ptr(v_scale), None, pk, pv)
        m = 0
        for p in ptrs:
            if p is not None:
                m |= p
        if m & 15:
            return None
        dtype, device = qkv.dtype, self.device
        q_shape, gate_shape, k_shape, v_shape = self.outs
        q = torch.empty(q_shape, dtype=dtype, device=device)
        gate = None if gate_shape is None else torch.empty(gate_shape, dtype=dtype, device=device)
        k = None if k_shape is None else torch.empty(k_shape, dtype=dtype, device=device)
        v = None if v_shape is None else torch.empty(v_shape, dtype=dtype, device=device)
        if self.grid0:
            self.run(self.grid0, 1, 1, torch._C._cuda_getCurrentRawStream(self.index), self.function,
                     self.packed_metadata, None, None, None, *ptrs, *self.scalars, q.data_ptr(), _ptr(gate),
                     _ptr(k), _ptr(v), pk, pv, *self.tail)
        return FusedQKVOutput(q, gate, k, v)


def _register_fast(key, plan, tensors, cfg, compiled, constexpr_values, spans):
    """Record a validated, launched call signature for the eager fast paths: the Python one (``_FastLaunch``) and,
    where it is available, the native one (``native.cpp``). ``tensors``: the 12 tensors (or None) in ``_FastLaunch``
    argument order; ``cfg``: the configuration values as the public function passes them to the native path."""
    qkv, kc, vc = tensors[0], tensors[6], tensors[7]
    entry = _FAST.get(key)
    if entry is None:
        if len(_FAST) >= _FAST_MAX:
            _FAST.clear()
        entry = _FAST[key] = _FastLaunch(plan, qkv.device, compiled, constexpr_values, spans)
        module = _native.load()
        if module is not None:
            module.set_result_type(FusedQKVOutput)  # its calls return the public result type
            entry.native = _native_register(module, plan, tensors, cfg, compiled, constexpr_values, spans)
    # the byte ranges of these pairs meet, and the exact check (in _cached_plan) found no shared element: whether
    # two arrays share an element depends on their pointers' difference only, so that difference is now known good
    if len(entry.ok_pairs) < 64:
        pairs = _meeting_pairs(spans, qkv.data_ptr(), kc.data_ptr(), vc.data_ptr())
        entry.ok_pairs |= pairs
        if entry.native is not None:
            for name, diff in pairs:
                entry.native[0].add_ok_pair(entry.native[1], entry.native[2], _PAIR_CODES[name], diff)


_PAIR_CODES = {"kv": 0, "qk": 1, "qv": 2}
# kernel pointer arguments (spec.INPUT_NAMES order) -> index among the 12 tensors of a native call
_NATIVE_TENSOR_INDEX = {"qkv": 0, "q_weight": 1, "k_weight": 2, "cos": 3, "sin": 4, "positions": 5, "offsets": 9,
                        "slot_mapping": 8, "k_scale": 10, "v_scale": 11, "layer": None, "key_cache_in": 6,
                        "value_cache_in": 7}
_NATIVE_SCALAR_KINDS = {"i32": 2, "i64": 3, "fp32": 4}


def _native_params(compiled, plan, constexpr_values):
    """The compiled kernel's parameters in order, as (kind, value) for ``native.cpp``: kind 0 = pointer of one of
    the 12 call tensors, 1 = pointer of output q/gate/k/v, 2/3/4 = i32/i64/fp32 value, 5 = null pointer. Mirrors
    Triton's launcher: parameters the compiled signature made constexpr are not passed, and two scratch pointers
    follow. None when the kernel needs anything the native launcher does not do (scratch memory, PDL, clusters)."""
    src, meta = getattr(compiled, "src", None), getattr(compiled, "metadata", None)
    if src is None or meta is None or getattr(meta, "global_scratch_size", 1) or \
            getattr(meta, "profile_scratch_size", 1) or getattr(meta, "launch_pdl", True) or \
            getattr(meta, "launch_cooperative_grid", True) or getattr(meta, "num_ctas", 2) != 1:
        return None
    sources = ([("tensor", _NATIVE_TENSOR_INDEX[n]) for n in INPUT_NAMES]
               + [("scalar", plan.scalars[n]) for n in SCALAR_NAMES]
               + [("output", i) if plan.out_shapes[n] is not None else ("tensor", None)
                  for i, n in enumerate(("q", "gate", "k", "v"))]
               + [("tensor", 6), ("tensor", 7)] + [("constexpr", v) for v in constexpr_values])
    types = list(src.signature.values())
    if len(types) != len(sources):
        return None
    params = []
    for (what, value), ty in zip(sources, types, strict=True):
        if ty == "constexpr":
            continue
        if ty.startswith("*") and what in ("tensor", "output") and value is not None:
            params.append((0 if what == "tensor" else 1, value))
        elif what == "scalar" and ty in _NATIVE_SCALAR_KINDS:
            params.append((_NATIVE_SCALAR_KINDS[ty], value))
        else:
            return None
    return tuple(params) + ((5, 0), (5, 0))  # global and profile scratch: none


def _native_register(module, plan, tensors, cfg, compiled, constexpr_values, spans):
    """Record this call signature in the native module; returns (module, generation, index) or None."""
    params = _native_params(compiled, plan, constexpr_values)
    if params is None:
        return None
    (q0, q1), (k0, k1), (v0, v1) = spans
    outs = tuple(None if plan.out_shapes[n] is None else tuple(plan.out_shapes[n][0]) for n in ("q", "gate", "k", "v"))
    generation, index = module.add(cfg, tuple(tensors), (q0, q1, k0, k1, v0, v1), outs, int(compiled.function),
                                   plan.grid[0], 32 * compiled.metadata.num_warps, compiled.metadata.shared, params)
    return module, generation, index


def _meeting_pairs(spans, pq, pk, pv) -> frozenset:
    """The pairs among qkv, key cache and value cache whose byte ranges meet, as (pair, pointer difference)."""
    (q0, q1), (k0, k1), (v0, v1) = spans
    meet = set()
    if pk + k0 < pv + v1 and pv + v0 < pk + k1:
        meet.add(("kv", pv - pk))
    if pq + q0 < pk + k1 and pk + k0 < pq + q1:
        meet.add(("qk", pk - pq))
    if pq + q0 < pv + v1 and pv + v0 < pq + q1:
        meet.add(("qv", pv - pq))
    return frozenset(meet)


def clear_caches() -> None:
    """Forget every cached plan, configuration check, compiled-kernel handle and fast-path entry (tools that
    change tile choices between calls, e.g. ``fused-qkv bench --sweep``)."""
    _PLAN_CACHE.clear()
    _VALID_CONFIGS.clear()
    _COMPILED.clear()
    _FAST.clear()
    module = _native.loaded()
    if module is not None:
        module.clear()


def _select_layer(key_cache, value_cache, layer):
    check_layer(tuple(key_cache.shape), layer)
    if layer is None:
        return key_cache, value_cache
    if tuple(value_cache.shape) != tuple(key_cache.shape):
        raise ValueError(f"key_cache and value_cache must have the same shape, got {tuple(key_cache.shape)} "
                         f"and {tuple(value_cache.shape)}")
    return key_cache[layer], value_cache[layer]


def _outputs(plan, qkv):
    def alloc(name):
        spec = plan.out_shapes[name]
        return torch.empty(spec[0], dtype=qkv.dtype, device=qkv.device) if spec is not None else None

    return {n: alloc(n) for n in ("q", "gate", "k", "v")}


def _with_placeholders(outs, qkv):
    # a custom op returns tensors, never None: absent outputs become distinct empty tensors
    return tuple(outs[n] if outs[n] is not None else qkv.new_empty(0) for n in ("q", "gate", "k", "v"))


@torch.library.custom_op(OP_NAME, mutates_args=("key_cache", "value_cache"))
def _fused_op(
    qkv: torch.Tensor, q_weight: Optional[torch.Tensor], k_weight: Optional[torch.Tensor], cos: torch.Tensor,
    sin: torch.Tensor, positions: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    slot_mapping: torch.Tensor, num_q_heads: int, num_kv_heads: int, head_dim: int, eps: float,
    norm_weight_offset: float, is_neox: bool, rotary_dim: Optional[int], offsets: Optional[torch.Tensor],
    attn_output_gate: bool, gated_qkv_layout: str, k_scale: Optional[torch.Tensor],
    v_scale: Optional[torch.Tensor], kv_cache_layout: str, return_kv: bool, layer: Optional[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
                   num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                   gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer)


def _launch(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
            num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
            gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer, placeholders=True, fast_key=None):
    """The op's implementation: plan (cached), allocate, launch. Called by the registered op, and directly by
    the public function for eager calls on plain tensors (the dispatcher's Python custom-op path costs far
    more host time than the launch itself). ``fast_key``: register this call signature for the eager fast path
    (``_FastLaunch``) once it has launched with aligned pointers."""
    kc, vc = _select_layer(key_cache, value_cache, layer)
    (plan, target), spans = _cached_plan(
        qkv, q_weight, k_weight, cos, sin, positions, kc, vc, slot_mapping, num_q_heads, num_kv_heads, head_dim, eps,
        norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate, gated_qkv_layout, k_scale, v_scale,
        kv_cache_layout, return_kv)
    outs = _outputs(plan, qkv)
    if plan.grid[0] > 0:
        inputs = dict(zip(INPUT_NAMES, (qkv, q_weight, k_weight, cos, sin, positions, offsets, slot_mapping,
                                        k_scale, v_scale, None, kc, vc), strict=True))
        args = ordered_args(inputs, plan.scalars, dict(outs, key_cache=kc, value_cache=vc))
        if target == "interpreter":
            launch_interpreted(plan.grid, args, plan.constexprs)
        elif qkv.device.index != torch.cuda.current_device():
            with torch.cuda.device(qkv.device):
                _launch_compiled(plan, args, qkv.device.index)
        else:
            compiled, constexpr_values, aligned = _launch_compiled(plan, args, qkv.device.index)
            if fast_key is not None and aligned and target == "cuda":
                cfg = (num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
                       attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv)
                _register_fast(fast_key, plan, (qkv, q_weight, k_weight, cos, sin, positions, kc, vc, slot_mapping,
                                                offsets, k_scale, v_scale), cfg, compiled, constexpr_values, spans)
    if not placeholders:  # the eager fast path: absent outputs stay None
        return outs["q"], outs["gate"], outs["k"], outs["v"]
    return _with_placeholders(outs, qkv)


@_fused_op.register_fake
def _fused_op_fake(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
                   num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                   gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer):
    kc, vc = _select_layer(key_cache, value_cache, layer)
    plan, _ = _plan(qkv, q_weight, k_weight, cos, sin, positions, kc, vc, slot_mapping, num_q_heads, num_kv_heads,
                    head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                    gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, with_ptr=False)
    outs = _outputs(plan, qkv)
    return _with_placeholders(outs, qkv)


_warned_unchecked = []


def _check_indices_on_host(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping,
                           num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets,
                           attn_output_gate, gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer):
    """``check_indices=True``: validate the call, copy the index tensors to the host and check them (a sync)."""
    if torch.compiler.is_compiling() or (qkv.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        if not _warned_unchecked:
            _warned_unchecked.append(True)
            warnings.warn("fused_qkv: check_indices is skipped under torch.compile tracing and CUDA-graph capture "
                          "(it synchronises); run the call eagerly to check its indices", RuntimeWarning,
                          stacklevel=3)
        return
    kc, vc = _select_layer(key_cache, value_cache, layer)
    plan, _ = _plan(qkv, q_weight, k_weight, cos, sin, positions, kc, vc, slot_mapping, num_q_heads, num_kv_heads,
                    head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                    gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, with_ptr=False)
    host = lambda t: None if t is None else t.detach().cpu().numpy()  # noqa: E731
    _indices.check_indices(host(positions), host(offsets), host(slot_mapping),
                           num_table_rows=plan.scalars["num_table_rows"],
                           num_cache_slots=plan.scalars["num_cache_slots"])


def _plain_eager(*tensors) -> bool:
    """True when nothing observes the call but eager execution: not traced by torch.compile, no tensor
    subclass (fake, functional, ...), no dispatch or function mode, no autograd on the inputs."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return False
    return all(type(t) is torch.Tensor and not t.requires_grad for t in tensors)


def fused_qkv_split_qk_norm_rope_cache(
    qkv: torch.Tensor,
    q_weight: Optional[torch.Tensor],
    k_weight: Optional[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float = 1e-6,
    norm_weight_offset: float = 0.0,
    is_neox: bool = True,
    rotary_dim: Optional[int] = None,
    offsets: Optional[torch.Tensor] = None,
    attn_output_gate: bool = False,
    gated_qkv_layout: str = "interleaved",
    k_scale: Optional[torch.Tensor] = None,
    v_scale: Optional[torch.Tensor] = None,
    kv_cache_layout: str = "NHD",
    return_kv: bool = True,
    layer: Optional[int] = None,
    check_indices: Optional[bool] = None,
) -> FusedQKVOutput:
    """Split a packed QKV projection, RMS-normalise Q and K per head, apply RoPE, write K/V to a paged cache.

    One kernel launch; no host synchronisation (CUDA-graph capturable, ``torch.compile(fullgraph=True)``
    traces it as one opaque op). CPU tensors run the same Triton kernel under Triton's interpreter.

    Shapes (``T`` tokens, ``QH = num_q_heads``, ``KVH = num_kv_heads``, ``D = head_dim``, ``R = rotary_dim``):

    Args:
        qkv: ``[T, (QH * (2 if attn_output_gate else 1) + 2 * KVH) * D]``, float16/bfloat16/float32;
            rows may be strided, the last dim must be contiguous. Column layout: Q heads (with gates, see
            ``gated_qkv_layout``), then K heads, then V heads.
        q_weight: ``[D]`` RMSNorm weight for Q (float16/bfloat16/float32), or ``None`` for no Q norm.
        k_weight: ``[D]`` RMSNorm weight for K, or ``None`` for no K norm.
        cos, sin: ``[max_positions, R/2]`` (half tables) or ``[max_positions, R]`` (full tables as Hugging
            Face builds them: NeoX halves repeated, GPT-J entries repeated twice; only one copy is read),
            float32/bfloat16/float16, any strides (``cos_sin_cache[:, :R//2]`` views work as they are).
        positions: ``[T]`` int32/int64 row of the tables for each token (plus ``offsets``); values
            outside ``[0, max_positions)`` are clamped to the nearest row.
        key_cache, value_cache: paged caches, mutated in place. ``kv_cache_layout="NHD"``:
            ``[num_blocks, block_size, KVH, D]`` (vLLM); ``"HND"``: ``[num_blocks, KVH, block_size, D]``; any
            strides with a contiguous last dim; optionally a leading layer axis ``[L, ...]`` selected by
            ``layer``. dtype: the input dtype, or float8_e4m3fn/float8_e5m2 (CUDA) /
            float8_e4m3fnuz (ROCm gfx942); fp8 values saturate to the finite range.
        slot_mapping: ``[S]`` int32/int64 with ``S <= T``; token ``t`` is written to slot
            ``slot_mapping[t] = block * block_size + offset``. Tokens with ``t >= S``, a negative slot or a
            slot ``>= num_blocks * block_size`` get no cache write.
        num_q_heads, num_kv_heads, head_dim: head counts (``QH % KVH == 0``) and ``16 <= D <= 512``.
        eps: RMSNorm epsilon. The norm is ``x * rsqrt(mean(x^2) + eps) * (weight + norm_weight_offset)``
            in float32.
        norm_weight_offset: ``0.0`` plain gamma (Qwen3, Llama); ``1.0`` zero-centred gamma (Gemma3, Qwen3-Next).
        is_neox: NeoX rotation (channel ``i`` pairs with ``i + R/2``) if True, GPT-J (``2i`` with ``2i+1``) if False.
        rotary_dim: ``R``, even, ``<= D``; the first ``R`` channels rotate, the rest pass through. Default ``D``.
        offsets: optional ``[T]`` int32/int64 added to ``positions``.
        attn_output_gate: the Q block holds a gate per Q head (Qwen3-Next).
        gated_qkv_layout: ``"interleaved"`` (per head ``[q_h | gate_h]``) or ``"blocked"`` (all Q then all gates).
        k_scale, v_scale: optional float32 tensors of 1 or KVH elements on the device; the cache stores
            ``k / k_scale`` and ``v / v_scale``.
        return_kv: return k and v (set False to skip writing them when only the cache needs them).
        layer: index into a leading layer axis of the caches (Python int), or ``None`` for 4-D caches.
        check_indices: development aid. ``True`` copies ``positions``, ``offsets`` and ``slot_mapping`` to the host
            and raises ``ValueError`` naming the first position (plus offset) outside the table and the first slot
            ``>= num_blocks * block_size`` or negative other than ``-1`` (the padding slot), before anything is
            launched. It synchronises, so it is skipped, with a one-time warning, under ``torch.compile`` tracing
            and CUDA-graph capture. ``None`` (default): on if ``FUSED_QKV_CHECK_INDICES=1`` is set, else off.

    Returns:
        :class:`FusedQKVOutput` ``(q, gate, k, v)`` as described there.

    Raises:
        TypeError / ValueError naming the argument, for any invalid shape, dtype, layout, device or value.
    """
    checking = _indices.index_checks_requested(check_indices)
    native = None if checking else _native.loaded()
    if native is not None and layer is None and not torch.compiler.is_compiling() and \
            not _hooked(knobs.runtime.launch_enter_hook) and not _hooked(knobs.runtime.launch_exit_hook):
        # native eager path (native.cpp): a recorded call signature allocates and launches from C++; it checks for
        # dispatch and torch-function modes and the tensors (plain, metadata, device, alignment, overlaps), and
        # returns None for anything it does not cover
        out = native.call((num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
                           attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv), qkv, q_weight, k_weight,
                          cos, sin, positions, key_cache, value_cache, slot_mapping, offsets, k_scale, v_scale)
        if out is not None:
            return out  # a FusedQKVOutput
    fast_key = None
    if layer is None and not checking and _plain_eager(qkv, key_cache, value_cache):
        # eager fast path: a call signature that was validated and launched before goes straight to the launcher
        try:
            fast_key = _fast_key(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping,
                                 offsets, k_scale, v_scale, num_q_heads, num_kv_heads, head_dim, eps,
                                 norm_weight_offset, is_neox, rotary_dim, attn_output_gate, gated_qkv_layout,
                                 kv_cache_layout, return_kv)
            entry = _FAST.get(fast_key)
        except (AttributeError, TypeError):  # not tensors, or unhashable values: the checks below name them
            fast_key = entry = None
        if entry is not None:
            out = entry(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, offsets,
                        k_scale, v_scale)
            if out is not None:
                return out
    _check_config(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, eps=eps,
                  norm_weight_offset=norm_weight_offset, is_neox=is_neox, rotary_dim=rotary_dim,
                  attn_output_gate=attn_output_gate, gated_qkv_layout=gated_qkv_layout,
                  kv_cache_layout=kv_cache_layout, return_kv=return_kv)
    for name, t in (("qkv", qkv), ("q_weight", q_weight), ("k_weight", k_weight), ("cos", cos), ("sin", sin),
                    ("positions", positions), ("key_cache", key_cache), ("value_cache", value_cache),
                    ("slot_mapping", slot_mapping), ("offsets", offsets), ("k_scale", k_scale),
                    ("v_scale", v_scale)):
        if not (t is None or isinstance(t, torch.Tensor)) or (t is None and name in _REQUIRED):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
        raise TypeError(f"layer must be None or a Python int, got {type(layer).__name__}")
    args = (qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
            num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
            gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer)
    if checking:
        _check_indices_on_host(*args)
    if _plain_eager(qkv, key_cache, value_cache):
        q, gate, k, v = _launch(*args, placeholders=False, fast_key=fast_key)
    else:
        q, gate, k, v = torch.ops.fused_qkv.split_qk_norm_rope_cache(*args)
    return FusedQKVOutput(q, gate if attn_output_gate else None, k if return_kv else None,
                          v if return_kv else None)
