"""PyTorch binding of the fused kernel, registered as the mutating op ``fused_qkv::split_qk_norm_rope_cache``.

The public function routes a call one of three ways: a recorded call signature goes to the eager fast paths (the
native launcher, then ``fast_path``); other plain eager calls are validated, planned and launched here directly;
calls that something observes (``torch.compile``, tensor subclasses, dispatch modes, autograd) go through the
registered custom op, whose fake implementation makes the same plan.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Sequence

import torch
from fused_qkv.core import (
    ARRAY_NAMES,
    FAST_PATH_ARRAYS,
    INPUT_NAMES,
    REQUIRED_ARRAYS,
    ArrayInfo,
    OpConfig,
    check_layer,
    config_from_values,
    ordered_args,
    plan_for,
    rocm_target,
)
from fused_qkv.core import indices as _indices
from fused_qkv.core.config import mrope_section_tuple
from fused_qkv.core.launch import launch_interpreted
from fused_qkv.core.plan import ALLOCATED_OUTPUTS, check_overlaps, check_scale_cache_overlaps
from fused_qkv.torch_api import fast_path
from fused_qkv.torch_api import native as _native

OP_NAME = "fused_qkv::split_qk_norm_rope_cache"
FP8_OP_NAME = "fused_qkv::split_qk_norm_rope_cache_fp8"


class FusedQKVOutput(NamedTuple):
    """Outputs of :func:`fused_qkv_split_qk_norm_rope_cache`.

    q: ``[T, num_q_heads, head_dim]``, input dtype: RMS-normalised (if ``q_weight``) and rotated.
    gate: ``[T, num_q_heads, head_dim]`` copy of the gate, or ``None`` without ``attn_output_gate``.
    k: ``[T, num_kv_heads, head_dim]`` normalised and rotated, before ``k_scale``; ``None`` if not ``return_kv``.
    v: ``[T, num_kv_heads, head_dim]`` V (after ``v_norm`` if set), before ``v_scale``; ``None`` if not ``return_kv``.

    Every output is contiguous. Eager CUDA calls taken by the native launcher place all outputs in one
    allocation (each at a 256-byte aligned offset, none overlapping another); its memory returns to the
    allocator when the last of them is freed.
    """

    q: torch.Tensor
    gate: Optional[torch.Tensor]
    k: Optional[torch.Tensor]
    v: Optional[torch.Tensor]


class FusedQKVFp8Output(NamedTuple):
    """Outputs of :func:`fused_qkv_split_qk_norm_rope_cache_fp8`: those of :class:`FusedQKVOutput`, with

    q: ``[T, num_q_heads, head_dim]`` in ``q_dtype`` when it is given (``q / q_scale``, or ``q / q_scales``),
    else the input dtype.
    q_scales: ``[T, num_q_heads]`` float32, the dynamic scale of each token and Q head (``q_dtype`` given and
    ``q_scale=None``; dequantise with ``q.float() * q_scales[..., None]``), else ``None``.
    """

    q: torch.Tensor
    gate: Optional[torch.Tensor]
    k: Optional[torch.Tensor]
    v: Optional[torch.Tensor]
    q_scales: Optional[torch.Tensor]


fast_path.set_result_type(FusedQKVOutput, FusedQKVFp8Output)


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
        return rocm_target(torch.cuda.get_device_properties(device).gcnArchName)
    if device.type == "cuda":
        return "cuda"
    raise ValueError(f"qkv must be on a CPU or CUDA/ROCm device, got {device}")


def plan_call(tensors: dict, config: OpConfig, layer=None, *, target: Optional[str] = None, with_ptr=False):
    """(plan, target) for ``tensors`` (``ARRAY_NAMES`` -> tensor or None; 4-D caches, the layer already selected)
    under ``config``; ``target`` overrides the one of qkv's device (ahead-of-time compiles in the tests)."""
    infos = {n: _info(tensors.get(n), n, with_ptr) for n in ARRAY_NAMES}
    for name in REQUIRED_ARRAYS:
        if infos[name] is None:
            raise TypeError(f"{name} must be a torch.Tensor, got None")
    target = target or _target(tensors["qkv"].device)
    return plan_for(infos, config, layer, target), target


_PLAN_CACHE: dict = {}
_PLAN_CACHE_MAX = 512


