"""The one fused Triton kernel: QKV split + per-head RMSNorm + RoPE + paged KV-cache write.

This module is the single kernel source for every frontend. It is imported twice:
normally (``@triton.jit`` -> compiled on a GPU) and, for CPU tensors, a second time
under Triton's interpreter (see ``fused_qkv.core.launch.interpreted_kernel``).

Argument order (fixed; both frontends rely on it, see ``plan.INPUT_NAMES`` etc.):

1. input pointers   (``plan.INPUT_NAMES``)
2. runtime scalars  (``plan.SCALAR_NAMES``)
3. output pointers  (``plan.OUTPUT_NAMES``) -- jax-triton appends one pointer per
   output, aliased outputs included; the torch binding passes the cache tensors
   both as ``key_cache_in`` and as ``key_cache`` (never read through ``*_in``), and
   the scale caches of the fp8 entry points likewise (``k_scale_cache_in`` / ``k_scale_cache``).
4. constexprs       (``plan.LaunchPlan.constexprs``), passed by keyword.

Grid: 1-D, ``cdiv(T, BLOCK_T / HEAD_ROWS) * NUM_HEAD_PROGS`` programs. Program ``pid`` handles the token block
``pid // NUM_HEAD_PROGS`` and the entry ``pid % NUM_HEAD_PROGS`` of the combined list
``[Q head groups | K head groups | V head rows | gate head rows]``. A tile's BLOCK_T rows hold
BLOCK_T / HEAD_ROWS tokens times HEAD_ROWS heads side by side (``plan.head_rows``: the lanes of one token read
its table row in one load); a Q or K program loops over HEAD_GROUP such tiles of heads (more than one only with
mRoPE or dynamic fp8 q on long batches, ``plan.head_group``).

Rounding: every value is computed in fp32 and rounded exactly once, to nearest-even. Compiled code uses
the target's casts, which round to nearest-even (``HW_CAST`` 1 or 2); CUDA's saturate too (2), on ROCm the fp8
saturation and the +0 of e4m3fnuz (which has no -0) are explicit. Triton's interpreter truncates in its casts, so
there the kernel rounds by explicit arithmetic first (``_round_bf16``, ``_round_fp8``) and the final cast is exact.
All give the same bits: a result that rounds to zero keeps the sign of its input where the format has a -0.
"""

import triton
import triton.language as tl


