"""JAX binding of the fused kernel: a functional op that returns the updated caches.

GPU: the compiled kernel through ``jax_triton.triton_call``, the caches as aliased
input/output pairs, so under ``jax.jit(..., donate_argnames=("key_cache", "value_cache"))``
the update happens in place. CPU: the same kernel under Triton's interpreter, through
``jax.pure_callback`` (works inside jit, scan and vmap; the caches are copied there).
Validation and the launch plan are the core's (``fused_qkv.core.plan_for``), as in the torch frontend.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from fused_qkv.core import (
    ARRAY_NAMES,
    INPUT_NAMES,
    OUTPUT_NAMES,
    REQUIRED_ARRAYS,
    SCALAR_NAMES,
    ArrayInfo,
    OpConfig,
    check_layer,
    get_kernel,
    launch_on_host,
    plan_for,
    rocm_target,
)
from fused_qkv.core import indices as _indices
from fused_qkv.core.config import mrope_section_tuple
from fused_qkv.core.plan import ALLOCATED_OUTPUTS, COMPILE_OPTIONS


class FusedQKVJaxOutput(NamedTuple):
    """Outputs of :func:`fused_qkv_split_qk_norm_rope_cache` (JAX).

    q: ``[T, QH, D]``; gate: ``[T, QH, D]`` or None; k, v: ``[T, KVH, D]`` (before scaling; v after ``v_norm``) or
    None with ``return_kv=False``; key_cache, value_cache: the updated caches, same shape and dtype as given.
    """

    q: jax.Array
    gate: Optional[jax.Array]
    k: Optional[jax.Array]
    v: Optional[jax.Array]
    key_cache: jax.Array
    value_cache: jax.Array


class FusedQKVJaxFp8Output(NamedTuple):
    """Outputs of :func:`fused_qkv_split_qk_norm_rope_cache_fp8` (JAX): those of :class:`FusedQKVJaxOutput`
    (q in ``q_dtype`` when given), then q_scales: ``[T, QH]`` float32 dynamic scales (``q_dtype`` given and
    ``q_scale=None``) or None; k_scale_cache, v_scale_cache: the updated scale caches (None where not given)."""

    q: jax.Array
    gate: Optional[jax.Array]
    k: Optional[jax.Array]
    v: Optional[jax.Array]
    key_cache: jax.Array
    value_cache: jax.Array
    q_scales: Optional[jax.Array]
    k_scale_cache: Optional[jax.Array]
    v_scale_cache: Optional[jax.Array]


_INPLACE = (("key_cache", "key_cache_in"), ("value_cache", "value_cache_in"), ("k_scale_cache", "k_scale_cache_in"),
            ("v_scale_cache", "v_scale_cache_in"))  # (output, its aliased input)

_jax_triton = None


def _import_jax_triton():
    """Import jax_triton once, undoing its ``TRITON_CACHE_DIR=""`` side effect (it breaks later Triton
    compiles in the same process, e.g. the torch path)."""
    global _jax_triton
    if _jax_triton is None:
        saved = os.environ.get("TRITON_CACHE_DIR")
        try:
            import jax_triton
        except ImportError as exc:
            raise ImportError("the JAX frontend needs jax_triton on GPU: pip install jax-triton==0.3.1") from exc
        finally:
            if saved is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = saved
        _jax_triton = jax_triton
    return _jax_triton


def _contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def _as_array(x, name: str, required: bool):
    if x is None:
        if required:
            raise TypeError(f"{name} must be a jax.Array, got None")
        return None
    if isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "aval"):
        given = np.dtype(x.dtype)
        canonical = np.dtype(jax.dtypes.canonicalize_dtype(given))
        if canonical != given and given != np.int64:  # int64 indices become int32, which the op accepts
            raise TypeError(f"{name} has dtype {given.name}, which JAX would silently turn into {canonical.name} "
                            f"(jax_enable_x64 is off); pass {name} in a dtype the op accepts")
        return jnp.asarray(x)
    raise TypeError(f"{name} must be a jax.Array (or NumPy array), got {type(x).__name__}")


def _info(x) -> Optional[ArrayInfo]:
    if x is None:
        return None
    return ArrayInfo(tuple(x.shape), _contiguous_strides(x.shape), jnp.dtype(x.dtype).name, "jax")


def _platform(x) -> str:
    """Platform the op runs on: the device of a concrete input; inside jit (no device known at trace time) the
    device of an enclosing ``jax.default_device(...)``, else the default backend."""
    try:
        devices = x.devices()
    except Exception:  # a tracer
        default = jax.config.jax_default_device
        if default is None:
            return jax.default_backend()
        return default.platform if hasattr(default, "platform") else str(default)
    return next(iter(devices)).platform


def _target(platform: str) -> str:
    if platform == "cpu":
        return "interpreter"
    if platform in ("gpu", "cuda"):
        return "cuda"
    if platform == "rocm":
        try:
            from jax._src.lib import gpu_triton
        except ImportError as exc:
            raise ValueError("qkv is on a ROCm device, but this jaxlib has no Triton support") from exc
        return rocm_target(gpu_triton.get_arch_details("0"))
    raise ValueError(f"unsupported JAX backend {platform!r}: expected cpu, cuda or rocm")


def _layer_spec(layer):
    """(what the plan is told, the int32 [1] array the kernel reads) for ``layer``."""
    if layer is None:
        return None, None
    if isinstance(layer, bool) or not isinstance(layer, (int, jax.Array, np.ndarray, np.integer)) and not \
            hasattr(layer, "aval"):
        raise TypeError(f"layer must be None, an int or an integer scalar array, got {type(layer).__name__}")
    if isinstance(layer, (int, np.integer)):
        spec = int(layer)
    else:
        if jnp.ndim(layer) != 0 or not jnp.issubdtype(jnp.result_type(layer), jnp.integer):
            raise TypeError(f"layer must be an integer scalar, got shape {jnp.shape(layer)} dtype "
                            f"{jnp.result_type(layer)}")
        spec = "dynamic"
    return spec, jnp.asarray(layer, dtype=jnp.int32).reshape(1)


def fused_qkv_split_qk_norm_rope_cache(
    qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, *,
    num_q_heads: int, num_kv_heads: int, head_dim: int, eps: float = 1e-6, norm_weight_offset: float = 0.0,
    is_neox: bool = True, rotary_dim: Optional[int] = None, offsets=None, attn_output_gate: bool = False,
    gated_qkv_layout: str = "interleaved", k_scale=None, v_scale=None, kv_cache_layout: str = "NHD",
    return_kv: bool = True, mrope_section: Optional[Sequence[int]] = None, mrope_interleaved: bool = False,
    v_norm: bool = False, k_eq_v: bool = False, layer: Any = None, check_indices: Optional[bool] = None,
) -> FusedQKVJaxOutput:
    """Split a packed QKV projection, RMS-normalise Q and K per head, apply RoPE, write K/V to a paged cache.

    Functional: the updated caches are returned. One kernel launch, no host synchronisation. On GPU the kernel runs
    through ``jax_triton.triton_call`` with each cache aliased to its output, so under
    ``jax.jit(step, donate_argnames=("key_cache", "value_cache"))`` the write happens in place (without donation
    XLA copies the whole cache on every call). On CPU the same kernel runs under Triton's interpreter inside a
    ``jax.pure_callback`` (jit, scan, vmap and shard_map work; the caches are copied there). All keyword
    arguments except the arrays and ``layer`` are static Python values. Inside ``jax.jit`` the kernel is built for the
    platform of an enclosing ``jax.default_device(...)`` or else the default backend: to run a jitted call on the
    CPU of a GPU machine, wrap it in ``with jax.default_device(jax.devices("cpu")[0]):``.

    Shapes (``T`` tokens, ``QH = num_q_heads``, ``KVH = num_kv_heads``, ``D = head_dim``, ``R = rotary_dim``):

    Args:
        qkv: ``[T, (QH * (2 if attn_output_gate else 1) + (1 if k_eq_v else 2) * KVH) * D]``,
            float16/bfloat16/float32. Column layout: Q heads (with gates, see ``gated_qkv_layout``), then K heads,
            then V heads (none with ``k_eq_v``).
        q_weight, k_weight: ``[D]`` RMSNorm weights (float16/bfloat16/float32), or None for no norm of Q / K.
        cos, sin: ``[P, R/2]`` half tables or ``[P, R]`` full tables as Hugging Face builds them (NeoX halves
            repeated, GPT-J entries repeated twice; one copy is read), float32/bfloat16/float16. Both None: a layer
            without RoPE (NoPE: SmolLM3's ``no_rope_layers``, Llama 4's NoPE layers); then ``rotary_dim``,
            ``mrope_section`` and ``offsets`` must be None, and ``positions`` (None or ``[T]``) is not read.
        positions: ``[T]`` int32/int64, the table row of each token (plus ``offsets``); with ``mrope_section``
            ``[3, T]`` (rows: temporal, height, width). Values outside ``[0, P)`` are clamped to the nearest row.
        key_cache, value_cache: paged caches, ``kv_cache_layout="NHD"``: ``[num_blocks, block_size, KVH, D]``
            (vLLM); ``"HND"``: ``[num_blocks, KVH, block_size, D]``; optionally with a leading layer axis
            ``[L, ...]`` (then ``layer`` selects the slice inside the kernel, so a scan over layers carrying the
            stacked cache never copies it). dtype: the input dtype, or float8_e4m3fn/float8_e5m2 (CUDA, gfx950,
            CPU) / float8_e4m3fnuz (ROCm gfx942, CPU); fp8 values round to nearest-even and saturate.
        slot_mapping: ``[S]`` int32/int64 with ``S <= T``; token ``t`` goes to slot ``slot_mapping[t] = block *
            block_size + offset``. Tokens with ``t >= S``, a negative slot or a slot ``>= num_blocks *
            block_size`` get no cache write.
        num_q_heads, num_kv_heads, head_dim: head counts (``QH % KVH == 0``) and ``16 <= D <= 512``.
        eps: RMSNorm epsilon: ``x * rsqrt(mean(x^2) + eps) * (weight + norm_weight_offset)`` in float32.
        norm_weight_offset: ``0.0`` plain gamma (Qwen3, Llama); ``1.0`` zero-centred gamma (Gemma3, Qwen3-Next).
        is_neox: NeoX pairing (channel ``i`` with ``i + R/2``) if True, GPT-J (``2i`` with ``2i+1``) if False.
        rotary_dim: ``R``, even, ``<= D``; the first ``R`` channels rotate, the rest pass through. Default ``D``.
        offsets: optional ``[T]`` int32/int64 added to ``positions``.
        attn_output_gate: the Q block holds a gate per Q head (Qwen3-Next).
        gated_qkv_layout: ``"interleaved"`` (per head ``[q_h | gate_h]``) or ``"blocked"`` (all Q then all gates).
        k_scale, v_scale: optional float32 ``[1]`` or ``[KVH]``; the caches hold ``k / k_scale``, ``v / v_scale``.
        kv_cache_layout: ``"NHD"`` or ``"HND"`` (above).
        return_kv: return k and v (False: they only go to the caches).
        mrope_section: multimodal RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): three non-negative ints ``(t, h, w)``
            with ``t + h + w == R/2`` (a list, as Hugging Face configs hold it, or a tuple). Rotary frequency ``i``
            takes its angle from positions row 0, 1 or 2: contiguous sections (``i < t`` -> 0, ``i < t + h`` -> 1,
            else 2), or with ``mrope_interleaved=True`` (Qwen3-VL) ``i % 3 == 1 and i < 3h`` -> 1,
            ``i % 3 == 2 and i < 3w`` -> 2, else 0. ``offsets`` adds to all three rows.
        mrope_interleaved: the Qwen3-VL frequency assignment (above); needs ``mrope_section``.
        v_norm: RMS-normalise V per head without a weight, ``v * rsqrt(mean(v^2) + eps)`` in float32 (Gemma 4),
            before it is returned, scaled and written to the cache.
        k_eq_v: ``qkv`` holds no V block; V is the raw K projection (before K's norm and RoPE), then ``v_norm``
            if set (Gemma 4's ``attention_k_eq_v`` global layers). K and V still go to their own caches.
        layer: a Python int or a traced integer scalar indexing the caches' leading layer axis; None for 4-D
            caches.
        check_indices: development aid. ``True`` checks ``positions`` (plus ``offsets``) against the table and
            ``slot_mapping`` against the cache on the host and raises ``ValueError`` naming the first bad entry and
            its value (slots ``>= num_blocks * block_size`` or negative other than ``-1``). Concrete arrays are
            checked during the call; inside ``jax.jit`` the check runs through ``jax.debug.callback`` when the
            computation executes, and the ``ValueError`` reaches the caller wrapped in a
            ``jax.errors.JaxRuntimeError`` whose message carries it. It synchronises. ``None`` (default): on if
            ``FUSED_QKV_CHECK_INDICES=1`` is set, else off.

    Returns:
        :class:`FusedQKVJaxOutput` ``(q, gate, k, v, key_cache, value_cache)``: ``q [T, QH, D]`` and ``k, v
        [T, KVH, D]`` in the input dtype (k/v before scaling, v after ``v_norm``; None with ``return_kv=False``),
        ``gate [T, QH, D]`` a copy or None, and the updated caches (same shape and dtype as given). Every value is
        computed in fp32 and rounded once to its storage dtype.

    Raises:
        TypeError / ValueError naming the argument, for any invalid shape, dtype, layout or value; a float64 (or
        other 64-bit non-index) array given with ``jax_enable_x64`` off is reported under its own name rather than
        silently narrowed.
    """
    config = OpConfig(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, eps=eps,
                      norm_weight_offset=norm_weight_offset, is_neox=is_neox, rotary_dim=rotary_dim,
                      attn_output_gate=attn_output_gate, gated_qkv_layout=gated_qkv_layout,
                      kv_cache_layout=kv_cache_layout, return_kv=return_kv,
                      mrope_section=mrope_section_tuple(mrope_section),
                      mrope_interleaved=mrope_interleaved, v_norm=v_norm, k_eq_v=k_eq_v)
    given = dict(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, positions=positions,
                 key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping, offsets=offsets,
                 k_scale=k_scale, v_scale=v_scale)
    outs = _call(given, config, layer, check_indices)
    return FusedQKVJaxOutput(*(outs.get(n) for n in FusedQKVJaxOutput._fields))


def fused_qkv_split_qk_norm_rope_cache_fp8(
    qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, *,
    num_q_heads: int, num_kv_heads: int, head_dim: int, q_dtype=None, q_scale=None, k_scale_cache=None,
    v_scale_cache=None, eps: float = 1e-6, norm_weight_offset: float = 0.0, is_neox: bool = True,
    rotary_dim: Optional[int] = None, offsets=None, attn_output_gate: bool = False,
    gated_qkv_layout: str = "interleaved", k_scale=None, v_scale=None, kv_cache_layout: str = "NHD",
    return_kv: bool = True, mrope_section: Optional[Sequence[int]] = None, mrope_interleaved: bool = False,
    v_norm: bool = False, k_eq_v: bool = False, layer: Any = None, check_indices: Optional[bool] = None,
) -> FusedQKVJaxFp8Output:
    """:func:`fused_qkv_split_qk_norm_rope_cache` for fp8 attention: fp8 q and per-token-head fp8 K/V scales, in
    the same single kernel launch. Every argument of that function means the same here; the fp8 ones:

    Args:
        q_dtype: ``None`` (q in the input dtype) or the fp8 dtype of q (static): ``jnp.float8_e4m3fn`` (CUDA,
            gfx950) or ``jnp.float8_e4m3fnuz`` (ROCm gfx942); e5m2 q is not supported. q is computed in float32,
            divided by its scale and rounded once to nearest-even, saturating. The gate stays in the input dtype;
            k and v are returned unquantised.
        q_scale: with ``q_dtype``: a float32 array of 1 element, the static scale (``q = saturate(q / q_scale)``);
            ``None``: one dynamic scale per token and Q head, ``s = max(amax(|q|) / fp8_max, 2**-126)`` over the
            head's ``D`` values, returned as ``q_scales``.
        k_scale_cache, v_scale_cache: per-token-head scale caches, float32, shaped like the cache without its
            last axis (``[num_blocks, block_size, KVH]`` NHD, ``[num_blocks, KVH, block_size]`` HND, with the
            caches' leading layer axis where they have one). With one, its cache must be fp8 and its static scale
            None: each written token and KV head gets ``s = max(amax / fp8_max, 2**-126)`` over its ``D`` values
            (after norm, RoPE and ``v_norm``); the cache stores ``x / s`` and the scale cache ``s`` at the same
            slot (an all-zero head: ``s = 2**-126``, zeros stored, as for q); skipped slots keep both. Returned
            updated, aliased like the caches: donate them too
            (``donate_argnames=("key_cache", "value_cache", "k_scale_cache", "v_scale_cache")``) to stay in place.

    Returns:
        :class:`FusedQKVJaxFp8Output` ``(q, gate, k, v, key_cache, value_cache, q_scales, k_scale_cache,
        v_scale_cache)``: a separate entry point and result type, so that the main function's six-field result
        never changes.

    Raises:
        TypeError / ValueError naming the argument, as the main function, and for a q_dtype the target cannot
        store, a ``q_scale`` of the wrong size or dtype or without ``q_dtype``, a scale cache of the wrong shape or
        dtype, beside a non-fp8 cache or together with a static scale.
    """
    if q_dtype is not None:
        try:
            q_dtype = jnp.dtype(q_dtype).name
        except TypeError as exc:
            raise TypeError(f"q_dtype must be None or an fp8 dtype, got {q_dtype!r}") from exc
    config = OpConfig(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, eps=eps,
                      norm_weight_offset=norm_weight_offset, is_neox=is_neox, rotary_dim=rotary_dim,
                      attn_output_gate=attn_output_gate, gated_qkv_layout=gated_qkv_layout,
                      kv_cache_layout=kv_cache_layout, return_kv=return_kv,
                      mrope_section=mrope_section_tuple(mrope_section), mrope_interleaved=mrope_interleaved,
                      v_norm=v_norm, k_eq_v=k_eq_v, q_dtype=q_dtype)
    given = dict(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, positions=positions,
                 key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping, offsets=offsets,
                 k_scale=k_scale, v_scale=v_scale, q_scale=q_scale, k_scale_cache=k_scale_cache,
                 v_scale_cache=v_scale_cache)
    outs = _call(given, config, layer, check_indices)
    return FusedQKVJaxFp8Output(*(outs.get(n) for n in FusedQKVJaxFp8Output._fields))


def _call(given: dict, config: OpConfig, layer, check_indices) -> dict:
    """Validate, plan and launch; returns every output by name (absent ones missing)."""
    arrays = {name: _as_array(given.get(name), name, name in REQUIRED_ARRAYS) for name in ARRAY_NAMES}
    layer_spec, layer_arr = _layer_spec(layer)
    check_layer(tuple(arrays["key_cache"].shape), layer_spec)
    target = _target(_platform(arrays["qkv"]))
    plan = plan_for({n: _info(a) for n, a in arrays.items()}, config, layer_spec, target)
    if _indices.index_checks_requested(check_indices):
        _check_indices(arrays, plan)

    inputs = {n: arrays.get(n) for n in INPUT_NAMES}
    inputs["layer"] = layer_arr
    for out_name, in_name in _INPLACE:
        inputs[in_name] = arrays[out_name]
    present = [n for n in ALLOCATED_OUTPUTS if plan.out_shapes[n] is not None]
    out_structs = {n: jax.ShapeDtypeStruct(*plan.out_shapes[n]) for n in present}
    inplace = [n for n, _ in _INPLACE if arrays[n] is not None]
    cache_structs = {n: jax.ShapeDtypeStruct(arrays[n].shape, arrays[n].dtype) for n in inplace}

    if plan.grid[0] == 0:  # no tokens: nothing to launch
        outs = {n: jnp.zeros(s.shape, s.dtype) for n, s in out_structs.items()}
        outs.update({n: arrays[n] for n in inplace})
    elif target == "interpreter":
        outs = _run_on_host(plan, inputs, present, out_structs, cache_structs)
    else:
        outs = _run_triton_call(plan, inputs, present, out_structs, cache_structs)
    return outs


def _check_indices(arrays, plan):
    """``check_indices=True``: concrete index arrays are checked here; traced ones (inside ``jit``) on the host
    through ``jax.debug.callback`` when the computation runs."""
    # NoPE (no tables): positions are not read, so not checked
    names = [n for n in ("positions", "offsets", "slot_mapping")
             if arrays[n] is not None and (n != "positions" or arrays["cos"] is not None)]
    limits = dict(num_table_rows=plan.scalars["num_table_rows"], num_cache_slots=plan.scalars["num_cache_slots"])

    def host(*values):
        given = dict(zip(names, values, strict=True))
        _indices.check_indices(given.get("positions"), given.get("offsets"), given["slot_mapping"], **limits)

    values = [arrays[n] for n in names]
    if any(isinstance(v, jax.core.Tracer) for v in values):
        jax.debug.callback(host, *values)
    else:
        host(*(np.asarray(v) for v in values))


def _run_on_host(plan, inputs, present, out_structs, cache_structs):
    """CPU: the interpreted kernel inside ``jax.pure_callback`` (the caches are copied into new buffers)."""
    names = [n for n in INPUT_NAMES if inputs[n] is not None]
    inplace = list(cache_structs)
    result_structs = [out_structs[n] for n in present] + [cache_structs[n] for n in inplace]

    def host(*arrays):
        given = dict(zip(names, arrays, strict=True))
        host_inputs = {n: (np.asarray(given[n]) if n in given else None) for n in INPUT_NAMES}
        full = {n: None for n in OUTPUT_NAMES}
        for out_name, in_name in _INPLACE:
            if out_name in cache_structs:
                full[out_name] = host_inputs[in_name] = np.array(host_inputs[in_name], copy=True, order="C")
        outs = {n: np.empty(out_structs[n].shape, out_structs[n].dtype) for n in present}
        full.update(outs)
        launch_on_host(plan, host_inputs, full)
        return tuple(outs[n] for n in present) + tuple(full[n] for n in inplace)

    results = jax.pure_callback(host, result_structs, *[inputs[n] for n in names], vmap_method="sequential")
    return dict(zip(present + inplace, results, strict=True))


def _run_triton_call(plan, inputs, present, out_structs, cache_structs):
    """GPU: the compiled kernel through jax_triton, the caches (and scale caches) aliased input -> output."""
    jt = _import_jax_triton()
    # every pointer slot needs an array: absent optional inputs/outputs get a 1-element dummy (never accessed:
    # the constexpr flags switch their use off)
    dummy_in = jnp.zeros((1,), jnp.float32)
    dummy_out = jax.ShapeDtypeStruct((1,), jnp.float32)
    array_args = [inputs[n] if inputs[n] is not None else dummy_in for n in INPUT_NAMES]
    scalars = [np.float32(v) if isinstance(v, float) else v for v in (plan.scalars[n] for n in SCALAR_NAMES)]
    out_shape = [out_structs.get(n, cache_structs.get(n, dummy_out)) for n in OUTPUT_NAMES]
    # input_output_aliases keys count array arguments only (the scalars are not counted)
    aliases = {INPUT_NAMES.index(i): OUTPUT_NAMES.index(o) for o, i in _INPLACE if o in cache_structs}
    results = jt.triton_call(*array_args, *scalars, kernel=get_kernel(interpret=False), out_shape=out_shape,
                             grid=plan.grid, num_warps=plan.num_warps, input_output_aliases=aliases, **COMPILE_OPTIONS,
                             **plan.constexprs)
    return {n: results[OUTPUT_NAMES.index(n)] for n in present + list(cache_structs)}