def _cached_plan(tensors: dict, config: OpConfig):
    """``plan_call`` memoised on tensor metadata and configuration (the plan depends on nothing else), with the byte
    extents of qkv and the caches; the overlap check, which depends on data pointers, runs on every call."""
    key = (tuple(fast_path._meta(tensors.get(n)) for n in ARRAY_NAMES), config)
    hit = _PLAN_CACHE.get(key)
    if hit is None:
        plan, target = plan_call(tensors, config)
        spans = tuple(_info(tensors[n], n, False).byte_extent() for n in ("qkv", "key_cache", "value_cache"))
        if len(_PLAN_CACHE) >= _PLAN_CACHE_MAX:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = hit = (plan, target, spans)
    plan, target, spans = hit
    qkv, kc, vc = tensors["qkv"], tensors["key_cache"], tensors["value_cache"]
    if fast_path.meeting_pairs(spans, qkv.data_ptr(), kc.data_ptr(), vc.data_ptr()):  # the exact check, then
        check_overlaps(*(_info(t, n, True) for t, n in ((qkv, "qkv"), (kc, "key_cache"), (vc, "value_cache"))))
    if tensors.get("k_scale_cache") is not None or tensors.get("v_scale_cache") is not None:
        check_scale_cache_overlaps({n: _info(tensors.get(n), n, True) for n in
                                    ("qkv", "key_cache", "value_cache", "k_scale_cache", "v_scale_cache")})
    return plan, target, spans


def clear_caches() -> None:
    """Forget every cached plan, compiled-kernel handle and recorded signature (tools that change tile choices
    between calls, e.g. ``fused-qkv bench --sweep``)."""
    _PLAN_CACHE.clear()
    fast_path.clear()


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
        return torch.empty(spec[0], dtype=getattr(torch, spec[1]), device=qkv.device) if spec is not None else None

    return {n: alloc(n) for n in ALLOCATED_OUTPUTS}


_RESULT_FIELDS = ("q", "gate", "k", "v")
_FP8_RESULT_FIELDS = ("q", "gate", "k", "v", "q_scales")


def _with_placeholders(outs, qkv, fields=_RESULT_FIELDS):
    # a custom op returns tensors, never None: absent outputs become distinct empty tensors
    return tuple(outs[n] if outs[n] is not None else qkv.new_empty(0) for n in fields)


def _layer_selected(tensors: dict, layer) -> dict:
    kc, vc = _select_layer(tensors["key_cache"], tensors["value_cache"], layer)
    selected = dict(tensors, key_cache=kc, value_cache=vc)
    for name, cname in (("k_scale_cache", "key_cache"), ("v_scale_cache", "value_cache")):
        sc = tensors.get(name)
        if sc is not None and layer is not None:
            if not isinstance(sc, torch.Tensor) or sc.dim() != tensors[cname].dim() - 1:
                raise ValueError(f"{name} must have the shape of {cname} without its last (head_dim) axis, "
                                 f"{tuple(tensors[cname].shape[:-1])}, got "
                                 f"{tuple(sc.shape) if isinstance(sc, torch.Tensor) else type(sc).__name__}")
            selected[name] = sc[layer]
    return selected