@triton.jit
def _round_bf16(x):
    """Round fp32 ``x`` to the nearest bf16 value (ties to even); result is fp32 holding a bf16 value."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    bits = bits & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_fp8(x, MBITS: tl.constexpr, EMIN: tl.constexpr, MAXV: tl.constexpr, SIGNED_ZERO: tl.constexpr):
    """Saturate fp32 ``x`` to [-MAXV, MAXV] and round it to nearest-even on the grid of an fp8 format.

    The format has MBITS explicit mantissa bits and minimum normal exponent EMIN. The
    spacing of representable values around ``x`` is ``2**(max(e, EMIN) - MBITS)``
    with ``e = floor(log2|x|)``; dividing by it is exact (power of two), the rounding
    is fp32's own round-to-nearest-even add of 1.5 * 2**23, and scaling back is exact.
    Zero results keep the sign of ``x`` if SIGNED_ZERO (as the hardware casts give), else are +0.0 (e4m3fnuz).
    """
    x = tl.minimum(tl.maximum(x, -MAXV), MAXV)
    biased_exp = ((x.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32)
    q_exp = tl.maximum(biased_exp, EMIN + 127) - MBITS  # biased exponent of the grid spacing
    quantum = (q_exp.to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    inv_quantum = ((254 - q_exp).to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    y = x * inv_quantum
    magic = 12582912.0  # 1.5 * 2**23: adding it rounds |y| < 2**22 to an integer, ties to even
    r = ((y + magic) - magic) * quantum
    if SIGNED_ZERO:
        return tl.where(r == 0.0, x * 0.0, r)  # x is finite here: x * 0 is the zero of x's sign
    else:
        return tl.where(r == 0.0, 0.0, r)


@triton.jit
def _to_storage(x, OUT_DTYPE: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr, MAXV: tl.constexpr,
                HW_CAST: tl.constexpr):
    """Convert fp32 ``x`` to ``OUT_DTYPE`` with one correctly rounded step (MBITS > 0: fp8 grid).

    HW_CAST 1 or 2 (compiled code): the target's own cast rounds to nearest-even (PTX ``cvt.rn``, AMD
    ``v_cvt_pk``). 2: it also saturates to the finite range (``cvt.rn.satfinite`` on sm_90), and nothing is added;
    1: the saturation is a clamp, and e4m3fnuz's zero is made +0. HW_CAST 0 (the interpreter, whose casts
    truncate): the value is rounded by arithmetic first.
    """
    if MBITS > 0:
        if HW_CAST:
            if HW_CAST == 1:
                x = tl.minimum(tl.maximum(x, -MAXV), MAXV)
                if OUT_DTYPE == tl.float8e4b8:  # e4m3fnuz: 0x80 is NaN, a zero must be +0
                    x = tl.where(tl.abs(x) <= 2.0 ** (EMIN - MBITS - 1), 0.0, x)
        else:
            x = _round_fp8(x, MBITS, EMIN, MAXV, OUT_DTYPE != tl.float8e4b8)
    elif OUT_DTYPE == tl.bfloat16 and not HW_CAST:
        x = _round_bf16(x)
    return x.to(OUT_DTYPE)


@triton.jit
def _fp8_bits(r, MBITS: tl.constexpr, EMIN: tl.constexpr):
    """uint8 encoding of ``r``, already on the fp8 grid and in range (exponent bias ``1 - EMIN``)."""
    bits = r.to(tl.uint32, bitcast=True)
    sign = (bits >> 31) & 1
    exp = ((bits >> 23) & 0xFF).to(tl.int32) - 127
    normal = exp >= EMIN
    e_field = tl.where(normal, exp + 1 - EMIN, 0).to(tl.uint32)
    mant_normal = (bits >> (23 - MBITS)) & ((1 << MBITS) - 1)
    mant_sub = (tl.abs(r) * (2.0 ** (MBITS - EMIN))).to(tl.uint32)  # exact: r is a multiple of 2**(EMIN-MBITS)
    code = (sign << 7) | (e_field << MBITS) | tl.where(normal, mant_normal, mant_sub)
    return code.to(tl.uint8)


@triton.jit
def _load_once(ptr, mask, EVICT: tl.constexpr):
    """Load qkv data this kernel reads once; EVICT: mark it evict-first in L2 (see ``plan.evict_first``)."""
    if EVICT:
        return tl.load(ptr, mask=mask, other=0.0, eviction_policy="evict_first")
    else:
        return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def _store_once(ptr, x, mask, EVICT: tl.constexpr):
    """Store an output or cache value; EVICT: evict-first in L2 (see ``plan.evict_first``)."""
    if EVICT:
        tl.store(ptr, x, mask=mask, eviction_policy="evict_first")
    else:
        tl.store(ptr, x, mask=mask)


@triton.jit
def _store_converted(ptr, x, mask, OUT_DTYPE: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
                     MAXV: tl.constexpr, SOFT_FP8: tl.constexpr, HW_CAST: tl.constexpr, EVICT: tl.constexpr):
    """Store fp32 ``x`` as ``OUT_DTYPE``. SOFT_FP8: encode fp8 bits in integer arithmetic (used only under
    Triton's interpreter, which has no float8_e4m3fnuz type); otherwise the target's own exact cast."""
    if SOFT_FP8:
        bits = _fp8_bits(_round_fp8(x, MBITS, EMIN, MAXV, False), MBITS, EMIN)
        tl.store(ptr.to(tl.pointer_type(tl.uint8), bitcast=True), bits, mask=mask)
    else:
        _store_once(ptr, _to_storage(x, OUT_DTYPE, MBITS, EMIN, MAXV, HW_CAST), mask, EVICT)


@triton.jit
def _rms_scale(a, b, p, HEAD_DIM: tl.constexpr, eps):
    """Per-row 1/rms over the three channel groups (masked lanes hold 0)."""
    # tl.reduce with the standard sum combiner rather than tl.sum: tl.sum is a @jit function
    # decorated at triton import (compiled), which an interpreted kernel cannot call; the
    # interpreter maps this combiner to np.sum.
    # a and b share a shape and mask: one cross-lane reduction for both
    ss = tl.reduce(a * a + b * b, 1, tl.standard._sum_combine) + tl.reduce(p * p, 1, tl.standard._sum_combine)
    return tl.math.rsqrt(ss / HEAD_DIM + eps)


@triton.jit
def _row_amax(x):
    """[BLOCK_T] max |x| over a tile's channels (masked lanes hold 0); the combiner as in ``_rms_scale``."""
    return tl.reduce(tl.abs(x), 1, tl.standard._elementwise_max)


@triton.jit
def _dynamic_scale(amax, MAXV: tl.constexpr):
    """Per-token-head fp8 scale: ``max(amax / MAXV, 2**-126)`` (the head's largest value maps to MAXV)."""
    return tl.maximum(amax / MAXV, 1.1754943508222875e-38)


@triton.jit
def _head_scale(a, b, p, r, MAXV: tl.constexpr):
    """The dynamic scale of a head held as its three channel groups ``r * (a, b, p)`` (``r`` > 0: [BLOCK_T])."""
    return _dynamic_scale(tl.maximum(_row_amax(tl.maximum(tl.abs(a), tl.abs(b))), _row_amax(p)) * r, MAXV)


@triton.jit
def _scaled_norm_factor(r, scale):
    """``r / scale`` (both [BLOCK_T], > 0) capped at 2**126: the one factor that applies the norm's ``r`` and a
    dynamic scale. Without the cap an all-zero head (scale 2**-126, r = 1/sqrt(eps)) overflows to inf and 0 * inf
    stores NaN. The cap moves only heads whose values before ``r`` are all below fp8_max * 2**-126 (their stored
    values are then up to a factor r below ``x / scale``; zeros stay exact). ``r * 2**-126``
    is subnormal only where r < 1, where the cap cannot apply, so flushing subnormals (XLA's CPU threads do) is
    harmless; no constant here is subnormal."""
    return r / tl.maximum(scale, r * 1.1754943508222875e-38)


@triton.jit
def _load_weight(w_ptr, offs, mask, offset, HAS_W_OFFSET: tl.constexpr):
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_W_OFFSET:  # a runtime 0.0 would still cost an add per element
        w = w + offset
    return w


@triton.jit
def _store_head(
    base,  # [BLOCK_T, 1] pointers to channel 0 of the head
    row_mask,  # [BLOCK_T, 1]
    a, b, p,  # the head's three channel groups, stored times f
    f,  # [BLOCK_T, 1] per-row factor: the norm's, folded with any scale
    a_offs, b_offs, p_offs, half_mask, pass_mask,
    HAS_PASS: tl.constexpr,
    OUT_DTYPE: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr, MAXV: tl.constexpr, SOFT_FP8: tl.constexpr,
    HW_CAST: tl.constexpr, EVICT: tl.constexpr,
):
    _store_converted(base + a_offs, a * f, row_mask & half_mask, OUT_DTYPE, MBITS, EMIN, MAXV, SOFT_FP8, HW_CAST, EVICT)
    _store_converted(base + b_offs, b * f, row_mask & half_mask, OUT_DTYPE, MBITS, EMIN, MAXV, SOFT_FP8, HW_CAST, EVICT)
    if HAS_PASS:
        _store_converted(base + p_offs, p * f, row_mask & pass_mask, OUT_DTYPE, MBITS, EMIN, MAXV, SOFT_FP8, HW_CAST,
                         EVICT)


@triton.jit
def _per_row(x, HEAD_ROWS: tl.constexpr):
    """A head's column offset as the tile's rows need it: a scalar with one head per row block, else the
    [BLOCK_T] offsets of each row's own head, as a [BLOCK_T, 1] column."""
    if HEAD_ROWS > 1:
        return x[:, None]
    else:
        return x


@triton.jit
def _load_slot(slot_mapping_ptr, tok, tok64, tok_mask, num_slot_entries, SLOT_STRIDE: tl.constexpr):
    """Each token's raw ``slot_mapping`` entry (-1 past ``num_tokens`` or past the end of ``slot_mapping``).

    Split from ``_slot_base`` so that a program issues this load with its other loads and does the arithmetic
    later: arithmetic right after the load stalls every load behind it (with int32 indices, ptxas kept that
    order; tests/test_load_order.py)."""
    return tl.load(slot_mapping_ptr + tok64 * SLOT_STRIDE, mask=tok_mask & (tok < num_slot_entries), other=-1)


@triton.jit
def _slot_base(slot, layer_ptr, num_cache_slots, BLOCK_SIZE: tl.constexpr, HAS_LAYER: tl.constexpr,
               LAYER_STRIDE: tl.constexpr, BLOCK_STRIDE: tl.constexpr, SLOT_IN_BLOCK_STRIDE: tl.constexpr):
    """(write mask, int64 element offset of head 0) of each token's cache slot (``slot`` from ``_load_slot``).

    A token gets no write when it is past ``num_tokens``, past the end of ``slot_mapping``
    or its slot is outside ``[0, num_cache_slots)``.
    """
    slot = slot.to(tl.int64)
    ok = (slot >= 0) & (slot < num_cache_slots)
    slot = tl.where(ok, slot, 0)
    base = (slot // BLOCK_SIZE) * BLOCK_STRIDE + (slot % BLOCK_SIZE) * SLOT_IN_BLOCK_STRIDE
    if HAS_LAYER:
        base += tl.load(layer_ptr).to(tl.int64) * LAYER_STRIDE
    return ok, base


@triton.jit
def _mrope_row(i, MROPE: tl.constexpr, MROPE_T: tl.constexpr, MROPE_H: tl.constexpr, MROPE_W: tl.constexpr):
    """[BLOCK_HALF] row of the [3, T] positions (0 temporal, 1 height, 2 width) that frequency ``i`` reads."""
    if MROPE == 1:  # contiguous sections (Qwen2-VL, Qwen2.5-VL)
        return (i >= MROPE_T).to(tl.int32) + (i >= MROPE_T + MROPE_H).to(tl.int32)
    else:  # interleaved (Qwen3-VL)
        r = i % 3
        return tl.where((r == 1) & (i < 3 * MROPE_H), 1, tl.where((r == 2) & (i < 3 * MROPE_W), 2, 0))


@triton.jit
def _load_position(positions_ptr, offsets_ptr, row_off, tok64, tok_mask, num_table_rows, HAS_OFFSETS: tl.constexpr,
                   POS_STRIDE: tl.constexpr, OFF_STRIDE: tl.constexpr):
    """[BLOCK_T] table row of each token: clamp(position + offset, 0, rows - 1). Positions are clamped in their own
    dtype (the sum with offsets in int64) and widened after: int64 arithmetic on int32 positions costs registers,
    hence occupancy, in the 16-token programs (tests/test_load_order.py checks the count)."""
    pos = tl.load(positions_ptr + row_off + tok64 * POS_STRIDE, mask=tok_mask, other=0)
    if HAS_OFFSETS:
        pos = pos.to(tl.int64) + tl.load(offsets_ptr + tok64 * OFF_STRIDE, mask=tok_mask, other=0).to(tl.int64)
    return tl.minimum(tl.maximum(pos, 0), num_table_rows - 1).to(tl.int64)


@triton.jit
def _mrope_select(c, s, cos_ptr, sin_ptr, pos_h, pos_w, tcol, ld_half, i, MROPE: tl.constexpr, MROPE_T: tl.constexpr,
                  MROPE_H: tl.constexpr, MROPE_W: tl.constexpr, COS_ROW_STRIDE: tl.constexpr,
                  COS_COL_STRIDE: tl.constexpr, SIN_ROW_STRIDE: tl.constexpr, SIN_COL_STRIDE: tl.constexpr):
    """mRoPE: (cos, sin) with each frequency taken from its section's row; ``c``/``s`` hold the temporal row's."""
    c_h = tl.load(cos_ptr + pos_h * COS_ROW_STRIDE + tcol * COS_COL_STRIDE, mask=ld_half, other=0.0)
    s_h = tl.load(sin_ptr + pos_h * SIN_ROW_STRIDE + tcol * SIN_COL_STRIDE, mask=ld_half, other=0.0)
    c_w = tl.load(cos_ptr + pos_w * COS_ROW_STRIDE + tcol * COS_COL_STRIDE, mask=ld_half, other=0.0)
    s_w = tl.load(sin_ptr + pos_w * SIN_ROW_STRIDE + tcol * SIN_COL_STRIDE, mask=ld_half, other=0.0)
    sec = _mrope_row(i, MROPE, MROPE_T, MROPE_H, MROPE_W)[None, :]
    c = tl.where(sec == 1, c_h.to(tl.float32), tl.where(sec == 2, c_w.to(tl.float32), c))
    s = tl.where(sec == 1, s_h.to(tl.float32), tl.where(sec == 2, s_w.to(tl.float32), s))
    return c, s


@triton.jit
def _load_tables(cos_ptr, sin_ptr, positions_ptr, offsets_ptr, tok64, tok_mask, num_table_rows, i, ld_half,
                 HAS_OFFSETS: tl.constexpr, MROPE: tl.constexpr, MROPE_T: tl.constexpr, MROPE_H: tl.constexpr,
                 MROPE_W: tl.constexpr, TABLE_STEP: tl.constexpr, POS_STRIDE: tl.constexpr,
                 POS_ROW_STRIDE: tl.constexpr, OFF_STRIDE: tl.constexpr, COS_ROW_STRIDE: tl.constexpr,
                 COS_COL_STRIDE: tl.constexpr, SIN_ROW_STRIDE: tl.constexpr, SIN_COL_STRIDE: tl.constexpr):
    """fp32 (cos, sin) [BLOCK_T, BLOCK_HALF] of a token tile, for programs that rotate several heads with them."""
    pos = _load_position(positions_ptr, offsets_ptr, 0, tok64, tok_mask, num_table_rows, HAS_OFFSETS, POS_STRIDE,
                         OFF_STRIDE)[:, None]
    tcol = (i * TABLE_STEP)[None, :]
    c = tl.load(cos_ptr + pos * COS_ROW_STRIDE + tcol * COS_COL_STRIDE, mask=ld_half, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + pos * SIN_ROW_STRIDE + tcol * SIN_COL_STRIDE, mask=ld_half, other=0.0).to(tl.float32)
    if MROPE != 0:
        pos_h = _load_position(positions_ptr, offsets_ptr, POS_ROW_STRIDE, tok64, tok_mask, num_table_rows,
                               HAS_OFFSETS, POS_STRIDE, OFF_STRIDE)[:, None]
        pos_w = _load_position(positions_ptr, offsets_ptr, 2 * POS_ROW_STRIDE, tok64, tok_mask, num_table_rows,
                               HAS_OFFSETS, POS_STRIDE, OFF_STRIDE)[:, None]
        c, s = _mrope_select(c, s, cos_ptr, sin_ptr, pos_h, pos_w, tcol, ld_half, i, MROPE, MROPE_T, MROPE_H, MROPE_W,
                             COS_ROW_STRIDE, COS_COL_STRIDE, SIN_ROW_STRIDE, SIN_COL_STRIDE)
    return c, s


@triton.jit
def _load_norm_rope(src, w_ptr, HAS_NORM: tl.constexpr, HAS_W_OFFSET: tl.constexpr, cos_ptr, sin_ptr,
                    positions_ptr, offsets_ptr, tok64, tok_mask, row_mask, num_table_rows, eps, norm_weight_offset,
                    i, a_offs, b_offs, p_offs, half_mask, pass_mask, HAS_PASS: tl.constexpr, HAS_OFFSETS: tl.constexpr,
                    HAS_ROPE: tl.constexpr,
                    MROPE: tl.constexpr, MROPE_T: tl.constexpr, MROPE_H: tl.constexpr, MROPE_W: tl.constexpr,
                    HEAD_DIM: tl.constexpr, TABLE_STEP: tl.constexpr, POS_STRIDE: tl.constexpr,
                    POS_ROW_STRIDE: tl.constexpr, OFF_STRIDE: tl.constexpr, COS_ROW_STRIDE: tl.constexpr,
                    COS_COL_STRIDE: tl.constexpr, SIN_ROW_STRIDE: tl.constexpr, SIN_COL_STRIDE: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_PASS: tl.constexpr, EVICT: tl.constexpr, c_given, s_given,
                    TABLES_GIVEN: tl.constexpr, W_OVER_ROWS: tl.constexpr):
    """One Q or K head of a token tile (``src``: [BLOCK_T, 1] pointers to its channel 0): load the three
    channel groups once, RMSNorm (if HAS_NORM), rotate (if HAS_ROPE) with the tables it loads, or with
    ``c_given``/``s_given`` (TABLES_GIVEN: from ``_load_tables``). W_OVER_ROWS: load the rotary halves' weights
    once per row (L1 hits), which S8's loop of tiles of heads in rows runs 2 % faster at T=32768 on the H200
    (and 2 % slower in its 8-row tiles below 16384 tokens: docs/performance.md). Returns fp32 (A, B, P, r): the
    head after the norm's weights and RoPE, and ``r`` [BLOCK_T], the norm's per-row factor, which the caller
    applies (rotation is linear, so it commutes), folded with any scale into one multiply per element."""
    ld_half = row_mask & half_mask
    a = _load_once(src + a_offs, ld_half, EVICT)
    b = _load_once(src + b_offs, ld_half, EVICT)
    if HAS_PASS:
        p = _load_once(src + p_offs, row_mask & pass_mask, EVICT).to(tl.float32)
    else:
        p = tl.full([BLOCK_T, BLOCK_PASS], 0.0, tl.float32)  # builtin (tl.zeros is @jit)
    if HAS_ROPE and not TABLES_GIVEN:
        pos = _load_position(positions_ptr, offsets_ptr, 0, tok64, tok_mask, num_table_rows, HAS_OFFSETS,
                             POS_STRIDE, OFF_STRIDE)[:, None]
        if MROPE != 0:  # the height and width rows; each frequency picks its section's row after the table loads
            pos_h = _load_position(positions_ptr, offsets_ptr, POS_ROW_STRIDE, tok64, tok_mask, num_table_rows,
                                   HAS_OFFSETS, POS_STRIDE, OFF_STRIDE)[:, None]
            pos_w = _load_position(positions_ptr, offsets_ptr, 2 * POS_ROW_STRIDE, tok64, tok_mask, num_table_rows,
                                   HAS_OFFSETS, POS_STRIDE, OFF_STRIDE)[:, None]
    if HAS_NORM:
        off = tl.cast(norm_weight_offset, tl.float32)
        if W_OVER_ROWS:  # [BLOCK_T, .] weights take the tile's layout; a [1, .] load is converted through smem
            w_rows = (tok64 * 0).to(tl.int32)[:, None]
            wa = _load_weight(w_ptr, a_offs + w_rows, half_mask & row_mask, off, HAS_W_OFFSET)
            wb = _load_weight(w_ptr, b_offs + w_rows, half_mask & row_mask, off, HAS_W_OFFSET)
        else:
            wa = _load_weight(w_ptr, a_offs, half_mask, off, HAS_W_OFFSET)
            wb = _load_weight(w_ptr, b_offs, half_mask, off, HAS_W_OFFSET)
        if HAS_PASS:
            wp = _load_weight(w_ptr, p_offs, pass_mask, off, HAS_W_OFFSET)
    if HAS_ROPE and TABLES_GIVEN:
        c = c_given
        s = s_given
    elif HAS_ROPE:
        tcol = (i * TABLE_STEP)[None, :]
        c = tl.load(cos_ptr + pos * COS_ROW_STRIDE + tcol * COS_COL_STRIDE, mask=ld_half, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + pos * SIN_ROW_STRIDE + tcol * SIN_COL_STRIDE, mask=ld_half, other=0.0).to(tl.float32)
        if MROPE != 0:
            # whole rows, then a select: a gather through per-frequency positions would lose the vector loads
            # (one row per token keeps each table load contiguous along the frequencies)
            c, s = _mrope_select(c, s, cos_ptr, sin_ptr, pos_h, pos_w, tcol, ld_half, i, MROPE, MROPE_T, MROPE_H,
                                 MROPE_W, COS_ROW_STRIDE, COS_COL_STRIDE, SIN_ROW_STRIDE, SIN_COL_STRIDE)
    a = a.to(tl.float32)
    b = b.to(tl.float32)
    if HAS_NORM:
        r = _rms_scale(a, b, p, HEAD_DIM, eps)
        a = a * wa
        b = b * wb
        if HAS_PASS:
            p = p * wp
    else:
        r = tl.full([BLOCK_T], 1.0, tl.float32)  # multiplies by it fold away
    if HAS_ROPE:
        return a * c - b * s, b * c + a * s, p, r
    else:
        return a, b, p, r


@triton.jit
def fused_qkv_split_qk_norm_rope_cache_kernel(
    # ---- 1. input pointers (plan.INPUT_NAMES) ----
    qkv_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr, positions_ptr, offsets_ptr,
    slot_mapping_ptr, k_scale_ptr, v_scale_ptr, layer_ptr, key_cache_in_ptr, value_cache_in_ptr,
    q_scale_ptr, k_scale_cache_in_ptr, v_scale_cache_in_ptr,
    # ---- 2. runtime scalars (plan.SCALAR_NAMES) ----
    num_tokens, num_slot_entries, num_cache_slots, num_table_rows, eps, norm_weight_offset,
    # ---- 3. output pointers (plan.OUTPUT_NAMES) ----
    q_out_ptr, gate_out_ptr, k_out_ptr, v_out_ptr, key_cache_ptr, value_cache_ptr,
    q_scales_ptr, k_scale_cache_ptr, v_scale_cache_ptr,
    # ---- 4. constexprs ----
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    HALF_ROT: tl.constexpr,  # rotary_dim // 2
    PAIR_STEP: tl.constexpr,  # 1 (NeoX: A = x[i]) or 2 (GPT-J: A = x[2i])
    PAIR_DELTA: tl.constexpr,  # offset from A to its partner B: rotary_dim/2 (NeoX) or 1 (GPT-J)
    TABLE_STEP: tl.constexpr,  # table column of pair i is i * TABLE_STEP (2 for GPT-J full tables)
    HAS_ROPE: tl.constexpr,  # False: no tables, no rotation (NoPE layers)
    MROPE: tl.constexpr, MROPE_T: tl.constexpr, MROPE_H: tl.constexpr, MROPE_W: tl.constexpr,  # 0: [T] positions
    V_NORM: tl.constexpr,  # V is RMS-normalised without a weight
    NUM_HEAD_PROGS: tl.constexpr, K_END: tl.constexpr, V_END: tl.constexpr,
    HEAD_GROUP: tl.constexpr,  # tiles of Q (K) heads a program loops over; NUM_Q_PROGS = QH / (group * rows)
    NUM_Q_PROGS: tl.constexpr,
    HEAD_ROWS: tl.constexpr,  # heads side by side in a tile's rows: BLOCK_T rows are BLOCK_T / HEAD_ROWS tokens
    Q_HEAD_STRIDE: tl.constexpr,  # qkv columns between consecutive Q heads (D, or 2D interleaved)
    GATE_COL0: tl.constexpr, GATE_HEAD_STRIDE: tl.constexpr, K_COL0: tl.constexpr, V_COL0: tl.constexpr,
    HAS_Q_NORM: tl.constexpr, HAS_K_NORM: tl.constexpr,
    HAS_W_OFFSET: tl.constexpr,  # norm_weight_offset != 0
    HAS_OFFSETS: tl.constexpr, HAS_LAYER: tl.constexpr,
    HAS_GATE: tl.constexpr, RETURN_KV: tl.constexpr,
    K_SCALE_MODE: tl.constexpr, V_SCALE_MODE: tl.constexpr,  # 0 none, 1 per tensor, 2 per KV head, 3 scale cache
    Q_SCALE_MODE: tl.constexpr,  # 0: q in the input dtype; fp8 q: 1 static scale, 2 dynamic per token and head
    Q_MBITS: tl.constexpr, Q_EMIN: tl.constexpr, Q_MAXV: tl.constexpr, Q_SOFT_FP8: tl.constexpr,
    KS_LAYER_STRIDE: tl.constexpr, KS_BLOCK_STRIDE: tl.constexpr, KS_SLOT_STRIDE: tl.constexpr,
    KS_HEAD_STRIDE: tl.constexpr,  # the key scale cache (K_SCALE_MODE 3)
    VS_LAYER_STRIDE: tl.constexpr, VS_BLOCK_STRIDE: tl.constexpr, VS_SLOT_STRIDE: tl.constexpr,
    VS_HEAD_STRIDE: tl.constexpr,
    K_MBITS: tl.constexpr, K_EMIN: tl.constexpr, K_MAXV: tl.constexpr,  # K_MBITS 0: cache is not fp8
    V_MBITS: tl.constexpr, V_EMIN: tl.constexpr, V_MAXV: tl.constexpr,
    K_SOFT_FP8: tl.constexpr, V_SOFT_FP8: tl.constexpr,  # interpreter only: no fnuz type there
    QKV_ROW_STRIDE: tl.constexpr, POS_STRIDE: tl.constexpr, POS_ROW_STRIDE: tl.constexpr, OFF_STRIDE: tl.constexpr,
    SLOT_STRIDE: tl.constexpr,
    COS_ROW_STRIDE: tl.constexpr, COS_COL_STRIDE: tl.constexpr,
    SIN_ROW_STRIDE: tl.constexpr, SIN_COL_STRIDE: tl.constexpr,
    KC_LAYER_STRIDE: tl.constexpr, KC_BLOCK_STRIDE: tl.constexpr, KC_SLOT_STRIDE: tl.constexpr,
    KC_HEAD_STRIDE: tl.constexpr,
    VC_LAYER_STRIDE: tl.constexpr, VC_BLOCK_STRIDE: tl.constexpr, VC_SLOT_STRIDE: tl.constexpr,
    VC_HEAD_STRIDE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # cache block size (tokens per page)
    BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_PASS: tl.constexpr,
    HW_CAST: tl.constexpr,  # 0 interpreter; 1, 2: the target's casts round to nearest-even, 2: and saturate
    TOKENS_MULT16: tl.constexpr, SLOTS_MULT16: tl.constexpr,  # num_tokens / num_slot_entries % 16 == 0
    EVICT_FIRST: tl.constexpr,  # large calls: evict-first hints on the data touched once (plan.evict_first)
):
    if K_SOFT_FP8:
        key_cache_ptr = key_cache_ptr.to(tl.pointer_type(tl.uint8), bitcast=True)
    if V_SOFT_FP8:
        value_cache_ptr = value_cache_ptr.to(tl.pointer_type(tl.uint8), bitcast=True)
    if Q_SOFT_FP8:
        q_out_ptr = q_out_ptr.to(tl.pointer_type(tl.uint8), bitcast=True)
    pid = tl.program_id(0)
    head = pid % NUM_HEAD_PROGS
    tblock = pid // NUM_HEAD_PROGS

    # Triton's own launcher tells the compiler which integer arguments are multiples of 16; jax-triton does not.
    # The plan knows, and says it here for both frontends: a token tile's mask is then uniform, so its positions
    # and slots load as one vector (docs/performance.md).
    if TOKENS_MULT16:
        num_tokens = num_tokens // 16 * 16
    if SLOTS_MULT16:
        num_slot_entries = num_slot_entries // 16 * 16
    if HEAD_ROWS > 1:  # row r: token r // HEAD_ROWS of the tile, head r % HEAD_ROWS of the program's heads
        rows = tl.arange(0, BLOCK_T)
        tok = tblock * (BLOCK_T // HEAD_ROWS) + rows // HEAD_ROWS
        hrow = rows % HEAD_ROWS
    else:
        tok = tblock * BLOCK_T + tl.arange(0, BLOCK_T)
        hrow = 0
    tok_mask = tok < num_tokens
    tok64 = tok.to(tl.int64)
    row_mask = tok_mask[:, None]
    qkv_row = qkv_ptr + (tok64 * QKV_ROW_STRIDE)[:, None]
    in_dtype = qkv_ptr.dtype.element_ty
    eps32 = tl.cast(eps, tl.float32)  # jax-triton passes Python floats as fp64

    # channel offsets inside one head: A (first of each rotary pair), B (its partner), P (pass-through)
    i = tl.arange(0, BLOCK_HALF)
    half_mask = (i < HALF_ROT)[None, :]
    a_offs = (i * PAIR_STEP)[None, :]
    b_offs = a_offs + PAIR_DELTA
    j = tl.arange(0, BLOCK_PASS)
    pass_mask = (j < HEAD_DIM - 2 * HALF_ROT)[None, :]
    p_offs = (2 * HALF_ROT + j)[None, :]
    d = tl.arange(0, BLOCK_D)
    d_mask = (d < HEAD_DIM)[None, :]

    if head < K_END:
        # ---------------- Q or K head: RMSNorm + RoPE (+ cache write for K) ----------------
        # Every load that does not depend on loaded data is issued before the first use of any loaded value,
        # so a program waits for about two memory round trips (qkv/positions/weights/slot, then the table rows).
        # HEAD_GROUP > 1: the program's heads share one read of the tables (three rows per token with mRoPE)
        if HEAD_GROUP > 1 and HAS_ROPE:
            c_grp, s_grp = _load_tables(cos_ptr, sin_ptr, positions_ptr, offsets_ptr, tok64, tok_mask,
                                        num_table_rows, i, row_mask & half_mask, HAS_OFFSETS, MROPE, MROPE_T, MROPE_H,
                                        MROPE_W, TABLE_STEP, POS_STRIDE, POS_ROW_STRIDE, OFF_STRIDE, COS_ROW_STRIDE,
                                        COS_COL_STRIDE, SIN_ROW_STRIDE, SIN_COL_STRIDE)
        else:
            c_grp = 0.0
            s_grp = 0.0
        if head < NUM_Q_PROGS:
            if Q_SCALE_MODE == 1:  # a scale is applied as a reciprocal folded into the norm's row factor
                q_inv = 1.0 / tl.load(q_scale_ptr)
            if Q_SCALE_MODE == 2 and HEAD_GROUP > 1:
                # a token's scales of the group's tiles go out in one [BLOCK_T, HEAD_GROUP] store after the loop,
                # not HEAD_GROUP 4-byte stores 4 * NUM_Q_HEADS bytes apart (adjacent with one head in rows,
                # HEAD_ROWS floats apart with more)
                gcol = tl.arange(0, HEAD_GROUP)[None, :]
                qs_grp = tl.full([BLOCK_T, HEAD_GROUP], 0.0, tl.float32)
            for g in tl.static_range(HEAD_GROUP):
                qh = (head * HEAD_GROUP + g) * HEAD_ROWS + hrow
                a_rot, b_rot, p, r = _load_norm_rope(
                    qkv_row + _per_row(qh * Q_HEAD_STRIDE, HEAD_ROWS), q_weight_ptr, HAS_Q_NORM, HAS_W_OFFSET,
                    cos_ptr, sin_ptr,
                    positions_ptr, offsets_ptr, tok64, tok_mask, row_mask, num_table_rows, eps32, norm_weight_offset,
                    i, a_offs, b_offs, p_offs, half_mask, pass_mask, HAS_PASS, HAS_OFFSETS, HAS_ROPE, MROPE, MROPE_T,
                    MROPE_H, MROPE_W, HEAD_DIM, TABLE_STEP, POS_STRIDE, POS_ROW_STRIDE, OFF_STRIDE, COS_ROW_STRIDE,
                    COS_COL_STRIDE, SIN_ROW_STRIDE, SIN_COL_STRIDE, BLOCK_T, BLOCK_PASS, EVICT_FIRST, c_grp, s_grp,
                    HEAD_GROUP > 1, HEAD_GROUP > 1 and HEAD_ROWS > 1)
                q_dst = q_out_ptr + (tok64 * (NUM_Q_HEADS * HEAD_DIM) + qh * HEAD_DIM)[:, None]
                if Q_SCALE_MODE == 0:
                    _store_head(q_dst, row_mask, a_rot, b_rot, p, r[:, None], a_offs, b_offs, p_offs, half_mask,
                                pass_mask, HAS_PASS, in_dtype, 0, 0, 0.0, False, HW_CAST, EVICT_FIRST)
                else:
                    if Q_SCALE_MODE == 2:
                        qs_t = _head_scale(a_rot, b_rot, p, r, Q_MAXV)
                        if HEAD_GROUP > 1:
                            qs_grp = tl.where(gcol == g, qs_t[:, None], qs_grp)
                        else:
                            tl.store(q_scales_ptr + tok64 * NUM_Q_HEADS + qh, qs_t, mask=tok_mask)
                        f = _scaled_norm_factor(r, qs_t)[:, None]
                    else:
                        f = (r * q_inv)[:, None]
                    _store_head(q_dst, row_mask, a_rot, b_rot, p, f, a_offs, b_offs, p_offs,
                                half_mask, pass_mask, HAS_PASS, q_out_ptr.dtype.element_ty, Q_MBITS, Q_EMIN, Q_MAXV,
                                Q_SOFT_FP8, HW_CAST, EVICT_FIRST)
            if Q_SCALE_MODE == 2 and HEAD_GROUP > 1:
                tl.store(q_scales_ptr + (tok64 * NUM_Q_HEADS + head * HEAD_GROUP * HEAD_ROWS + hrow)[:, None]
                         + gcol * HEAD_ROWS, qs_grp, mask=row_mask)
        else:
            slot = _load_slot(slot_mapping_ptr, tok, tok64, tok_mask, num_slot_entries, SLOT_STRIDE)
            for g in tl.static_range(HEAD_GROUP):
                kh = ((head - NUM_Q_PROGS) * HEAD_GROUP + g) * HEAD_ROWS + hrow
                if K_SCALE_MODE == 1:
                    k_inv = 1.0 / tl.load(k_scale_ptr)
                elif K_SCALE_MODE == 2:
                    k_inv = 1.0 / tl.load(k_scale_ptr + kh)
                a_rot, b_rot, p, r = _load_norm_rope(
                    qkv_row + K_COL0 + _per_row(kh * HEAD_DIM, HEAD_ROWS), k_weight_ptr, HAS_K_NORM, HAS_W_OFFSET,
                    cos_ptr, sin_ptr,
                    positions_ptr, offsets_ptr, tok64, tok_mask, row_mask, num_table_rows, eps32, norm_weight_offset,
                    i, a_offs, b_offs, p_offs, half_mask, pass_mask, HAS_PASS, HAS_OFFSETS, HAS_ROPE, MROPE, MROPE_T,
                    MROPE_H, MROPE_W, HEAD_DIM, TABLE_STEP, POS_STRIDE, POS_ROW_STRIDE, OFF_STRIDE, COS_ROW_STRIDE,
                    COS_COL_STRIDE, SIN_ROW_STRIDE, SIN_COL_STRIDE, BLOCK_T, BLOCK_PASS, EVICT_FIRST, c_grp, s_grp,
                    HEAD_GROUP > 1, HEAD_GROUP > 1 and HEAD_ROWS > 1)
                slot_ok, slot_base = _slot_base(slot, layer_ptr, num_cache_slots, BLOCK_SIZE, HAS_LAYER,
                                                KC_LAYER_STRIDE, KC_BLOCK_STRIDE, KC_SLOT_STRIDE)
                if RETURN_KV:
                    k_dst = k_out_ptr + (tok64 * (NUM_KV_HEADS * HEAD_DIM) + kh * HEAD_DIM)[:, None]
                    _store_head(k_dst, row_mask, a_rot, b_rot, p, r[:, None], a_offs, b_offs, p_offs, half_mask,
                                pass_mask, HAS_PASS, in_dtype, 0, 0, 0.0, False, HW_CAST, EVICT_FIRST)
                cache_off = slot_base + kh * KC_HEAD_STRIDE
                if K_SCALE_MODE == 3:  # per token and head: the scale goes to the scale cache at the same slot
                    ks_t = _head_scale(a_rot, b_rot, p, r, K_MAXV)
                    s_ok, s_base = _slot_base(slot, layer_ptr, num_cache_slots, BLOCK_SIZE, HAS_LAYER,
                                              KS_LAYER_STRIDE, KS_BLOCK_STRIDE, KS_SLOT_STRIDE)
                    tl.store(k_scale_cache_ptr + s_base + kh * KS_HEAD_STRIDE, ks_t, mask=s_ok)
                    fc = _scaled_norm_factor(r, ks_t)[:, None]
                elif K_SCALE_MODE != 0:
                    fc = (r * k_inv)[:, None]
                else:
                    fc = r[:, None]
                _store_head(key_cache_ptr + cache_off[:, None], slot_ok[:, None], a_rot, b_rot, p, fc,
                            a_offs, b_offs, p_offs, half_mask, pass_mask, HAS_PASS,
                            key_cache_ptr.dtype.element_ty, K_MBITS, K_EMIN, K_MAXV, K_SOFT_FP8, HW_CAST, EVICT_FIRST)
    elif head < V_END:
        # ---------------- V head: copy (V-norm) + cache write; k_eq_v: V_COL0 is the K block ----------------
        vh = (head - K_END) * HEAD_ROWS + hrow
        x = _load_once(qkv_row + V_COL0 + _per_row(vh * HEAD_DIM, HEAD_ROWS) + d[None, :], row_mask & d_mask,
                       EVICT_FIRST)  # V head
        slot = _load_slot(slot_mapping_ptr, tok, tok64, tok_mask, num_slot_entries, SLOT_STRIDE)
        if V_SCALE_MODE == 1:
            v_inv = 1.0 / tl.load(v_scale_ptr)
        elif V_SCALE_MODE == 2:
            v_inv = _per_row(1.0 / tl.load(v_scale_ptr + vh), HEAD_ROWS)
        if V_NORM:
            xf = x.to(tl.float32)
            ss = tl.reduce(xf * xf, 1, tl.standard._sum_combine)  # masked lanes hold 0 (see _rms_scale)
            xf = xf * tl.math.rsqrt(ss / HEAD_DIM + eps32)[:, None]
        if RETURN_KV:
            v_dst = v_out_ptr + (tok64 * (NUM_KV_HEADS * HEAD_DIM) + vh * HEAD_DIM)[:, None] + d[None, :]
            if V_NORM:
                _store_converted(v_dst, xf, row_mask & d_mask, in_dtype, 0, 0, 0.0, False, HW_CAST, EVICT_FIRST)
            else:
                _store_once(v_dst, x, row_mask & d_mask, EVICT_FIRST)
        slot_ok, slot_base = _slot_base(slot, layer_ptr, num_cache_slots, BLOCK_SIZE, HAS_LAYER,
                                        VC_LAYER_STRIDE, VC_BLOCK_STRIDE, VC_SLOT_STRIDE)
        cache_off = slot_base + vh * VC_HEAD_STRIDE
        cache_dtype = value_cache_ptr.dtype.element_ty
        vc_dst = value_cache_ptr + cache_off[:, None] + d[None, :]
        if V_SCALE_MODE == 0 and V_MBITS == 0 and not V_NORM:
            _store_once(vc_dst, x.to(cache_dtype), slot_ok[:, None] & d_mask, EVICT_FIRST)  # same dtype: exact copy
        else:
            if not V_NORM:
                xf = x.to(tl.float32)
            if V_SCALE_MODE == 3:  # per token and head, as for K
                vs_t = _dynamic_scale(_row_amax(xf), V_MAXV)
                s_ok, s_base = _slot_base(slot, layer_ptr, num_cache_slots, BLOCK_SIZE, HAS_LAYER,
                                          VS_LAYER_STRIDE, VS_BLOCK_STRIDE, VS_SLOT_STRIDE)
                tl.store(v_scale_cache_ptr + s_base + vh * VS_HEAD_STRIDE, vs_t, mask=s_ok)
                v_inv = (1.0 / vs_t)[:, None]
            if V_SCALE_MODE != 0:
                xf = xf * v_inv
            _store_converted(vc_dst, xf, slot_ok[:, None] & d_mask, cache_dtype, V_MBITS, V_EMIN, V_MAXV,
                             V_SOFT_FP8, HW_CAST, EVICT_FIRST)
    else:
        if HAS_GATE:
            # ---------------- gate head: plain copy ----------------
            g = (head - V_END) * HEAD_ROWS + hrow
            gx = _load_once(qkv_row + GATE_COL0 + _per_row(g * GATE_HEAD_STRIDE, HEAD_ROWS) + d[None, :],
                            row_mask & d_mask, EVICT_FIRST)
            g_dst = gate_out_ptr + (tok64 * (NUM_Q_HEADS * HEAD_DIM) + g * HEAD_DIM)[:, None]
            _store_once(g_dst + d[None, :], gx, row_mask & d_mask, EVICT_FIRST)
