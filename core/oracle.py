"""NumPy float64 oracle: the executable specification of the op. Every test and benchmark compares against it.

It implements the contract literally, with no knowledge of how the kernel is written:
full rotary tables are applied per channel the way Hugging Face applies them
(``x * cos + rotate(x) * sin``), half tables per rotary pair.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from .plan import FP8_FORMATS

# (explicit mantissa bits, minimum normal exponent, largest finite value, saturates)
_FORMATS = {
    "bfloat16": (7, -126, float.fromhex("0x1.fep127"), False),
    "float16": (10, -14, 65504.0, False),
    "float32": (23, -126, float.fromhex("0x1.fffffep127"), False),
}
_FORMATS.update({k: (f.mbits, f.emin, f.max_finite, True) for k, f in FP8_FORMATS.items()})


def format_quantum(x, dtype: str) -> np.ndarray:
    """Spacing of representable values of ``dtype`` at magnitude ``|x|`` (one ulp)."""
    mbits, emin, _, _ = _FORMATS[dtype]
    x = np.abs(np.asarray(x, dtype=np.float64))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(x > 0, x, 1.0)))
    e = np.maximum(e, emin)
    return np.exp2(e - mbits)


def round_to_format(x, dtype: str) -> np.ndarray:
    """Round float64 values to the nearest value of ``dtype`` (ties to even), as float64.

    fp8 formats saturate to their largest finite value (the cache contract); the others
    do not matter here (values stay far from their range).
    """
    mbits, emin, maxv, saturates = _FORMATS[dtype]
    x = np.asarray(x, dtype=np.float64)
    if saturates:
        x = np.clip(x, -maxv, maxv)
    q = format_quantum(x, dtype)
    r = np.round(x / q) * q  # np.round: half to even
    return np.where(r == 0, 0.0, r)


def rounding_error(actual, exact, dtype: str):
    """Worst error of ``actual`` against float64 ``exact``, in units of the allowed error.

    Allowed: half an ulp of ``dtype`` at the exact value (fp8: after saturation) plus
    ``2**-16 * max|exact|`` for fp32 arithmetic noise. A correctly rounded result scores
    <= 1; returns ``(score, index of the worst element)``; non-finite values score inf.
    """
    actual = np.asarray(actual, np.float64)
    exact = np.asarray(exact, np.float64)
    if exact.size == 0:
        return 0.0, ()
    if dtype in FP8_FORMATS:
        m = FP8_FORMATS[dtype].max_finite
        exact = np.clip(exact, -m, m)
    tol = 0.5 * format_quantum(exact, dtype) + 2.0**-16 * np.abs(exact).max()
    ratio = np.abs(actual - exact) / tol
    ratio = np.where(np.isfinite(actual), ratio, np.inf)
    worst = int(np.argmax(ratio))
    return float(ratio.flat[worst]), np.unravel_index(worst, ratio.shape)


class OracleResult(NamedTuple):
    """Float64 results. ``slots[t]`` is the cache slot token t writes, or -1 for no write.

    ``key_cache_values[t]`` / ``value_cache_values[t]`` ([KVH, D]) are the values the
    cache must hold at ``slots[t]``: ``k / k_scale`` rounded to the cache dtype (fp8
    saturating). ``exact_key_cache[t]`` is the same before rounding.

    fp8 attention inputs (None unless asked for): ``exact_q`` ``[T, QH, D]`` is ``q`` divided by its scale and
    ``q_values`` that rounded to ``q_dtype``; ``q_scales`` ``[T, QH]`` the dynamic per-token-head scales;
    ``key_scales`` / ``value_scales`` ``[T, KVH]`` the per-token-head cache scales (what the scale caches hold at
    ``slots[t]``; ``exact_*_cache`` are then divided by them).
    """

    q: np.ndarray  # [T, QH, D]
    gate: Optional[np.ndarray]  # [T, QH, D] or None
    k: np.ndarray  # [T, KVH, D]
    v: np.ndarray  # [T, KVH, D]
    slots: np.ndarray  # [T] int64
    exact_key_cache: np.ndarray  # [T, KVH, D]
    exact_value_cache: np.ndarray
    key_cache_values: np.ndarray
    value_cache_values: np.ndarray
    exact_q: Optional[np.ndarray] = None
    q_values: Optional[np.ndarray] = None
    q_scales: Optional[np.ndarray] = None
    key_scales: Optional[np.ndarray] = None
    value_scales: Optional[np.ndarray] = None


TINY = 2.0**-126  # float32's smallest normal: the floor of a dynamic scale (an all-zero head)


def dynamic_scale(x: np.ndarray, dtype: str) -> np.ndarray:
    """Per-row scale over the last axis: ``max(amax(|x|) / fp8_max, TINY)`` (the row's largest value maps to
    ``fp8_max``)."""
    amax = np.abs(np.asarray(x, np.float64)).max(axis=-1)
    return np.maximum(amax / FP8_FORMATS[dtype].max_finite, TINY)


def rms_norm(x: np.ndarray, weight: Optional[np.ndarray], eps: float, offset: float) -> np.ndarray:
    """``x * rsqrt(mean(x^2) + eps) * (weight + offset)`` over the last axis; identity if weight is None."""
    if weight is None:
        return x
    x = np.asarray(x, np.float64)
    inv = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * inv * (np.asarray(weight, np.float64) + offset)


def rope(x: np.ndarray, cos_rows: np.ndarray, sin_rows: np.ndarray, rotary_dim: int, is_neox: bool) -> np.ndarray:
    """Rotate the first ``rotary_dim`` channels of ``x`` [T, H, D]; tables [T, rotary_dim/2 or rotary_dim]."""
    x = np.asarray(x, np.float64).copy()
    half = rotary_dim // 2
    if is_neox:
        ia, ib = np.arange(half), np.arange(half) + half
    else:
        ia, ib = np.arange(half) * 2, np.arange(half) * 2 + 1
    if cos_rows.shape[-1] == half:  # half table: one angle per pair
        ca = cb = cos_rows[:, None, :]
        sa = sb = sin_rows[:, None, :]
    else:  # full table, applied per channel: out = x * cos + rotate(x) * sin
        ca, cb = cos_rows[:, None, ia], cos_rows[:, None, ib]
        sa, sb = sin_rows[:, None, ia], sin_rows[:, None, ib]
    xa, xb = x[..., ia].copy(), x[..., ib].copy()
    x[..., ia] = xa * ca - xb * sa
    x[..., ib] = xb * cb + xa * sb
    return x


def mrope_rows(half: int, section, interleaved: bool) -> np.ndarray:
    """``[half]``: which row of the ``[3, T]`` positions (0 temporal, 1 height, 2 width) rotary frequency ``i``
    takes its angle from. Contiguous sections (Qwen2-VL, Qwen2.5-VL): ``i < t`` -> 0, ``t <= i < t + h`` -> 1,
    else 2. Interleaved (Qwen3-VL): ``i % 3 == 1 and i < 3h`` -> 1, ``i % 3 == 2 and i < 3w`` -> 2, else 0."""
    t, h, w = section
    i = np.arange(half)
    if not interleaved:
        return np.where(i < t, 0, np.where(i < t + h, 1, 2))
    return np.where((i % 3 == 1) & (i < 3 * h), 1, np.where((i % 3 == 2) & (i < 3 * w), 2, 0))


def table_rows(table: np.ndarray, positions: np.ndarray, rotary_dim: int, is_neox: bool, section=None,
               interleaved: bool = False) -> np.ndarray:
    """``[T, W]``: the table entries each token uses. ``positions``: ``[T]``, or ``[3, T]`` with ``section``, in
    which case column ``c`` is read at the position row of its frequency (half tables: ``c``; full tables:
    ``c mod R/2`` NeoX, ``c // 2`` GPT-J). Positions are already clamped."""
    if section is None:
        return table[positions]
    half, width = rotary_dim // 2, table.shape[1]
    col = np.arange(width)
    freq = col if width == half else (col % half if is_neox else col // 2)
    rows = mrope_rows(half, section, interleaved)[freq]  # [W]
    return table[positions[rows].T, col[None, :]]


def reference(
    qkv, q_weight, k_weight, cos, sin, positions, slot_mapping, *,
    num_q_heads: int, num_kv_heads: int, head_dim: int, num_cache_slots: int,
    key_cache_dtype: str, value_cache_dtype: str,
    eps: float = 1e-6, norm_weight_offset: float = 0.0, is_neox: bool = True, rotary_dim: Optional[int] = None,
    offsets=None, attn_output_gate: bool = False, gated_qkv_layout: str = "interleaved",
    k_scale=None, v_scale=None, mrope_section=None, mrope_interleaved: bool = False, v_norm: bool = False,
    k_eq_v: bool = False, q_dtype: Optional[str] = None, q_scale=None, k_scale_cache: bool = False,
    v_scale_cache: bool = False,
) -> OracleResult:
    """The op's contract in float64. Array arguments are NumPy arrays (any real dtype).

    ``num_cache_slots`` = num_blocks * block_size; the cache dtypes decide the rounding of
    the cache values. Positions are clamped to the table (``[0, rows - 1]``). ``cos = sin = None``: no rotation
    (NoPE; ``positions`` is ignored). ``mrope_section``: positions are ``[3, T]`` (see :func:`mrope_rows`).
    ``v_norm``: V is RMS-normalised without a weight. ``k_eq_v``: qkv holds no V block; V is the raw K projection.
    ``q_dtype`` (an fp8 dtype name): q is also quantised, by ``q_scale`` (one element) or, with ``q_scale=None``,
    by a dynamic scale per token and Q head (:func:`dynamic_scale`). ``k_scale_cache`` / ``v_scale_cache``: the
    fp8 cache holds K / V divided by a dynamic scale per token and KV head (no static ``k_scale`` / ``v_scale``).
    """
    f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    qkv = f64(qkv)
    T = qkv.shape[0]
    QH, KVH, D = num_q_heads, num_kv_heads, head_dim
    rotary_dim = head_dim if rotary_dim is None else rotary_dim

    q_cols = QH * D * (2 if attn_output_gate else 1)
    qg = qkv[:, :q_cols]
    if attn_output_gate and gated_qkv_layout == "interleaved":
        qg = qg.reshape(T, QH, 2, D)
        q, gate = qg[:, :, 0], qg[:, :, 1]
    elif attn_output_gate:
        q, gate = qg[:, :QH * D].reshape(T, QH, D), qg[:, QH * D:].reshape(T, QH, D)
    else:
        q, gate = qg.reshape(T, QH, D), None
    k = qkv[:, q_cols:q_cols + KVH * D].reshape(T, KVH, D)
    v_col0 = q_cols if k_eq_v else q_cols + KVH * D
    v = qkv[:, v_col0:v_col0 + KVH * D].reshape(T, KVH, D).copy()
    if v_norm:
        v = rms_norm(v, np.ones(D), eps, 0.0)

    q = rms_norm(q, f64(q_weight), eps, norm_weight_offset)
    k = rms_norm(k, f64(k_weight), eps, norm_weight_offset)

    if cos is not None:
        pos = np.asarray(positions, dtype=np.int64)
        if offsets is not None:
            pos = pos + np.asarray(offsets, dtype=np.int64)  # [T], broadcast over the three rows of mRoPE
        cos, sin = f64(cos), f64(sin)
        pos = np.clip(pos, 0, cos.shape[0] - 1)
        rows = [table_rows(tab, pos, rotary_dim, is_neox, mrope_section, mrope_interleaved) for tab in (cos, sin)]
        q = rope(q, *rows, rotary_dim, is_neox)
        k = rope(k, *rows, rotary_dim, is_neox)

    sm = np.asarray(slot_mapping, dtype=np.int64)
    slots = np.full(T, -1, dtype=np.int64)
    slots[:len(sm)] = sm
    slots[(slots < 0) | (slots >= num_cache_slots)] = -1

    def scaled(x, scale):
        if scale is None:
            return x
        s = np.asarray(scale, np.float64).reshape(-1)
        return x / (s[None, :, None] if s.size > 1 else s[0])

    def per_token_head(x, name, static, dtype, wanted):
        if not wanted:
            return scaled(x, static), None
        if static is not None or dtype not in FP8_FORMATS:
            raise ValueError(f"{name}: a per-token-head scale cache needs an fp8 cache and no static scale")
        s = dynamic_scale(x, dtype)
        return x / s[..., None], s

    ek, key_scales = per_token_head(k, "key_cache", k_scale, key_cache_dtype, k_scale_cache)
    ev, value_scales = per_token_head(v, "value_cache", v_scale, value_cache_dtype, v_scale_cache)
    exact_q = q_values = q_scales = None
    if q_dtype is not None:
        if q_dtype not in FP8_FORMATS:
            raise ValueError(f"q_dtype must be an fp8 dtype, got {q_dtype}")
        if q_scale is None:
            q_scales = dynamic_scale(q, q_dtype)
            exact_q = q / q_scales[..., None]
        else:
            exact_q = q / float(np.asarray(q_scale, np.float64).reshape(-1)[0])
        q_values = round_to_format(exact_q, q_dtype)
    return OracleResult(
        q=q, gate=None if gate is None else gate.copy(), k=k, v=v, slots=slots,
        exact_key_cache=ek, exact_value_cache=ev,
        key_cache_values=round_to_format(ek, key_cache_dtype),
        value_cache_values=round_to_format(ev, value_cache_dtype),
        exact_q=exact_q, q_values=q_values, q_scales=q_scales, key_scales=key_scales, value_scales=value_scales,
    )


def cache_location(slot: int, block_size: int) -> tuple:
    """(block, offset in block) of a cache slot."""
    return slot // block_size, slot % block_size
