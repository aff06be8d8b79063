"""The framework-free launch plan: validation, grid, constexprs and argument order.

Every frontend describes its arrays as :class:`ArrayInfo` (shape, strides in elements, dtype name, device string,
optional data pointer) keyed by the names of :data:`ARRAY_NAMES`, and calls :func:`plan_launch` with an
:class:`~fused_qkv.core.config.OpConfig`. It raises ``TypeError``/``ValueError`` naming the offending argument and
returns a :class:`LaunchPlan` with everything a launch needs, computed from shapes, dtypes and strides alone (never
from device data, so no host synchronisation is ever needed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Optional

from .config import OpConfig, check_int

# The array arguments of the public functions, in their positional order, then the optional keyword ones.
# The last three are the fp8-attention arguments (the ``..._fp8`` entry points); the first twelve are the main
# entry points' (FAST_PATH_ARRAYS: what the eager fast paths and the native launcher take).
ARRAY_NAMES = ("qkv", "q_weight", "k_weight", "cos", "sin", "positions", "key_cache", "value_cache", "slot_mapping",
               "offsets", "k_scale", "v_scale", "q_scale", "k_scale_cache", "v_scale_cache")
FAST_PATH_ARRAYS = ARRAY_NAMES[:12]
FP8_ATTENTION_ARRAYS = ARRAY_NAMES[12:]
REQUIRED_ARRAYS = ("qkv", "key_cache", "value_cache", "slot_mapping")  # cos, sin, positions: None on NoPE layers

# Kernel argument order (see core/kernel.py). jax-triton passes inputs, then scalars, then one pointer per output;
# constexprs go by keyword.
INPUT_NAMES = (
    "qkv", "q_weight", "k_weight", "cos", "sin", "positions", "offsets", "slot_mapping",
    "k_scale", "v_scale", "layer", "key_cache_in", "value_cache_in", "q_scale", "k_scale_cache_in",
    "v_scale_cache_in",
)
SCALAR_NAMES = ("num_tokens", "num_slot_entries", "num_cache_slots", "num_table_rows", "eps", "norm_weight_offset")
OUTPUT_NAMES = ("q", "gate", "k", "v", "key_cache", "value_cache", "q_scales", "k_scale_cache", "v_scale_cache")
ALLOCATED_OUTPUTS = ("q", "gate", "k", "v", "q_scales")  # the frontend allocates these; the rest are in place

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

# fp8 dtypes q may take (``q_dtype``): e4m3 only, the attention kernels' input format, in each target's variant
TARGET_Q_FP8 = {
    "interpreter": ("float8_e4m3fn", "float8_e4m3fnuz"),
    "cuda": ("float8_e4m3fn",),
    "hip:gfx942": ("float8_e4m3fnuz",),
    "hip:gfx950": ("float8_e4m3fn",),
}
TINY = 2.0**-126  # the floor of a dynamic scale (float32's smallest normal): an all-zero head divides by it

# Triton's interpreter has no IR type for fnuz fp8: there the kernel encodes the bits itself.
SOFT_FP8_ON_INTERPRETER = ("float8_e4m3fnuz",)
# Compile options every frontend passes: the kernel's rotation and norm count on fused multiply-adds, and Triton's
# default for them is changing (3.9 warns that 3.10 turns them off), so they are asked for, never defaulted
COMPILE_OPTIONS = {"enable_fp_fusion": True}


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What the plan needs to know of one array: no data, no framework.

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
    # output name -> (shape, dtype name) for the outputs the frontend allocates (ALLOCATED_OUTPUTS); absent ones
    # (gate without attn_output_gate, k/v without return_kv, q_scales unless q is fp8 with dynamic scales) map to None.
    out_shapes: Mapping[str, Optional[tuple]]
    num_tokens: int
    has_layer: bool
    # dtype name of every pointer argument (INPUT_NAMES + OUTPUT_NAMES), None where the argument is absent
    pointer_dtypes: Mapping[str, Optional[str]] = dataclasses.field(default_factory=dict)


def ordered_args(inputs: Mapping[str, Any], scalars: Mapping[str, Any], outputs: Mapping[str, Any]) -> list:
    """Positional kernel arguments in kernel order: inputs, scalars, outputs."""
    return ([inputs[n] for n in INPUT_NAMES] + [scalars[n] for n in SCALAR_NAMES]
            + [outputs[n] for n in OUTPUT_NAMES])


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ------------------------------------------------------------------------------------------------ checks
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


def _check_device(name, arr: ArrayInfo, device):
    if arr.device != device:
        raise ValueError(f"{name} must be on the same device as qkv ({device}), got {arr.device}")


def _check_qkv(qkv: ArrayInfo, config: OpConfig) -> None:
    gate_mult = 2 if config.attn_output_gate else 1
    kv_mult = 1 if config.k_eq_v else 2
    width = config.qkv_width
    _check_ndim("qkv", qkv, 2, "[num_tokens, (num_q_heads*(2 if gate) + (1 if k_eq_v else 2)*num_kv_heads)*head_dim]")
    _check_dtype("qkv", qkv, FLOAT_INPUT_DTYPES)
    if qkv.shape[1] != width:
        raise ValueError(
            f"qkv must have width (num_q_heads*{gate_mult} + {kv_mult}*num_kv_heads)*head_dim = "
            f"({config.num_q_heads}*{gate_mult} + {kv_mult}*{config.num_kv_heads})*{config.head_dim} = {width}"
            f"{' (k_eq_v: no V block)' if config.k_eq_v else ''}, got {qkv.shape[1]}")
    if width > 1 and qkv.strides[1] != 1:
        raise ValueError(f"qkv must be contiguous in its last dim (stride 1), got strides {tuple(qkv.strides)}")
    if qkv.shape[0] > 1 and qkv.strides[0] < width:
        raise ValueError(f"qkv row stride must be >= its width {width}, got {qkv.strides[0]}")


def _check_weights(arrays, config: OpConfig) -> None:
    D, device = config.head_dim, arrays["qkv"].device
    for name in ("q_weight", "k_weight"):
        w = arrays[name]
        if w is None:
            continue
        _check_ndim(name, w, 1, f"[head_dim={D}]")
        if w.shape[0] != D:
            raise ValueError(f"{name} must have head_dim={D} entries, got {w.shape[0]}")
        _check_dtype(name, w, WEIGHT_DTYPES)
        if w.strides[0] != 1:
            raise ValueError(f"{name} must be contiguous, got stride {w.strides[0]}")
        _check_device(name, w, device)


def _check_tables(arrays, config: OpConfig) -> bool:
    """Returns whether the call rotates (cos and sin given; both None is a NoPE layer)."""
    rotary_dim, device = config.rotary, arrays["qkv"].device
    half = rotary_dim // 2
    cos, sin = arrays["cos"], arrays["sin"]
    if cos is None or sin is None:
        if cos is not None or sin is not None:
            given, missing = ("cos", "sin") if sin is None else ("sin", "cos")
            raise ValueError(f"{missing} is None but {given} is given: pass both tables, or neither for a layer "
                             f"without RoPE (NoPE)")
        for name, value in (("rotary_dim", config.rotary_dim), ("mrope_section", config.mrope_section),
                            ("offsets", arrays["offsets"])):
            if value is not None:
                raise ValueError(f"{name} must be None when cos and sin are None (a layer without RoPE), got "
                                 f"{value if name != 'offsets' else 'an array'}")
        return False
    for name, tab in (("cos", cos), ("sin", sin)):
        _check_ndim(name, tab, 2, "[max_positions, rotary_dim/2 or rotary_dim]")
        _check_dtype(name, tab, TABLE_DTYPES)
        _check_device(name, tab, device)
        if tab.shape[1] not in (half, rotary_dim):
            raise ValueError(
                f"{name} last dim must be rotary_dim/2={half} (half table) or rotary_dim={rotary_dim} "
                f"(full table), got {tab.shape[1]}")
        if tab.shape[0] < 1:
            raise ValueError(f"{name} must have at least one row (position)")
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if arrays["positions"] is None:
        raise TypeError("positions is required when cos and sin are given, got None")
    return True


def _check_positions(pos: ArrayInfo, T: int, config: OpConfig, device) -> None:
    if config.mrope_section is None:
        _check_vector("positions", pos, T, INDEX_DTYPES)
    else:
        _check_ndim("positions", pos, 2, "[3, T] (mrope_section: temporal, height, width rows)")
        _check_dtype("positions", pos, INDEX_DTYPES)
        if tuple(pos.shape) != (3, T):
            raise ValueError(f"positions must be [3, num_tokens={T}] with mrope_section, got {tuple(pos.shape)}")
    _check_device("positions", pos, device)


def _check_index_arrays(arrays, config: OpConfig, rotates: bool) -> None:
    T, device = arrays["qkv"].shape[0], arrays["qkv"].device
    if rotates or arrays["positions"] is not None:  # without tables it is not read, but must still make sense
        _check_positions(arrays["positions"], T, config, device)
    if arrays["offsets"] is not None:
        _check_vector("offsets", arrays["offsets"], T, INDEX_DTYPES)
        _check_device("offsets", arrays["offsets"], device)
    _check_vector("slot_mapping", arrays["slot_mapping"], T, INDEX_DTYPES, exact=False)
    _check_device("slot_mapping", arrays["slot_mapping"], device)


def _layout_str(layout: str) -> str:
    return ("[num_blocks, block_size, num_kv_heads, head_dim]" if layout == "NHD"
            else "[num_blocks, num_kv_heads, block_size, head_dim]")


def _check_caches(arrays, config: OpConfig, layer, target: str) -> tuple:
    """Returns (num_blocks, block_size) of the caches."""
    key_cache, value_cache = arrays["key_cache"], arrays["value_cache"]
    qkv, layout = arrays["qkv"], config.kv_cache_layout
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if cache.ndim not in (4, 5):
            raise ValueError(
                f"{name} must be 4-D ({_layout_str(layout)}) or 5-D with a leading layer axis, "
                f"got shape {tuple(cache.shape)}")
        _check_device(name, cache, qkv.device)
        if cache.dtype != qkv.dtype and cache.dtype not in FP8_FORMATS:
            raise TypeError(
                f"{name} dtype must be the input dtype ({qkv.dtype}) or one of {list(FP8_FORMATS)}, got {cache.dtype}")
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
    if layout == "NHD":
        num_blocks, block_size, c_heads, c_dim = page_shape
    else:
        num_blocks, c_heads, block_size, c_dim = page_shape
    if c_heads != config.num_kv_heads or c_dim != config.head_dim:
        raise ValueError(
            f"key_cache shape {tuple(key_cache.shape)} does not match layout {layout} "
            f"{_layout_str(layout)} with num_kv_heads={config.num_kv_heads}, head_dim={config.head_dim}")
    if block_size < 1 or num_blocks < 1:
        raise ValueError(f"key_cache must have at least one block of at least one slot, got {tuple(key_cache.shape)}")
    if key_cache.ndim == 5 or layer is not None:
        check_layer(key_cache.shape, layer)
    return num_blocks, block_size


def _scale_modes(arrays, config: OpConfig, target: str) -> dict:
    """K/V: 0 no scale, 1 one per tensor, 2 one per KV head, 3 one per token and KV head (a scale cache). Q (key
    ``q_scale``): 0 q in the input dtype, 1 fp8 with a static scale, 2 fp8 with a dynamic scale per token and head."""
    modes = {"q_scale": _q_mode(arrays, config, target)}
    for name, cname, sname in (("k_scale", "key_cache", "k_scale_cache"), ("v_scale", "value_cache", "v_scale_cache")):
        sc = arrays[name]
        if arrays[sname] is not None:
            _check_scale_cache(arrays, sname, cname, name)
            modes[name] = 3
            continue
        if sc is None:
            modes[name] = 0
            continue
        _check_dtype(name, sc, ("float32",))
        _check_device(name, sc, arrays["qkv"].device)
        if sc.ndim > 1 or sc.numel not in (1, config.num_kv_heads):
            raise ValueError(f"{name} must hold 1 element or num_kv_heads={config.num_kv_heads} elements (1-D), "
                             f"got shape {tuple(sc.shape)}")
        if sc.numel > 1 and sc.strides[0] != 1:
            raise ValueError(f"{name} must be contiguous")
        modes[name] = 1 if sc.numel == 1 else 2
    return modes


def _q_mode(arrays, config: OpConfig, target: str) -> int:
    q_scale = arrays["q_scale"]
    if config.q_dtype is None:
        if q_scale is not None:
            raise ValueError("q_scale is given but q_dtype is None: q_scale divides an fp8 q (pass q_dtype)")
        return 0
    if config.q_dtype not in TARGET_Q_FP8[target]:
        raise TypeError(f"q_dtype {config.q_dtype} is not supported on target {target}; supported there: "
                        f"{list(TARGET_Q_FP8[target])} (fp8 q is e4m3)")
    if q_scale is None:
        return 2
    _check_dtype("q_scale", q_scale, ("float32",))
    _check_device("q_scale", q_scale, arrays["qkv"].device)
    if q_scale.ndim > 1 or q_scale.numel != 1:
        raise ValueError(f"q_scale must hold 1 element (a static per-tensor scale; None for dynamic per-token-head "
                         f"scales), got shape {tuple(q_scale.shape)}")
    return 1


def _check_scale_cache(arrays, sname: str, cname: str, static_name: str) -> None:
    """A per-token-head scale cache: float32, the cache's shape without head_dim, next to an fp8 cache."""
    sc, cache = arrays[sname], arrays[cname]
    if arrays[static_name] is not None:
        raise ValueError(f"{sname} and {static_name} are both given: pass a static scale or a per-token-head scale "
                         f"cache, not both")
    if cache.dtype not in FP8_FORMATS:
        raise TypeError(f"{sname} needs an fp8 {cname}, got {cname} dtype {cache.dtype}")
    _check_dtype(sname, sc, ("float32",))
    _check_device(sname, sc, arrays["qkv"].device)
    if tuple(sc.shape) != tuple(cache.shape[:-1]):
        raise ValueError(f"{sname} must have the shape of {cname} without its last (head_dim) axis, "
                         f"{tuple(cache.shape[:-1])}, got {tuple(sc.shape)}")