def _launch(tensors: dict, config: OpConfig, layer, *, placeholders=True, record=None, fields=_RESULT_FIELDS):
    """The op's implementation: plan (cached), allocate, launch. Called by the registered op, and directly by the
    public function for plain eager calls (the dispatcher's Python custom-op path costs far more host time than
    the launch itself). ``record``: ``(key, values)`` to record this call signature for the fast paths once it has
    launched with aligned pointers (the fp8 entry point's, ``fields`` its result fields: for the native path)."""
    tensors = _layer_selected(tensors, layer)
    plan, target, spans = _cached_plan(tensors, config)
    qkv = tensors["qkv"]
    outs = _outputs(plan, qkv)
    if plan.grid[0] > 0:
        inputs = {n: tensors.get(n) for n in INPUT_NAMES}
        ksc, vsc = tensors.get("k_scale_cache"), tensors.get("v_scale_cache")
        inputs.update(layer=None, key_cache_in=tensors["key_cache"], value_cache_in=tensors["value_cache"],
                      k_scale_cache_in=ksc, v_scale_cache_in=vsc)
        args = ordered_args(inputs, plan.scalars,
                            dict(outs, key_cache=tensors["key_cache"], value_cache=tensors["value_cache"],
                                 k_scale_cache=ksc, v_scale_cache=vsc))
        if target == "interpreter":
            launch_interpreted(plan.grid, args, plan.constexprs)
        elif qkv.device.index != torch.cuda.current_device():
            with torch.cuda.device(qkv.device):
                fast_path.launch_compiled(plan, args, qkv.device.index)
        else:
            compiled, constexpr_values, aligned = fast_path.launch_compiled(plan, args, qkv.device.index)
            if record is not None and aligned and target == "cuda":
                names = ARRAY_NAMES if fields == _FP8_RESULT_FIELDS else FAST_PATH_ARRAYS
                fast_path.register(record[0], plan, tuple(tensors.get(n) for n in names), record[1], compiled,
                                   constexpr_values, spans)
    if not placeholders:  # the eager paths: absent outputs stay None
        return tuple(outs[n] for n in fields)
    return _with_placeholders(outs, qkv, fields)


@torch.library.custom_op(OP_NAME, mutates_args=("key_cache", "value_cache"))
def _fused_op(
    qkv: torch.Tensor, q_weight: Optional[torch.Tensor], k_weight: Optional[torch.Tensor],
    cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], positions: Optional[torch.Tensor],
    key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor, num_q_heads: int,
    num_kv_heads: int, head_dim: int, eps: float, norm_weight_offset: float, is_neox: bool,
    rotary_dim: Optional[int], offsets: Optional[torch.Tensor], attn_output_gate: bool, gated_qkv_layout: str,
    k_scale: Optional[torch.Tensor],
    v_scale: Optional[torch.Tensor], kv_cache_layout: str, return_kv: bool, layer: Optional[int],
    mrope_section: Optional[list[int]] = None, mrope_interleaved: bool = False, v_norm: bool = False,
    k_eq_v: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tensors = dict(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, positions=positions,
                   key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping, offsets=offsets,
                   k_scale=k_scale, v_scale=v_scale)
    config = config_from_values((num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
                                 attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv,
                                 None if mrope_section is None else tuple(mrope_section), mrope_interleaved,
                                 v_norm, k_eq_v))
    return _launch(tensors, config, layer)


@_fused_op.register_fake
def _fused_op_fake(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, num_q_heads,
                   num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets, attn_output_gate,
                   gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer, mrope_section=None,
                   mrope_interleaved=False, v_norm=False, k_eq_v=False):
    tensors = dict(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, positions=positions,
                   key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping, offsets=offsets,
                   k_scale=k_scale, v_scale=v_scale)
    config = config_from_values((num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
                                 attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv,
                                 None if mrope_section is None else tuple(mrope_section), mrope_interleaved,
                                 v_norm, k_eq_v))
    plan, _ = plan_call(_layer_selected(tensors, layer), config)
    return _with_placeholders(_outputs(plan, qkv), qkv)


@torch.library.custom_op(FP8_OP_NAME, mutates_args=("key_cache", "value_cache", "k_scale_cache", "v_scale_cache"))
def _fused_fp8_op(
    qkv: torch.Tensor, q_weight: Optional[torch.Tensor], k_weight: Optional[torch.Tensor],
    cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], positions: Optional[torch.Tensor],
    key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor, num_q_heads: int,
    num_kv_heads: int, head_dim: int, eps: float, norm_weight_offset: float, is_neox: bool,
    rotary_dim: Optional[int], offsets: Optional[torch.Tensor], attn_output_gate: bool, gated_qkv_layout: str,
    k_scale: Optional[torch.Tensor], v_scale: Optional[torch.Tensor], kv_cache_layout: str, return_kv: bool,
    layer: Optional[int], mrope_section: Optional[list[int]], mrope_interleaved: bool, v_norm: bool, k_eq_v: bool,
    q_dtype: Optional[str], q_scale: Optional[torch.Tensor], k_scale_cache: Optional[torch.Tensor],
    v_scale_cache: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tensors, config = _fp8_op_arguments(locals())
    return _launch(tensors, config, layer, fields=_FP8_RESULT_FIELDS)


