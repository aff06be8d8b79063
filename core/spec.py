"""Framework-free launch spec: validation, grid, constexprs and argument order.

Every frontend describes its tensors as :class:`ArrayInfo` (shape, strides in elements,
dtype name, device string, optional data pointer) and calls :func:`plan_launch`. It
raises ``TypeError``/``ValueError`` naming the offending argument, and returns a
:class:`LaunchPlan` with everything a launch needs, computed from shapes, dtypes and
strides alone (never from device data, so no host synchronisation is ever needed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Optional

# Kernel argument order (see core/kernel.py). jax-triton passes inputs, then scalars,
# then one pointer per output; constexprs go by keyword.
INPUT_NAMES = (
    "qkv", "q_weight", "k_weight", "cos", "sin", "positions", "offsets", "slot_mapping",
    "k_scale", "v_scale", "layer", "key_cache_in", "value_cache_in",
)
SCALAR_NAMES = ("num_tokens", "num_slot_entries", "num_cache_slots", "num_table_rows", "eps", "norm_weight_offset")
OUTPUT_NAMES = ("q", "gate", "k", "v", "key_cache", "value_cache")

FLOAT_INPUT_DTYPES = ("float16", "bfloat16", "float32")
TABLE_DTYPES = FLOAT_INPUT_DTYPES
INDEX_DTYPES = ("int32", "int64")
WEIGHT_DTYPES = FLOAT_INPUT_DTYPES


class Fp8Format(NamedTuple):
    """An fp8 cache format: explicit mantissa bits, minimum normal exponent, largest finite value."""

    mbits: int
    emin: int
    max_finite: float


FP8_FORMATS = {
    "float8_e4m3fn": Fp8Format(3, -6, 448.0),
    "float8_e5m2": Fp8Format(2, -14, 57344.0),
    "float8_e4m3fnuz": Fp8Format(3, -7, 240.0),
}

ITEMSIZE = {
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "uint8": 1, "int8": 1, "bool": 1,
}

# Cache dtypes each compile target can store. The interpreter stores any of them.
TARGET_FP8 = {
    "interpreter": ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz"),
    "cuda": ("float8_e4m3fn", "float8_e5m2"),  # OCP formats; no fnuz on NVIDIA
    "hip:gfx942": ("float8_e4m3fnuz",),  # MI300: fnuz only (OCP e4m3fn is gfx950+)
    "hip:gfx950": ("float8_e4m3fn", "float8_e5m2"),
}

# Triton's interpreter has no IR type for fnuz fp8: there the kernel encodes the bits itself.
SOFT_FP8_ON_INTERPRETER = ("float8_e4m3fnuz",)

LAYOUTS = ("NHD", "HND")
GATE_LAYOUTS = ("interleaved", "blocked")
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 512


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What the spec needs to know of one array: no data, no framework.

    ``strides`` are in elements. ``data_ptr`` (optional) enables the overlap checks.
    """

    shape: tuple
    strides: tuple
    dtype: str
    device: str = "cpu"
    data_ptr: Optional[int] = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def byte_extent(self):
        """[lo, hi) byte offsets from the data pointer that the array may touch ((0, 0) if empty)."""
        if self.numel == 0:
            return 0, 0
        size = ITEMSIZE.get(self.dtype, 1)
        lo = sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True) if s < 0)
        hi = sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True) if s > 0) + 1
        return lo * size, hi * size

    def byte_span(self):
        """[start, end) byte range touched by the array, or None if unknown/empty."""
        if self.data_ptr is None or self.numel == 0:
            return None
        lo, hi = self.byte_extent()
        return self.data_ptr + lo, self.data_ptr + hi


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to launch the kernel, from shapes alone."""

    grid: tuple
    num_warps: int
    constexprs: Mapping[str, Any]
    scalars: Mapping[str, Any]
    # output name -> (shape, dtype) for the outputs the frontend allocates (q, gate, k, v);
    # absent ones (gate without attn_output_gate, k/v without return_kv) map to None.
    out_shapes: Mapping[str, Optional[tuple]]
    num_tokens: int
    has_layer: bool
    # dtype name of every pointer argument (INPUT_NAMES + OUTPUT_NAMES), None where the argument is absent
    pointer_dtypes: Mapping[str, Optional[str]] = dataclasses.field(default_factory=dict)


_plan_observers: list = []


def add_plan_observer(fn) -> None:
    """Call ``fn(plan, target)`` for every plan made from now on (tooling: e.g. the test suite records every
    specialisation it launches to compile each one ahead of time for every GPU target)."""
    _plan_observers.append(fn)


def ordered_args(inputs: Mapping[str, Any], scalars: Mapping[str, Any], outputs: Mapping[str, Any]) -> list:
    """Positional kernel arguments in kernel order: inputs, scalars, outputs."""
    return ([inputs[n] for n in INPUT_NAMES] + [scalars[n] for n in SCALAR_NAMES]
            + [outputs[n] for n in OUTPUT_NAMES])


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_positive_int(name, value, lo=1, hi=None):
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _check_float(name, value, *, nonneg=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or (nonneg and value < 0):
        raise ValueError(f"{name} must be a finite{' non-negative' if nonneg else ''} float, got {value}")


def _check_dtype(name, arr: ArrayInfo, allowed):
    if arr.dtype not in allowed:
        raise TypeError(f"{name} must have dtype in {list(allowed)}, got {arr.dtype}")


def _check_ndim(name, arr: ArrayInfo, ndim, what):
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {tuple(arr.shape)}")


def _check_vector(name, arr: ArrayInfo, length, dtypes, *, exact=True):
    _check_ndim(name, arr, 1, f"[{'' if exact else '<= '}{length}]")
    _check_dtype(name, arr, dtypes)
    n = arr.shape[0]
    if (exact and n != length) or (not exact and n > length):
        raise ValueError(f"{name} must have {'' if exact else 'at most '}{length} entries (num tokens), got {n}")


def check_config(*, num_q_heads, num_kv_heads, head_dim, eps, norm_weight_offset, is_neox, rotary_dim,
                 attn_output_gate, gated_qkv_layout, kv_cache_layout, return_kv) -> int:
    """Validate the non-array arguments; returns the effective rotary_dim."""
    _check_positive_int("num_q_heads", num_q_heads)
    _check_positive_int("num_kv_heads", num_kv_heads)
    _check_positive_int("head_dim", head_dim, MIN_HEAD_DIM, MAX_HEAD_DIM)
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if rotary_dim is None:
        rotary_dim = head_dim
    _check_positive_int("rotary_dim", rotary_dim, 2, head_dim)
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    _check_float("eps", eps, nonneg=True)
    _check_float("norm_weight_offset", norm_weight_offset)
    for name, flag in (("is_neox", is_neox), ("attn_output_gate", attn_output_gate), ("return_kv", return_kv)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if gated_qkv_layout not in GATE_LAYOUTS:
        raise ValueError(f"gated_qkv_layout must be one of {list(GATE_LAYOUTS)}, got {gated_qkv_layout!r}")
    if kv_cache_layout not in LAYOUTS:
        raise ValueError(f"kv_cache_layout must be one of {list(LAYOUTS)}, got {kv_cache_layout!r}")

    return rotary_dim


def plan_launch(
    qkv: ArrayInfo,
    q_weight: Optional[ArrayInfo],
    k_weight: Optional[ArrayInfo],
    cos: ArrayInfo,
    sin: ArrayInfo,
    positions: ArrayInfo,
    key_cache: ArrayInfo,
    value_cache: ArrayInfo,
    slot_mapping: ArrayInfo,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float = 1e-6,
    norm_weight_offset: float = 0.0,
    is_neox: bool = True,
    rotary_dim: Optional[int] = None,
    offsets: Optional[ArrayInfo] = None,
    attn_output_gate: bool = False,
    gated_qkv_layout: str = "interleaved",
    k_scale: Optional[ArrayInfo] = None,
    v_scale: Optional[ArrayInfo] = None,
    kv_cache_layout: str = "NHD",
    return_kv: bool = True,
    layer: Any = None,
    target: str = "interpreter",
    warp_size: int = 32,
) -> LaunchPlan:
    """Validate every argument and compute the launch.

    ``layer``: ``None`` (caches are 4-D), a Python int, or the string ``"dynamic"``
    (a traced scalar; only the frontend knows its value) when caches are 5-D ``[L, ...]``.
    ``target``: ``"interpreter"``, ``"cuda"``, ``"hip:gfx942"`` or ``"hip:gfx950"``; decides
    which fp8 cache dtypes are allowed and the tile heuristics.
    """
    rotary_dim = check_config(
        num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, eps=eps,
        norm_weight_offset=norm_weight_offset, is_neox=is_neox, rotary_dim=rotary_dim,
        attn_output_gate=attn_output_gate, gated_qkv_layout=gated_qkv_layout, kv_cache_layout=kv_cache_layout,
        return_kv=return_kv)
    if target not in TARGET_FP8:
        raise ValueError(f"target must be one of {list(TARGET_FP8)}, got {target!r}")

    D, QH, KVH = head_dim, num_q_heads, num_kv_heads
    gate_mult = 2 if attn_output_gate else 1
    width = (QH * gate_mult + 2 * KVH) * D

    # ---- qkv ----
    _check_ndim("qkv", qkv, 2, "[num_tokens, (num_q_heads*(2 if gate) + 2*num_kv_heads)*head_dim]")
    _check_dtype("qkv", qkv, FLOAT_INPUT_DTYPES)
    T = qkv.shape[0]
    if qkv.shape[1] != width:
        raise ValueError(
            f"qkv must have width (num_q_heads*{gate_mult} + 2*num_kv_heads)*head_dim = "
            f"({QH}*{gate_mult} + 2*{KVH})*{D} = {width}, got {qkv.shape[1]}")
    if width > 1 and qkv.strides[1] != 1:
        raise ValueError(f"qkv must be contiguous in its last dim (stride 1), got strides {tuple(qkv.strides)}")
    if T > 1 and qkv.strides[0] < width:
        raise ValueError(f"qkv row stride must be >= its width {width}, got {qkv.strides[0]}")
    device = qkv.device
    in_dtype = qkv.dtype

    def same_device(name, arr):
        if arr.device != device:
            raise ValueError(f"{name} must be on the same device as qkv ({device}), got {arr.device}")

    # ---- norm weights ----
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is None:
            continue
        _check_ndim(name, w, 1, f"[head_dim={D}]")
        if w.shape[0] != D:
            raise ValueError(f"{name} must have head_dim={D} entries, got {w.shape[0]}")
        _check_dtype(name, w, WEIGHT_DTYPES)
        if w.strides[0] != 1:
            raise ValueError(f"{name} must be contiguous, got stride {w.strides[0]}")
        same_device(name, w)

    # ---- rotary tables ----
    half = rotary_dim // 2
    for name, tab in (("cos", cos), ("sin", sin)):
        _check_ndim(name, tab, 2, "[max_positions, rotary_dim/2 or rotary_dim]")
        _check_dtype(name, tab, TABLE_DTYPES)
        same_device(name, tab)
        if tab.shape[1] not in (half, rotary_dim):
            raise ValueError(
                f"{name} last dim must be rotary_dim/2={half} (half table) or rotary_dim={rotary_dim} "
                f"(full table), got {tab.shape[1]}")
        if tab.shape[0] < 1:
            raise ValueError(f"{name} must have at least one row (position)")
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    full_table = cos.shape[1] == rotary_dim and rotary_dim != half
    table_step = 2 if (full_table and not is_neox) else 1

    # ---- index vectors ----
    _check_vector("positions", positions, T, INDEX_DTYPES)
    same_device("positions", positions)
    if offsets is not None:
        _check_vector("offsets", offsets, T, INDEX_DTYPES)
        same_device("offsets", offsets)
    _check_vector("slot_mapping", slot_mapping, T, INDEX_DTYPES, exact=False)
    same_device("slot_mapping", slot_mapping)

    # ---- caches ----
    has_layer = key_cache.ndim == 5
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if cache.ndim not in (4, 5):
            raise ValueError(
                f"{name} must be 4-D ({_layout_str(kv_cache_layout)}) or 5-D with a leading layer axis, "
                f"got shape {tuple(cache.shape)}")
        same_device(name, cache)
        if cache.dtype != in_dtype and cache.dtype not in FP8_FORMATS:
            raise TypeError(
                f"{name} dtype must be the input dtype ({in_dtype}) or one of {list(FP8_FORMATS)}, got {cache.dtype}")
        if cache.dtype in FP8_FORMATS and cache.dtype not in TARGET_FP8[target]:
            raise TypeError(
                f"{name} dtype {cache.dtype} is not supported on target {target}; supported fp8 cache dtypes "
                f"there: {list(TARGET_FP8[target])}")
        if cache.strides[-1] != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (last stride 1), got strides {cache.strides}")
    if tuple(key_cache.shape) != tuple(value_cache.shape):
        raise ValueError(
            f"key_cache and value_cache must have the same shape, got {tuple(key_cache.shape)} and "
            f"{tuple(value_cache.shape)}")
    page_shape = key_cache.shape[-4:]
    if kv_cache_layout == "NHD":
        num_blocks, block_size, c_heads, c_dim = page_shape
    else:
        num_blocks, c_heads, block_size, c_dim = page_shape
    if c_heads != KVH or c_dim != D:
        raise ValueError(
            f"key_cache shape {tuple(key_cache.shape)} does not match layout {kv_cache_layout} "
            f"{_layout_str(kv_cache_layout)} with num_kv_heads={KVH}, head_dim={D}")
    if block_size < 1 or num_blocks < 1:
        raise ValueError(f"key_cache must have at least one block of at least one slot, got {tuple(key_cache.shape)}")

    if has_layer or layer is not None:
        check_layer(key_cache.shape, layer)

    # ---- scales ----
    scale_modes = {}
    for name, sc in (("k_scale", k_scale), ("v_scale", v_scale)):
        if sc is None:
            scale_modes[name] = 0
            continue
        _check_dtype(name, sc, ("float32",))
        same_device(name, sc)
        if sc.ndim > 1 or sc.numel not in (1, KVH):
            raise ValueError(f"{name} must hold 1 element or num_kv_heads={KVH} elements (1-D), got shape "
                             f"{tuple(sc.shape)}")
        if sc.numel > 1 and sc.strides[0] != 1:
            raise ValueError(f"{name} must be contiguous")
        scale_modes[name] = 1 if sc.numel == 1 else 2

    # ---- overlaps: outputs written in place must not alias any other argument ----
    check_overlaps(qkv, key_cache, value_cache)

    # ---- constexprs ----
    def fp8(dtype):
        f = FP8_FORMATS.get(dtype)
        return (f.mbits, f.emin, f.max_finite) if f else (0, 0, 0.0)

    def cache_strides(c: ArrayInfo):
        s = c.strides[-4:]
        layer_stride = c.strides[0] if has_layer else 0
        if kv_cache_layout == "NHD":
            return layer_stride, s[0], s[1], s[2]
        return layer_stride, s[0], s[2], s[1]

    kls, kbs, kss, khs = cache_strides(key_cache)
    vls, vbs, vss, vhs = cache_strides(value_cache)
    k_mbits, k_emin, k_max = fp8(key_cache.dtype)
    v_mbits, v_emin, v_max = fp8(value_cache.dtype)
    interleaved = attn_output_gate and gated_qkv_layout == "interleaved"
    k_end = QH + KVH
    v_end = QH + 2 * KVH
    num_head_progs = v_end + (QH if attn_output_gate else 0)
    block_half = next_pow2(half)
    has_pass = rotary_dim < D
    block_pass = next_pow2(D - rotary_dim) if has_pass else 1
    block_d = next_pow2(D)
    block_t, num_warps = choose_tiles(T, block_d, target, warp_size)

    constexprs = dict(
        NUM_Q_HEADS=QH, NUM_KV_HEADS=KVH, HEAD_DIM=D, HALF_ROT=half,
        PAIR_STEP=1 if is_neox else 2, PAIR_DELTA=half if is_neox else 1, TABLE_STEP=table_step,
        NUM_HEAD_PROGS=num_head_progs, K_END=k_end, V_END=v_end,
        Q_HEAD_STRIDE=2 * D if interleaved else D,
        GATE_COL0=D if interleaved else QH * D, GATE_HEAD_STRIDE=2 * D if interleaved else D,
        K_COL0=QH * gate_mult * D, V_COL0=QH * gate_mult * D + KVH * D,
        HAS_Q_NORM=q_weight is not None, HAS_K_NORM=k_weight is not None, HAS_OFFSETS=offsets is not None,
        HAS_LAYER=has_layer, HAS_GATE=attn_output_gate, RETURN_KV=return_kv,
        K_SCALE_MODE=scale_modes["k_scale"], V_SCALE_MODE=scale_modes["v_scale"],
        K_MBITS=k_mbits, K_EMIN=k_emin, K_MAXV=k_max, V_MBITS=v_mbits, V_EMIN=v_emin, V_MAXV=v_max,
        K_SOFT_FP8=target == "interpreter" and key_cache.dtype in SOFT_FP8_ON_INTERPRETER,
        V_SOFT_FP8=target == "interpreter" and value_cache.dtype in SOFT_FP8_ON_INTERPRETER,
        QKV_ROW_STRIDE=qkv.strides[0], POS_STRIDE=positions.strides[0],
        OFF_STRIDE=offsets.strides[0] if offsets is not None else 0, SLOT_STRIDE=slot_mapping.strides[0],
        COS_ROW_STRIDE=cos.strides[0], COS_COL_STRIDE=cos.strides[1],
        SIN_ROW_STRIDE=sin.strides[0], SIN_COL_STRIDE=sin.strides[1],
        KC_LAYER_STRIDE=kls, KC_BLOCK_STRIDE=kbs, KC_SLOT_STRIDE=kss, KC_HEAD_STRIDE=khs,
        VC_LAYER_STRIDE=vls, VC_BLOCK_STRIDE=vbs, VC_SLOT_STRIDE=vss, VC_HEAD_STRIDE=vhs,
        BLOCK_SIZE=block_size, BLOCK_T=block_t, BLOCK_HALF=block_half, BLOCK_PASS=block_pass, BLOCK_D=block_d,
        HAS_PASS=has_pass, HW_CAST=target != "interpreter",
        TOKENS_MULT16=T % 16 == 0, SLOTS_MULT16=slot_mapping.shape[0] % 16 == 0,
        STREAM=streams(T, qkv.shape[1] * ITEMSIZE[in_dtype], target),
    )
    scalars = dict(
        num_tokens=T, num_slot_entries=slot_mapping.shape[0], num_cache_slots=num_blocks * block_size,
        num_table_rows=cos.shape[0], eps=float(eps), norm_weight_offset=float(norm_weight_offset),
    )
    out_shapes = {
        "q": ((T, QH, D), in_dtype),
        "gate": ((T, QH, D), in_dtype) if attn_output_gate else None,
        "k": ((T, KVH, D), in_dtype) if return_kv else None,
        "v": ((T, KVH, D), in_dtype) if return_kv else None,
    }
    grid = (max(1, -(-T // block_t)) * num_head_progs,) if T > 0 else (0,)
    dt = lambda a: None if a is None else a.dtype  # noqa: E731
    pointer_dtypes = dict(
        qkv=in_dtype, q_weight=dt(q_weight), k_weight=dt(k_weight), cos=cos.dtype, sin=sin.dtype,
        positions=positions.dtype, offsets=dt(offsets), slot_mapping=slot_mapping.dtype, k_scale=dt(k_scale),
        v_scale=dt(v_scale), layer="int32" if has_layer else None, key_cache_in=key_cache.dtype,
        value_cache_in=value_cache.dtype, key_cache=key_cache.dtype, value_cache=value_cache.dtype,
        **{n: (None if out_shapes[n] is None else in_dtype) for n in ("q", "gate", "k", "v")})
    plan = LaunchPlan(grid=grid, num_warps=num_warps, constexprs=constexprs, scalars=scalars, out_shapes=out_shapes,
                      num_tokens=T, has_layer=has_layer, pointer_dtypes=pointer_dtypes)
    for fn in _plan_observers:
        fn(plan, target)
    return plan


def check_layer(cache_shape, layer) -> None:
    """Validate ``layer`` against a cache shape: required (int in range or ``"dynamic"``) iff 5-D."""
    if len(cache_shape) == 5:
        num_layers = cache_shape[0]
        if layer is None:
            raise ValueError(
                f"layer must be given when the caches have a leading layer axis (shape {tuple(cache_shape)})")
        if _is_int(layer):
            if not 0 <= layer < num_layers:
                raise ValueError(f"layer must be in [0, {num_layers}), got {layer}")
        elif layer != "dynamic":
            raise TypeError(f"layer must be None, an int or a traced int32 scalar, got {type(layer).__name__}")
    elif layer is not None:
        raise ValueError("layer is only valid when the caches have a leading layer axis [L, ...] (5-D caches), "
                         f"got cache shape {tuple(cache_shape)}")


STREAM_MIN_BYTES = 16 << 20
STREAM_MAX_BYTES = 128 << 20


def streams(num_tokens: int, qkv_row_bytes: int, target: str) -> bool:
    """Whether the kernel marks the data it touches once (qkv loads, every store) evict-first in the GPU's L2.

    On when the qkv input is at least ``STREAM_MIN_BYTES`` (16 MiB) and below ``STREAM_MAX_BYTES`` (128 MiB);
    for S1 (12 KiB of qkv per token) that is 1366 <= T < 10923. The rule comes from ``fused-qkv bench
    --sweep-stream`` on the H100 (bench/NOTES.md, version 5): the hints took 2-7 % off at T = 2048 and 4096 on
    every shape, but added 1.0-1.8 % at T >= 16384 on S1, S3 and S4. Below the window (T = 1024 gained 1-3 %, a
    latency-bound size whose outputs fit in L2) nothing is marked, so the outputs stay in L2 for the kernel that
    reads them next. Never under the interpreter.
    """
    if target != "interpreter" and STREAM_OVERRIDE is not None:  # bench --sweep-stream only
        return STREAM_OVERRIDE
    return target != "interpreter" and STREAM_MIN_BYTES <= num_tokens * qkv_row_bytes < STREAM_MAX_BYTES


STREAM_OVERRIDE = None  # True/False forced on GPU targets by `fused-qkv bench --sweep-stream`; never set otherwise


TILE_OVERRIDE = None  # (BLOCK_T, num_warps) forced on GPU targets by `fused-qkv bench --sweep`; never set otherwise


def choose_tiles(num_tokens: int, block_d: int, target: str, warp_size: int = 32):
    """Deterministic (BLOCK_T, num_warps) from shapes only; shared by every frontend.

    Under the interpreter, each program costs Python overhead, so tiles are large. On GPUs the rule comes from
    ``fused-qkv bench --sweep`` on the H100 (bench/NOTES.md, version 2): about 16 elements of a head per thread
    was best for every shape; tiles of 16 tokens for head_dim 128 (2 at T <= 16, where more programs win), and
    tiles of 2 tokens with one warp for head_dim 256 (S2: 90 % of copy bandwidth at T=4096 against 66 % with
    8 x 256 tiles and 8 warps).
    """
    if target != "interpreter" and TILE_OVERRIDE is not None:  # bench --sweep only
        return TILE_OVERRIDE
    if target == "interpreter":
        block_t = min(next_pow2(max(num_tokens, 1)), max(1, 8192 // block_d))
        num_warps = min(8, next_pow2(max(1, block_t * block_d // (8 * warp_size))))
        return block_t, num_warps
    if block_d >= 256 or num_tokens <= 16:
        block_t = 2
    else:
        block_t = max(1, 2048 // block_d)
    block_t = min(block_t, next_pow2(max(num_tokens, 1)))
    num_warps = min(8, next_pow2(max(1, block_t * block_d // (16 * warp_size))))
    return block_t, num_warps


def check_overlaps(qkv: ArrayInfo, key_cache: ArrayInfo, value_cache: ArrayInfo) -> None:
    """The caches are written in place: they must not share memory with each other or with qkv."""
    if _may_share_elements(key_cache, value_cache):
        raise ValueError("key_cache and value_cache must not overlap in memory")
    for cname, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if _may_share_elements(cache, qkv):
            raise ValueError(f"{cname} must not overlap qkv in memory")


def _may_share_elements(a: ArrayInfo, b: ArrayInfo) -> bool:
    """Whether two arrays may touch the same bytes (False when their pointers are unknown).

    Exact for two views with the same shape, strides and dtype whose strides nest (each
    stride at least the extent of the smaller ones), like vLLM's ``kv_cache[:, 0]`` and
    ``kv_cache[:, 1]``; otherwise conservative (byte ranges overlap).
    """
    sa, sb = a.byte_span(), b.byte_span()
    if sa is None or sb is None or not (sa[0] < sb[1] and sb[0] < sa[1]):
        return False
    if (a.shape, a.strides, a.dtype) != (b.shape, b.strides, b.dtype):
        return True
    size = ITEMSIZE.get(a.dtype, 1)
    delta, rem = divmod(b.data_ptr - a.data_ptr, size)
    if rem:
        return True
    dims = sorted((st, n) for n, st in zip(a.shape, a.strides, strict=True) if n > 1)
    extent = 1
    for st, n in dims:  # nesting check, smallest stride first
        if st < extent:
            return True
        extent = st * (n - 1) + extent
    for st, n in reversed(dims):  # unique mixed-radix digits of delta
        digit = max(-(n - 1), min(n - 1, int(delta / st)))
        delta -= digit * st
    return delta == 0


def _layout_str(layout: str) -> str:
    return ("[num_blocks, block_size, num_kv_heads, head_dim]" if layout == "NHD"
            else "[num_blocks, num_kv_heads, block_size, head_dim]")


def tensor_parallel_columns(num_shards: int, *, num_q_heads: int, num_kv_heads: int, head_dim: int,
                            attn_output_gate: bool = False, gated_qkv_layout: str = "interleaved"):
    """Column order that makes each of ``num_shards`` equal column blocks a packed qkv of its own heads.

    Returns a list ``perm`` of qkv column indices: ``qkv[:, perm]`` (or, once and offline, the QKV
    projection weight's output columns permuted the same way) is ``[shard 0 | shard 1 | ...]`` where
    shard ``r`` holds Q heads ``r*QH/n ...`` (with their gates, in the same gate layout), then its K heads,
    then its V heads: exactly the packed layout the op expects with ``num_q_heads=QH/n``,
    ``num_kv_heads=KVH/n``. Split that array's last axis across the mesh axis (``PartitionSpec(None, axis)``)
    and the caches' KV-head axis the same way.
    """
    _check_positive_int("num_shards", num_shards)
    check_config(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, eps=0.0,
                 norm_weight_offset=0.0, is_neox=True, rotary_dim=None, attn_output_gate=attn_output_gate,
                 gated_qkv_layout=gated_qkv_layout, kv_cache_layout="NHD", return_kv=True)
    if num_q_heads % num_shards or num_kv_heads % num_shards:
        raise ValueError(f"num_shards ({num_shards}) must divide num_q_heads ({num_q_heads}) and num_kv_heads "
                         f"({num_kv_heads})")
    D, QH, KVH = head_dim, num_q_heads, num_kv_heads
    qs, ks = QH // num_shards, KVH // num_shards
    q_cols = QH * D * (2 if attn_output_gate else 1)

    def head(col0, h):
        return list(range(col0 + h * D, col0 + (h + 1) * D))

    perm = []
    for r in range(num_shards):
        q_heads = range(r * qs, (r + 1) * qs)
        if attn_output_gate and gated_qkv_layout == "interleaved":  # [q_h | g_h] pairs stay together
            for h in q_heads:
                perm += list(range(2 * h * D, 2 * (h + 1) * D))
        elif attn_output_gate:  # blocked: this shard's Q heads, then its gate heads
            perm += [c for h in q_heads for c in head(0, h)] + [c for h in q_heads for c in head(QH * D, h)]
        else:
            perm += [c for h in q_heads for c in head(0, h)]
        kv_heads = range(r * ks, (r + 1) * ks)
        perm += [c for h in kv_heads for c in head(q_cols, h)]
        perm += [c for h in kv_heads for c in head(q_cols + KVH * D, h)]
    return perm