def check_scale_cache_overlaps(arrays) -> None:
    """The scale caches are written in place too: apart from each other, the caches and qkv."""
    names = ("qkv", "key_cache", "value_cache", "k_scale_cache", "v_scale_cache")
    for name in names[3:]:
        if arrays[name] is not None:
            check_distinct_elements(name, arrays[name])
    for i, a in enumerate(names):
        for b in names[max(i + 1, 3):]:
            if a != b and arrays[a] is not None and arrays[b] is not None and \
                    _may_share_elements(arrays[a], arrays[b]):
                raise ValueError(f"{b} must not overlap {a} in memory")


def check_layer(cache_shape, layer) -> None:
    """Validate ``layer`` against a cache shape: required (int in range or ``"dynamic"``) iff 5-D."""
    if len(cache_shape) == 5:
        num_layers = cache_shape[0]
        if layer is None:
            raise ValueError(
                f"layer must be given when the caches have a leading layer axis (shape {tuple(cache_shape)})")
        if isinstance(layer, int) and not isinstance(layer, bool):
            if not 0 <= layer < num_layers:
                raise ValueError(f"layer must be in [0, {num_layers}), got {layer}")
        elif layer != "dynamic":
            raise TypeError(f"layer must be None, an int or a traced int32 scalar, got {type(layer).__name__}")
    elif layer is not None:
        raise ValueError("layer is only valid when the caches have a leading layer axis [L, ...] (5-D caches), "
                         f"got cache shape {tuple(cache_shape)}")