@_fused_fp8_op.register_fake
def _fused_fp8_op_fake(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping,
                       num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, offsets,
                       attn_output_gate, gated_qkv_layout, k_scale, v_scale, kv_cache_layout, return_kv, layer,
                       mrope_section, mrope_interleaved, v_norm, k_eq_v, q_dtype, q_scale, k_scale_cache,
                       v_scale_cache):
    tensors, config = _fp8_op_arguments(locals())
    plan, _ = plan_call(_layer_selected(tensors, layer), config)
    return _with_placeholders(_outputs(plan, qkv), qkv, _FP8_RESULT_FIELDS)


def _fp8_op_arguments(a: dict):
    """(tensors, config) from the fp8 op's arguments (its schema's names)."""
    tensors = {n: a[n] for n in ARRAY_NAMES}
    section = a["mrope_section"]
    config = config_from_values((a["num_q_heads"], a["num_kv_heads"], a["head_dim"], a["eps"],
                                 a["norm_weight_offset"], a["is_neox"], a["rotary_dim"], a["attn_output_gate"],
                                 a["gated_qkv_layout"], a["kv_cache_layout"], a["return_kv"],
                                 None if section is None else tuple(section), a["mrope_interleaved"], a["v_norm"],
                                 a["k_eq_v"], a["q_dtype"]))
    return tensors, config


def _native_call(values: tuple, arrays: tuple):
    """The native launcher's launch of a recorded call signature (``arrays``: the 12 or 15 tensors of the main or
    the fp8 entry point, ``ARRAY_NAMES`` order), or None: not built, traced, launch hooks set, or not covered."""
    native = _native.loaded()
    if native is None or torch.compiler.is_compiling() or fast_path.hooked():
        return None
    # native.cpp checks dispatch and torch-function modes and the tensors (plain, metadata, device, alignment,
    # overlaps) itself, and returns None for anything it does not cover
    return native.call(values, *arrays)


_warned_unchecked = []