# ------------------------------------------------------------------------------------------------ the plan
def plan_launch(arrays: Mapping[str, Optional[ArrayInfo]], config: OpConfig, *, layer: Any = None,
                target: str = "interpreter", warp_size: int = 32) -> LaunchPlan:
    """Validate every array against ``config`` and compute the launch.

    ``arrays``: an :class:`ArrayInfo` (or None where optional) for every name of :data:`ARRAY_NAMES`.
    ``layer``: ``None`` (caches are 4-D), a Python int, or the string ``"dynamic"`` (a traced scalar; only the
    frontend knows its value) when caches are 5-D ``[L, ...]``. ``target``: ``"interpreter"``, ``"cuda"``,
    ``"hip:gfx942"`` or ``"hip:gfx950"``; decides which fp8 cache dtypes are allowed and the tile heuristics.
    """
    if not isinstance(config, OpConfig):
        raise TypeError(f"config must be an OpConfig, got {type(config).__name__}")
    if target not in TARGET_FP8:
        raise ValueError(f"target must be one of {list(TARGET_FP8)}, got {target!r}")
    for name in REQUIRED_ARRAYS:
        if arrays.get(name) is None:
            raise TypeError(f"{name} is required, got None")
    arrays = {n: arrays.get(n) for n in ARRAY_NAMES}
    _check_qkv(arrays["qkv"], config)
    _check_weights(arrays, config)
    rotates = _check_tables(arrays, config)
    _check_index_arrays(arrays, config, rotates)
    num_blocks, block_size = _check_caches(arrays, config, layer, target)
    scale_modes = _scale_modes(arrays, config, target)
    check_overlaps(arrays["qkv"], arrays["key_cache"], arrays["value_cache"])  # the caches are written in place
    check_scale_cache_overlaps(arrays)
    plan = _build_plan(arrays, config, rotates, num_blocks, block_size, scale_modes, target, warp_size)
    for observer in _plan_observers:
        observer(plan, target)
    return plan


def _cache_strides(cache: ArrayInfo, layout: str):
    """(layer, block, slot, head) strides in elements; layer 0 for 4-D caches."""
    s = cache.strides[-4:]
    layer_stride = cache.strides[0] if cache.ndim == 5 else 0
    if layout == "NHD":
        return layer_stride, s[0], s[1], s[2]
    return layer_stride, s[0], s[2], s[1]


def _dtype_or_none(arr: Optional[ArrayInfo]) -> Optional[str]:
    return None if arr is None else arr.dtype


def _scale_cache_strides(sc: Optional[ArrayInfo], layout: str):
    """(layer, block, slot, head) strides in elements of a scale cache (the cache's shape without head_dim)."""
    if sc is None:
        return 0, 0, 0, 0
    s = sc.strides[-3:]
    layer_stride = sc.strides[0] if sc.ndim == 4 else 0
    if layout == "NHD":
        return layer_stride, s[0], s[1], s[2]
    return layer_stride, s[0], s[2], s[1]


def _fp8_constants(dtype: str):
    f = FP8_FORMATS.get(dtype)
    return (f.mbits, f.emin, f.max_finite) if f else (0, 0, 0.0)


def _layout_constexprs(config: OpConfig, rotates: bool, num_tokens: int, dynamic_q: bool, block_t: int) -> dict:
    """Where each head's channels are in a qkv row, and the rotary pairing (NoPE: the NeoX split, unrotated)."""
    D, QH, KVH, half = config.head_dim, config.num_q_heads, config.num_kv_heads, config.rotary // 2
    gate_mult = 2 if config.attn_output_gate else 1
    interleaved = config.attn_output_gate and config.gated_qkv_layout == "interleaved"
    neox = config.is_neox or not rotates  # contiguous halves load as the widest vectors
    k_col0 = QH * gate_mult * D
    group = head_group(config, rotates, num_tokens, dynamic_q)
    rows = head_rows(QH, KVH, D, rotates and config.mrope_section is None, group, block_t)
    return dict(
        NUM_Q_HEADS=QH, NUM_KV_HEADS=KVH, HEAD_DIM=D, HALF_ROT=half,
        PAIR_STEP=1 if neox else 2, PAIR_DELTA=half if neox else 1,
        **head_program_constexprs(QH, KVH, group, rows, config.attn_output_gate),
        Q_HEAD_STRIDE=2 * D if interleaved else D,
        GATE_COL0=D if interleaved else QH * D, GATE_HEAD_STRIDE=2 * D if interleaved else D,
        K_COL0=k_col0, V_COL0=k_col0 if config.k_eq_v else k_col0 + KVH * D,  # k_eq_v: V reads the K block
    )


GROUP_MIN_TOKENS = 513
# from here up to GROUP_WIDE_TOKENS, pairs of heads: more programs beat fewer table reads at T 4096-8192
GROUP_PAIR_TOKENS = 4096
GROUP_WIDE_TOKENS = 8193
GROUP_DYNAMIC_Q_TOKENS = 4096  # from here, dynamic fp8 q where heads in rows do not apply: 4 heads per program
GROUP_DYNAMIC_Q_ROWS_TOKENS = 16384  # the same where they do (plan.rows_apply)