def _check_indices_on_host(tensors: dict, config: OpConfig, layer):
    """``check_indices=True``: plan the call (validating it), copy the index tensors to the host and check them."""
    qkv = tensors["qkv"]
    if torch.compiler.is_compiling() or (qkv.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        if not _warned_unchecked:
            _warned_unchecked.append(True)
            warnings.warn("fused_qkv: check_indices is skipped under torch.compile tracing and CUDA-graph capture "
                          "(it synchronises); run the call eagerly to check its indices", RuntimeWarning,
                          stacklevel=4)
        return
    plan, _ = plan_call(_layer_selected(tensors, layer), config)
    host = lambda t: None if t is None else t.detach().cpu().numpy()  # noqa: E731
    positions = tensors["positions"] if tensors["cos"] is not None else None  # NoPE: positions are not read
    _indices.check_indices(host(positions), host(tensors["offsets"]), host(tensors["slot_mapping"]),
                           num_table_rows=plan.scalars["num_table_rows"],
                           num_cache_slots=plan.scalars["num_cache_slots"])


def _checked_call(tensors: dict, values: tuple, layer, checking: bool, record, fp8: bool = False):
    """The checked path: validate the configuration and the arguments, then launch directly (plain eager calls)
    or through the registered op (``fp8``: the fp8 entry point's op; its signatures are recorded for the native
    path only)."""
    # dynamo would trace the memo's dict and fail to guard on its key: under torch.compile, validate directly
    config = OpConfig(*values) if torch.compiler.is_compiling() else config_from_values(values)
    for name in ARRAY_NAMES:
        t = tensors.get(name)
        if not (t is None or isinstance(t, torch.Tensor)) or (t is None and name in REQUIRED_ARRAYS):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
        raise TypeError(f"layer must be None or a Python int, got {type(layer).__name__}")
    if checking:
        _check_indices_on_host(tensors, config, layer)
    if fp8:
        return _fp8_call(tensors, config, layer, record)
    if fast_path.plain_eager(tensors["qkv"], tensors["key_cache"], tensors["value_cache"]):
        q, gate, k, v = _launch(tensors, config, layer, placeholders=False, record=record)
    else:
        t, c = tensors, config
        q, gate, k, v = torch.ops.fused_qkv.split_qk_norm_rope_cache(
            t["qkv"], t["q_weight"], t["k_weight"], t["cos"], t["sin"], t["positions"], t["key_cache"],
            t["value_cache"], t["slot_mapping"], c.num_q_heads, c.num_kv_heads, c.head_dim, c.eps,
            c.norm_weight_offset, c.is_neox, c.rotary_dim, t["offsets"], c.attn_output_gate, c.gated_qkv_layout,
            t["k_scale"], t["v_scale"], c.kv_cache_layout, c.return_kv, layer,
            None if c.mrope_section is None else list(c.mrope_section), c.mrope_interleaved, c.v_norm, c.k_eq_v)
    return FusedQKVOutput(q, gate if config.attn_output_gate else None, k if config.return_kv else None,
                          v if config.return_kv else None)


def _fp8_call(tensors: dict, config: OpConfig, layer, record) -> FusedQKVFp8Output:
    t, c = tensors, config
    if fast_path.plain_eager(*(x for x in (t["qkv"], t["key_cache"], t["value_cache"], t["k_scale_cache"],
                                          t["v_scale_cache"]) if x is not None)):
        q, gate, k, v, q_scales = _launch(tensors, config, layer, placeholders=False, record=record,
                                          fields=_FP8_RESULT_FIELDS)
    else:
        q, gate, k, v, q_scales = torch.ops.fused_qkv.split_qk_norm_rope_cache_fp8(
            t["qkv"], t["q_weight"], t["k_weight"], t["cos"], t["sin"], t["positions"], t["key_cache"],
            t["value_cache"], t["slot_mapping"], c.num_q_heads, c.num_kv_heads, c.head_dim, c.eps,
            c.norm_weight_offset, c.is_neox, c.rotary_dim, t["offsets"], c.attn_output_gate, c.gated_qkv_layout,
            t["k_scale"], t["v_scale"], c.kv_cache_layout, c.return_kv, layer,
            None if c.mrope_section is None else list(c.mrope_section), c.mrope_interleaved, c.v_norm, c.k_eq_v,
            c.q_dtype, t["q_scale"], t["k_scale_cache"], t["v_scale_cache"])
    dynamic = c.q_dtype is not None and t["q_scale"] is None
    return FusedQKVFp8Output(q, gate if c.attn_output_gate else None, k if c.return_kv else None,
                             v if c.return_kv else None, q_scales if dynamic else None)


def fused_qkv_split_qk_norm_rope_cache(
    qkv: torch.Tensor,
    q_weight: Optional[torch.Tensor],
    k_weight: Optional[torch.Tensor],
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
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
    mrope_section: Optional[Sequence[int]] = None,
    mrope_interleaved: bool = False,
    v_norm: bool = False,
    k_eq_v: bool = False,
    layer: Optional[int] = None,
    check_indices: Optional[bool] = None,
) -> FusedQKVOutput:
    """Split a packed QKV projection, RMS-normalise Q and K per head, apply RoPE, write K/V to a paged cache.

    One kernel launch; no host synchronisation (CUDA-graph capturable, ``torch.compile(fullgraph=True)``
    traces it as one opaque op). CPU tensors run the same Triton kernel under Triton's interpreter.

    Shapes (``T`` tokens, ``QH = num_q_heads``, ``KVH = num_kv_heads``, ``D = head_dim``, ``R = rotary_dim``):

    Args:
        qkv: ``[T, (QH * (2 if attn_output_gate else 1) + (1 if k_eq_v else 2) * KVH) * D]``,
            float16/bfloat16/float32; rows may be strided, the last dim must be contiguous. Column layout: Q heads
            (with gates, see ``gated_qkv_layout``), then K heads, then V heads (none with ``k_eq_v``).
        q_weight: ``[D]`` RMSNorm weight for Q (float16/bfloat16/float32), or ``None`` for no Q norm.
        k_weight: ``[D]`` RMSNorm weight for K, or ``None`` for no K norm.
        cos, sin: ``[max_positions, R/2]`` (half tables) or ``[max_positions, R]`` (full tables as Hugging
            Face builds them: NeoX halves repeated, GPT-J entries repeated twice; only one copy is read),
            float32/bfloat16/float16, any strides (``cos_sin_cache[:, :R//2]`` views work as they are). Both
            ``None``: a layer without RoPE (NoPE: SmolLM3's ``no_rope_layers``, Llama 4's NoPE layers); then
            ``rotary_dim``, ``mrope_section`` and ``offsets`` must be None, and ``positions`` (None or ``[T]``) is not
            read.
        positions: ``[T]`` int32/int64 row of the tables for each token (plus ``offsets``); with ``mrope_section``
            ``[3, T]`` (rows: temporal, height, width; any strides). Values outside ``[0, max_positions)`` are
            clamped to the nearest row.
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
        mrope_section: multimodal RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): three non-negative ints ``(t, h, w)``
            with ``t + h + w == R/2``, a list (as Hugging Face configs hold it) or a tuple. Rotary frequency ``i``
            takes its angle from positions row 0, 1 or 2: contiguous sections (``i < t`` -> 0, ``i < t + h`` -> 1,
            else 2), or with ``mrope_interleaved=True`` (Qwen3-VL) ``i % 3 == 1 and i < 3h`` -> 1,
            ``i % 3 == 2 and i < 3w`` -> 2, else 0. ``offsets`` adds to all three rows. Equal rows give the bits
            of plain RoPE with ``[T]`` positions.
        mrope_interleaved: the Qwen3-VL frequency assignment (above); needs ``mrope_section``.
        v_norm: RMS-normalise V per head without a weight, ``v * rsqrt(mean(v^2) + eps)`` in float32 (Gemma 4),
            before it is returned, scaled by ``v_scale`` and written to the cache.
        k_eq_v: ``qkv`` holds no V block; V is the raw K projection (before K's norm and RoPE), then ``v_norm``
            if set (Gemma 4's ``attention_k_eq_v`` global layers). K and V still go to their own caches.
        layer: index into a leading layer axis of the caches (Python int), or ``None`` for 4-D caches.
        check_indices: development aid. ``True`` copies ``positions``, ``offsets`` and ``slot_mapping`` to the host
            and raises ``ValueError`` naming the first position (plus offset) outside the table and the first slot
            ``>= num_blocks * block_size`` or negative other than ``-1`` (the padding slot), before anything is
            launched. It synchronises, so it is skipped, with a one-time warning, under ``torch.compile`` tracing
            and CUDA-graph capture. ``None`` (default): on if ``FUSED_QKV_CHECK_INDICES=1`` was set when
            ``fused_qkv`` was imported, else off.

    Returns:
        :class:`FusedQKVOutput` ``(q, gate, k, v)`` as described there.

    Raises:
        TypeError / ValueError naming the argument, for any invalid shape, dtype, layout, device or value.
    """
    # the configuration in OpConfig's field order: the fast paths' key, validated once per distinct value
    if mrope_section is not None:  # a list, as Hugging Face configs hold it: a tuple of ints keys the fast paths
        mrope_section = mrope_section_tuple(mrope_section)
    values = (num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, attn_output_gate,
              gated_qkv_layout, kv_cache_layout, return_kv, mrope_section, mrope_interleaved, v_norm, k_eq_v)
    checking = _indices.CHECK_BY_DEFAULT if check_indices is None else _indices.index_checks_requested(check_indices)
    record = None
    if layer is None and not checking:
        arrays = (qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, offsets,
                  k_scale, v_scale)
        out = _native_call(values, arrays)
        if out is not None:
            return out
        out, key = fast_path.try_python(values, arrays)
        if out is not None:
            return out
        record = None if key is None else (key, values)
    tensors = dict(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, positions=positions,
                   key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping, offsets=offsets,
                   k_scale=k_scale, v_scale=v_scale)
    return _checked_call(tensors, values, layer, checking, record)


def _q_dtype_name(q_dtype) -> Optional[str]:
    if q_dtype is None:
        return None
    if not isinstance(q_dtype, torch.dtype):
        raise TypeError(f"q_dtype must be None or a torch.dtype (an fp8 dtype), got {type(q_dtype).__name__}")
    return _dtype_name(q_dtype)


def fused_qkv_split_qk_norm_rope_cache_fp8(
    qkv: torch.Tensor,
    q_weight: Optional[torch.Tensor],
    k_weight: Optional[torch.Tensor],
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    q_dtype: Optional[torch.dtype] = None,
    q_scale: Optional[torch.Tensor] = None,
    k_scale_cache: Optional[torch.Tensor] = None,
    v_scale_cache: Optional[torch.Tensor] = None,
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
    mrope_section: Optional[Sequence[int]] = None,
    mrope_interleaved: bool = False,
    v_norm: bool = False,
    k_eq_v: bool = False,
    layer: Optional[int] = None,
    check_indices: Optional[bool] = None,
) -> FusedQKVFp8Output:
    """:func:`fused_qkv_split_qk_norm_rope_cache` for fp8 attention: fp8 q and per-token-head fp8 K/V scales, in
    the same single kernel launch. Every argument of that function means the same here; the fp8 ones:

    Args:
        q_dtype: ``None`` (q in the input dtype) or the fp8 dtype of q: ``torch.float8_e4m3fn`` (CUDA, gfx950) or
            ``torch.float8_e4m3fnuz`` (ROCm gfx942); e5m2 q is not supported. q is computed in float32 (norm,
            RoPE), divided by its scale and rounded once to nearest-even, saturating. The gate stays in the input
            dtype; k and v (``return_kv``) are returned unquantised.
        q_scale: with ``q_dtype``: a float32 tensor of 1 element on qkv's device, the static scale
            (``q = saturate(q / q_scale)``); ``None``: one dynamic scale per token and Q head,
            ``s = max(amax(|q|) / fp8_max, 2**-126)`` over the head's ``D`` values, returned as ``q_scales``.
        k_scale_cache, v_scale_cache: per-token-head scale caches, float32, shaped like the cache without its
            last axis: ``[num_blocks, block_size, KVH]`` for NHD, ``[num_blocks, KVH, block_size]`` for HND (with the
            caches' leading layer axis ``[L, ...]`` when ``layer`` is given; the same layer is written), any
            strides; mutated in place. With one, its cache must be fp8 and its static scale (``k_scale`` /
            ``v_scale``) None: each written token and KV head gets ``s = max(amax / fp8_max, 2**-126)`` over its
            ``D`` values (after norm, RoPE and ``v_norm``); the cache stores ``x / s`` and the scale cache ``s``
            at the same slot (an all-zero head: ``s = 2**-126``, zeros stored, as for q). Skipped slots leave both
            unchanged.

    Returns:
        :class:`FusedQKVFp8Output` ``(q, gate, k, v, q_scales)``. A separate entry point, so that the main
        function's ``q, gate, k, v = ...`` unpacking never changes; the scale caches are written in place.

    Eager CUDA calls of a signature validated once launch from the native launcher, as the main function's do
    (without it, e.g. no C++ compiler, every call takes the checked path: several times the host time); calls are
    CUDA-graph capturable and ``torch.compile`` traces them as one op (``fused_qkv::split_qk_norm_rope_cache_fp8``).
    Outputs are contiguous; native calls place them in one allocation, as :class:`FusedQKVOutput` says.

    Raises:
        TypeError / ValueError naming the argument, as the main function, and for a q_dtype the target cannot
        store, a ``q_scale`` of the wrong size, dtype or device or without ``q_dtype``, a scale cache of the wrong
        shape, dtype or device, beside a non-fp8 cache or together with a static scale.
    """
    if mrope_section is not None:
        mrope_section = mrope_section_tuple(mrope_section)
    values = (num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim, attn_output_gate,
              gated_qkv_layout, kv_cache_layout, return_kv, mrope_section, mrope_interleaved, v_norm, k_eq_v,
              _q_dtype_name(q_dtype))
    checking = _indices.CHECK_BY_DEFAULT if check_indices is None else _indices.index_checks_requested(check_indices)
    arrays = (qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, offsets, k_scale,
              v_scale, q_scale, k_scale_cache, v_scale_cache)  # ARRAY_NAMES order: the native call's
    record = None
    if layer is None and not checking:
        out = _native_call(values, arrays)
        if out is not None:
            return out
        written = [t for t in (qkv, key_cache, value_cache, k_scale_cache, v_scale_cache) if t is not None]
        if fast_path.plain_eager(*written):
            try:
                record = (fast_path.signature_key(values, arrays), values)
            except (AttributeError, TypeError):  # not tensors, or unhashable values: the checked path names them
                record = None
    return _checked_call(dict(zip(ARRAY_NAMES, arrays, strict=True)), values, layer, checking, record, fp8=True)