def head_group(config: OpConfig, rotates: bool, num_tokens: int, dynamic_q: bool = False) -> int:
    """Q and K heads per program (a power of two dividing both head counts).

    mRoPE reads three table rows per token, more than the qkv data of a head at head_dim 128, so from
    GROUP_MIN_TOKENS tokens several heads share one read of them: 4, except 2 for GROUP_PAIR_TOKENS <= T <
    GROUP_WIDE_TOKENS. Below GROUP_MIN_TOKENS the programs' parallelism wins. The H200 sweep of S5
    (tools/group_sweep.py, bench/results/group_sweep.json; docs/performance.md): heads per program 1 / 2 / 4 / 8
    take 9.6 / 7.9 / 7.3 / 9.0 us at T=1024, 34.8 / 32.9 / 33.4 / 34.9 at 4096, 66.6 / 62.6 / 62.6 / 64.1 at 8192
    and 288.1 / 249.1 / 237.0 / 239.1 at 32768.

    Dynamic fp8 q (``dynamic_q``) without mRoPE: 4 from GROUP_DYNAMIC_Q_TOKENS, so that a program stores four
    adjacent q scales of each token, not one 4-byte store per (token, head) 4 * QH bytes from the next; where
    heads in rows apply, their rows already store a token's scales side by side, and 4 heads per program (of 2
    in rows) win only from GROUP_DYNAMIC_Q_ROWS_TOKENS. The H200 sweep of S8 (bench/results/s8_sweep.json, % of
    copy): 8 heads in the 8 rows of 1024-element tiles (:func:`choose_tiles`) 86.5 / 88.2 / 87.5 / 88.5 at T = 4096 /
    8192 / 16384 / 32768, a loop of 4 tiles of 2 heads in rows 82.6 / 86.3 / 91.4 / 93.2.

    1 otherwise: other calls share their table rows between heads in a tile's rows (:func:`head_rows`), which
    keeps the programs small; a loop of 4 heads was 1 % slower than 8 heads in rows on S1 and S3 at T=32768
    (bench/results/rows_sweep.json)."""
    if rotates and config.mrope_section is not None:
        if num_tokens < GROUP_MIN_TOKENS:
            return 1
        widest = 2 if GROUP_PAIR_TOKENS <= num_tokens < GROUP_WIDE_TOKENS else 4
    elif dynamic_q:
        rows = rows_apply(config.num_q_heads, config.num_kv_heads, config.head_dim, rotates)
        if num_tokens < (GROUP_DYNAMIC_Q_ROWS_TOKENS if rows else GROUP_DYNAMIC_Q_TOKENS):
            return 1
        widest = 4
    else:
        return 1
    return next(g for g in (widest, 2, 1) if config.num_q_heads % g == 0 and config.num_kv_heads % g == 0)


ROWS_HEADS = 8  # Q (K) heads per program, rows times group, for rotating calls without mRoPE at head_dim <= 128
ROWS_MIN_BLOCK_T = 8  # not in the 2-token tiles of T <= 16
ROWS_MAX_HEAD_DIM = 128


def launch_grid(num_tokens: int, constexprs: dict) -> tuple:
    """The 1-D grid: BLOCK_T / HEAD_ROWS tokens per program, NUM_HEAD_PROGS programs per token block."""
    if num_tokens <= 0:
        return (0,)
    per_prog = constexprs["BLOCK_T"] // constexprs["HEAD_ROWS"]
    return (max(1, -(-num_tokens // per_prog)) * constexprs["NUM_HEAD_PROGS"],)


def head_program_constexprs(num_q_heads: int, num_kv_heads: int, group: int, rows: int, gate: bool) -> dict:
    """The kernel's head list for ``group`` tiles of ``rows`` heads per Q/K program and ``rows`` heads per V and
    gate program: ``[Q programs | K programs | V programs | gate programs]``."""
    qk = group * rows
    k_end = num_q_heads // qk + num_kv_heads // qk
    v_end = k_end + num_kv_heads // rows
    return dict(NUM_HEAD_PROGS=v_end + (num_q_heads // rows if gate else 0), K_END=k_end, V_END=v_end,
                HEAD_GROUP=group, NUM_Q_PROGS=num_q_heads // qk, HEAD_ROWS=rows)


def rows_apply(num_q_heads: int, num_kv_heads: int, head_dim: int, rotates_without_mrope: bool) -> bool:
    """Whether a call may put several heads in a tile's rows (:func:`head_rows`; on GPUs above T=16)."""
    return (rotates_without_mrope and head_dim <= ROWS_MAX_HEAD_DIM and num_q_heads % 2 == 0
            and num_kv_heads % 2 == 0)


def dynamic_rows(q_scale_mode: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 rotates_without_mrope: bool) -> bool:
    """A dynamic fp8 q whose heads sit in rows: :func:`choose_tiles`' ``dynamic_rows`` (shared by the plan and
    ``aot.retarget``)."""
    return q_scale_mode == 2 and rows_apply(num_q_heads, num_kv_heads, head_dim, rotates_without_mrope)


def head_rows(num_q_heads: int, num_kv_heads: int, head_dim: int, rotates_without_mrope: bool, group: int,
              block_t: int) -> int:
    """Heads side by side in a tile's rows (a power of two dividing both head counts over ``group``, at most
    ``block_t``): the BLOCK_T rows are then BLOCK_T / rows tokens of that many heads, and a warp's lanes that
    read the same token's table row share one load, so the L2 serves each table row once per program, not once
    per head (the tables of a 16-token tile are twice its qkv bytes at head_dim 128, full rotary).

    ROWS_HEADS // group where :func:`rows_apply` (rotating without mRoPE at head_dim <= ROWS_MAX_HEAD_DIM, even
    head counts) in tiles of at least ROWS_MIN_BLOCK_T rows; 1 otherwise, or what :func:`head_rows_override`
    sets. The H200 sweep (bench/results/rows_sweep.json, tools/group_sweep.py --rows-list; docs/performance.md)."""
    if _overrides["head_rows"] is not None:
        rows = _overrides["head_rows"]
    elif rows_apply(num_q_heads, num_kv_heads, head_dim, rotates_without_mrope) and block_t >= ROWS_MIN_BLOCK_T:
        rows = max(1, ROWS_HEADS // group)
    else:
        return 1
    while rows > 1 and (num_q_heads % (group * rows) or num_kv_heads % (group * rows) or rows > block_t):
        rows //= 2
    return rows


def _mrope_constexprs(config: OpConfig, positions: Optional[ArrayInfo]) -> dict:
    """MROPE 0: one position per token; 1: contiguous (t, h, w) sections; 2: interleaved (Qwen3-VL)."""
    section = config.mrope_section
    if section is None:
        return dict(MROPE=0, MROPE_T=0, MROPE_H=0, MROPE_W=0, POS_ROW_STRIDE=0)
    return dict(MROPE=2 if config.mrope_interleaved else 1, MROPE_T=section[0], MROPE_H=section[1],
                MROPE_W=section[2], POS_ROW_STRIDE=positions.strides[0])


def _build_plan(arrays, config: OpConfig, rotates, num_blocks, block_size, scale_modes, target,
                warp_size) -> LaunchPlan:
    qkv, key_cache, value_cache = arrays["qkv"], arrays["key_cache"], arrays["value_cache"]
    cos, sin, positions, offsets = arrays["cos"], arrays["sin"], arrays["positions"], arrays["offsets"]
    slot_mapping = arrays["slot_mapping"]
    T, D, rotary_dim = qkv.shape[0], config.head_dim, config.rotary
    half, in_dtype, has_layer = rotary_dim // 2, qkv.dtype, key_cache.ndim == 5
    full_table = rotates and cos.shape[1] == rotary_dim and rotary_dim != half
    kls, kbs, kss, khs = _cache_strides(key_cache, config.kv_cache_layout)
    vls, vbs, vss, vhs = _cache_strides(value_cache, config.kv_cache_layout)
    (k_mbits, k_emin, k_max), (v_mbits, v_emin, v_max) = map(_fp8_constants, (key_cache.dtype, value_cache.dtype))
    q_dtype = config.q_dtype or in_dtype
    q_mbits, q_emin, q_max = _fp8_constants(q_dtype)
    ks_strides = _scale_cache_strides(arrays["k_scale_cache"], config.kv_cache_layout)
    vs_strides = _scale_cache_strides(arrays["v_scale_cache"], config.kv_cache_layout)
    has_pass = rotary_dim < D
    block_d = next_pow2(D)
    rows_q = dynamic_rows(scale_modes["q_scale"], config.num_q_heads, config.num_kv_heads, D,
                          rotates and config.mrope_section is None)
    block_t, num_warps = choose_tiles(T, block_d, target, warp_size, dynamic_rows=rows_q)
    constexprs = dict(
        _layout_constexprs(config, rotates, T, scale_modes["q_scale"] == 2, block_t),
        TABLE_STEP=2 if (full_table and not config.is_neox) else 1,
        HAS_ROPE=rotates, **_mrope_constexprs(config, positions if rotates else None), V_NORM=config.v_norm,
        HAS_Q_NORM=arrays["q_weight"] is not None, HAS_K_NORM=arrays["k_weight"] is not None,
        HAS_W_OFFSET=config.norm_weight_offset != 0.0,
        HAS_OFFSETS=offsets is not None, HAS_LAYER=has_layer, HAS_GATE=config.attn_output_gate,
        RETURN_KV=config.return_kv, K_SCALE_MODE=scale_modes["k_scale"], V_SCALE_MODE=scale_modes["v_scale"],
        K_MBITS=k_mbits, K_EMIN=k_emin, K_MAXV=k_max, V_MBITS=v_mbits, V_EMIN=v_emin, V_MAXV=v_max,
        Q_SCALE_MODE=scale_modes["q_scale"], Q_MBITS=q_mbits, Q_EMIN=q_emin, Q_MAXV=q_max,
        Q_SOFT_FP8=target == "interpreter" and q_dtype in SOFT_FP8_ON_INTERPRETER,
        KS_LAYER_STRIDE=ks_strides[0], KS_BLOCK_STRIDE=ks_strides[1], KS_SLOT_STRIDE=ks_strides[2],
        KS_HEAD_STRIDE=ks_strides[3], VS_LAYER_STRIDE=vs_strides[0], VS_BLOCK_STRIDE=vs_strides[1],
        VS_SLOT_STRIDE=vs_strides[2], VS_HEAD_STRIDE=vs_strides[3],
        K_SOFT_FP8=target == "interpreter" and key_cache.dtype in SOFT_FP8_ON_INTERPRETER,
        V_SOFT_FP8=target == "interpreter" and value_cache.dtype in SOFT_FP8_ON_INTERPRETER,
        QKV_ROW_STRIDE=qkv.strides[0], POS_STRIDE=positions.strides[-1] if rotates else 0,
        OFF_STRIDE=offsets.strides[0] if offsets is not None else 0, SLOT_STRIDE=slot_mapping.strides[0],
        COS_ROW_STRIDE=cos.strides[0] if rotates else 0, COS_COL_STRIDE=cos.strides[1] if rotates else 0,
        SIN_ROW_STRIDE=sin.strides[0] if rotates else 0, SIN_COL_STRIDE=sin.strides[1] if rotates else 0,
        KC_LAYER_STRIDE=kls, KC_BLOCK_STRIDE=kbs, KC_SLOT_STRIDE=kss, KC_HEAD_STRIDE=khs,
        VC_LAYER_STRIDE=vls, VC_BLOCK_STRIDE=vbs, VC_SLOT_STRIDE=vss, VC_HEAD_STRIDE=vhs,
        BLOCK_SIZE=block_size, BLOCK_T=block_t, BLOCK_HALF=next_pow2(half),
        BLOCK_PASS=next_pow2(D - rotary_dim) if has_pass else 1, BLOCK_D=block_d,
        HAS_PASS=has_pass, HW_CAST=hw_cast(target),
        TOKENS_MULT16=T % 16 == 0, SLOTS_MULT16=slot_mapping.shape[0] % 16 == 0,
        EVICT_FIRST=evict_first(T, qkv.shape[1] * ITEMSIZE[in_dtype], target),
    )
    scalars = dict(
        num_tokens=T, num_slot_entries=slot_mapping.shape[0], num_cache_slots=num_blocks * block_size,
        num_table_rows=cos.shape[0] if rotates else 1, eps=config.eps, norm_weight_offset=config.norm_weight_offset,
    )
    QH, KVH = config.num_q_heads, config.num_kv_heads
    out_shapes = {
        "q": ((T, QH, D), q_dtype),
        "gate": ((T, QH, D), in_dtype) if config.attn_output_gate else None,
        "k": ((T, KVH, D), in_dtype) if config.return_kv else None,
        "v": ((T, KVH, D), in_dtype) if config.return_kv else None,
        "q_scales": ((T, QH), "float32") if scale_modes["q_scale"] == 2 else None,
    }
    grid = launch_grid(T, constexprs)
    dtypes = {n: None if arrays[n] is None else arrays[n].dtype for n in INPUT_NAMES if n in arrays}
    pointer_dtypes = dict(
        dtypes, layer="int32" if has_layer else None, key_cache_in=key_cache.dtype,
        value_cache_in=value_cache.dtype, key_cache=key_cache.dtype, value_cache=value_cache.dtype,
        k_scale_cache_in=_dtype_or_none(arrays["k_scale_cache"]), k_scale_cache=_dtype_or_none(arrays["k_scale_cache"]),
        v_scale_cache_in=_dtype_or_none(arrays["v_scale_cache"]), v_scale_cache=_dtype_or_none(arrays["v_scale_cache"]),
        **{n: (None if out_shapes[n] is None else out_shapes[n][1]) for n in ALLOCATED_OUTPUTS})
    pointer_dtypes = {n: pointer_dtypes[n] for n in INPUT_NAMES + OUTPUT_NAMES}
    return LaunchPlan(grid=grid, num_warps=num_warps, constexprs=constexprs, scalars=scalars, out_shapes=out_shapes,
                      num_tokens=T, has_layer=has_layer, pointer_dtypes=pointer_dtypes)


# ------------------------------------------------------------------------------------------------ tiles and hints
EVICT_FIRST_MIN_BYTES = 16 << 20
EVICT_FIRST_MAX_BYTES = 128 << 20
_overrides: dict = {"tiles": None, "evict_first": None, "head_rows": None}
_plan_observers: list = []


def evict_first(num_tokens: int, qkv_row_bytes: int, target: str) -> bool:
    """Whether the kernel marks the data it touches once (qkv loads, every store) evict-first in the GPU's L2.

    On when the qkv input is at least 16 MiB and below 128 MiB: there the hints took 2-7 % off on the H100, while
    above it they cost 1-2 % and below it the outputs should stay in L2 for the kernel that reads them next
    (docs/performance.md). Never under the interpreter.
    """
    if target == "interpreter":
        return False
    if _overrides["evict_first"] is not None:
        return _overrides["evict_first"]
    return EVICT_FIRST_MIN_BYTES <= num_tokens * qkv_row_bytes < EVICT_FIRST_MAX_BYTES


def hw_cast(target: str) -> int:
    """The kernel's HW_CAST: 0 the interpreter (casts truncate: round by arithmetic), 1 ROCm (casts round to
    nearest-even), 2 CUDA (fp32 -> fp8 is ``cvt.rn.satfinite``: rounds and saturates)."""
    return 0 if target == "interpreter" else 2 if target == "cuda" else 1


def choose_tiles(num_tokens: int, block_d: int, target: str, warp_size: int = 32, *, dynamic_rows: bool = False):
    """Deterministic (BLOCK_T, num_warps) from shapes only; shared by every frontend.

    Under the interpreter each program costs Python overhead, so tiles are large. On GPUs, 2-token tiles at
    T <= 16 (more programs win); above, 16-token tiles with 16 elements per thread for head_dim 128 (the H100 sweep,
    bench/results/sweep.json) and one warp of 1024 elements from head_dim 256: 4 tokens at 256, 2 at 512 (H200
    sweeps of S2 and S6; docs/performance.md).

    ``dynamic_rows`` (:func:`dynamic_rows`): a dynamic fp8 q with heads in rows. Its programs reduce every head
    twice (norm, amax) and move three scale vectors through shared memory, so below GROUP_DYNAMIC_Q_ROWS_TOKENS
    tiles of 1024 elements at head_dim <= 128 win (8 rows at 128: one token of 8 heads, in 2 warps): S8 on the
    H200 86.5 / 88.2 % of copy at T = 4096 / 8192 against 83.0 / 85.3 % with 16 rows in 4 warps
    (bench/results/s8_sweep.json, sweep c). The other shapes gain little or lose (sweep d: S1, S3, S4 within
    0.6 % and S7 1.2-1.5 % faster at 4096 / 8192, all 2-5 % slower at 32768), so they keep 16 rows.
    """
    if target == "interpreter":
        block_t = min(next_pow2(max(num_tokens, 1)), max(1, 8192 // block_d))
        num_warps = min(8, next_pow2(max(1, block_t * block_d // (8 * warp_size))))
        return block_t, num_warps
    if _overrides["tiles"] is not None:
        return _overrides["tiles"]
    if block_d >= 256:  # 1024 elements (one warp, 32 per thread) per program
        block_t = 2 if num_tokens <= 16 else 1024 // block_d
        per_thread = 32
    else:
        small = dynamic_rows and num_tokens < GROUP_DYNAMIC_Q_ROWS_TOKENS
        block_t = 2 if num_tokens <= 16 else max(1, (1024 if small else 2048) // block_d)
        per_thread = 16
    block_t = min(block_t, next_pow2(max(num_tokens, 1)))
    num_warps = min(8, next_pow2(max(1, block_t * block_d // (per_thread * warp_size))))
    return block_t, num_warps


@contextlib.contextmanager
def _override(what, value):
    saved = _overrides[what]
    _overrides[what] = value
    try:
        yield
    finally:
        _overrides[what] = saved


def tile_override(block_t: int, num_warps: int):
    """Context manager: GPU plans made inside use these tiles (``fused-qkv bench --sweep``). Frontends cache plans
    by call signature: clear their caches when entering and leaving."""
    check_int("block_t", block_t)
    check_int("num_warps", num_warps)
    return _override("tiles", (block_t, num_warps))


def evict_first_override(flag: bool):
    """Context manager: GPU plans made inside use (or not) the evict-first hints (``fused-qkv bench
    --sweep-stream``); clear the frontends' caches as for :func:`tile_override`."""
    if not isinstance(flag, bool):
        raise TypeError(f"flag must be a bool, got {type(flag).__name__}")
    return _override("evict_first", flag)


def head_rows_override(rows: int):
    """Context manager: plans made inside put up to ``rows`` heads side by side in a tile's rows (see
    :func:`head_rows`); clear the frontends' caches as for :func:`tile_override`."""
    check_int("rows", rows)
    if rows & (rows - 1):
        raise ValueError(f"rows must be a power of two, got {rows}")
    return _override("head_rows", rows)


@contextlib.contextmanager
def recording_plans(observer):
    """Context manager: ``observer(plan, target)`` is called for every plan made inside (the test suite records
    each specialisation it launches, to compile it ahead of time for every GPU target)."""
    _plan_observers.append(observer)
    try:
        yield
    finally:
        _plan_observers.remove(observer)


# ------------------------------------------------------------------------------------------------ overlaps
def check_overlaps(qkv: ArrayInfo, key_cache: ArrayInfo, value_cache: ArrayInfo) -> None:
    """The caches are written in place: they must not share memory with each other or with qkv, and no two of
    their own elements may share memory (a stride-0 or interleaved view would race)."""
    for cname, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        check_distinct_elements(cname, cache)
    if _may_share_elements(key_cache, value_cache):
        raise ValueError("key_cache and value_cache must not overlap in memory")
    for cname, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if _may_share_elements(cache, qkv):
            raise ValueError(f"{cname} must not overlap qkv in memory")


PAIR_CODES = {"kv": 0, "qk": 1, "qv": 2}  # the same codes in torch_api/native.cpp


def meeting_pairs(spans, pq: int, pk: int, pv: int) -> frozenset:
    """The pairs among qkv, key cache and value cache whose byte ranges meet, as (pair, pointer difference).

    ``spans``: the ``byte_extent()`` of qkv, key cache and value cache; ``pq, pk, pv``: their data pointers.
    Whether two arrays of fixed metadata share an element depends only on the difference of their pointers, so
    fast paths that ran :func:`check_overlaps` once for a (pair, difference) may reuse its verdict.
    """
    (q0, q1), (k0, k1), (v0, v1) = spans
    meet = set()
    if pk + k0 < pv + v1 and pv + v0 < pk + k1:
        meet.add(("kv", pv - pk))
    if pq + q0 < pk + k1 and pk + k0 < pq + q1:
        meet.add(("qk", pk - pq))
    if pq + q0 < pv + v1 and pv + v0 < pq + q1:
        meet.add(("qv", pv - pq))
    return frozenset(meet)


def check_distinct_elements(name: str, info: ArrayInfo) -> None:
    """Reject a written array two of whose elements share memory: its strides (over axes longer than 1), sorted,
    must each be at least the extent of the smaller ones (stride 0 from ``expand`` fails this)."""
    extent = 1
    for st, n in sorted((abs(st), n) for n, st in zip(info.shape, info.strides, strict=True) if n > 1):
        if st < extent:
            raise ValueError(f"{name} is written in place, so no two of its elements may share memory; got shape "
                             f"{tuple(info.shape)} with strides {tuple(info.strides)} (e.g. a stride-0 view from "
                             f"expand): pass a tensor with its own storage for every element")
        extent = st * (n - 1) + extent


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
