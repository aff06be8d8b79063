"""The unfused PyTorch chain for the same op, written the way model code does it (separate ops, math in the
input dtype around an fp32 norm, the cache write as an opaque ``index_copy_``).

It is a baseline, not the specification (that is ``fused_qkv.core.oracle``): the tests check it against the
oracle with a low-precision tolerance, and ``fused-qkv bench`` times it against the fused op.
Supports NeoX/GPT-J half tables, partial rotary, both gate layouts, NHD caches, per-tensor/per-head scales.
"""

from __future__ import annotations

import torch


def split_qkv(qkv, num_q_heads, num_kv_heads, head_dim, attn_output_gate=False, gated_qkv_layout="interleaved"):
    T = qkv.shape[0]
    QH, KVH, D = num_q_heads, num_kv_heads, head_dim
    q_cols = QH * D * (2 if attn_output_gate else 1)
    q, k, v = qkv.split([q_cols, KVH * D, KVH * D], dim=-1)
    gate = None
    if attn_output_gate and gated_qkv_layout == "interleaved":
        q, gate = q.view(T, QH, 2 * D).chunk(2, dim=-1)
    elif attn_output_gate:
        q, gate = q.chunk(2, dim=-1)
    return q.reshape(T, QH, D), None if gate is None else gate.reshape(T, QH, D), k.view(T, KVH, D), \
        v.view(T, KVH, D)


def rms_norm(x, weight, eps, offset):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (weight.float() + offset)).to(x.dtype)


def rope(x, cos, sin, rotary_dim, is_neox):
    """x [T, H, D]; cos/sin [T, rotary_dim/2] rows already gathered (input dtype math, like model code)."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    if is_neox:
        a, b = rot.chunk(2, dim=-1)
        out = torch.cat([a * c - b * s, b * c + a * s], dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)
    return torch.cat([out, rest], dim=-1)


def prologue_math(qkv, q_weight, k_weight, cos, sin, positions, *, num_q_heads, num_kv_heads, head_dim, eps=1e-6,
                  norm_weight_offset=0.0, is_neox=True, rotary_dim=None, attn_output_gate=False,
                  gated_qkv_layout="interleaved"):
    """Split, norm and RoPE (half tables): the part a compiler may fuse. Returns q, gate, k, v."""
    rotary_dim = rotary_dim or head_dim
    q, gate, k, v = split_qkv(qkv, num_q_heads, num_kv_heads, head_dim, attn_output_gate, gated_qkv_layout)
    if q_weight is not None:
        q = rms_norm(q, q_weight, eps, norm_weight_offset)
    if k_weight is not None:
        k = rms_norm(k, k_weight, eps, norm_weight_offset)
    c, s = cos[positions], sin[positions]
    q = rope(q, c, s, rotary_dim, is_neox)
    k = rope(k, c, s, rotary_dim, is_neox)
    return q, None if gate is None else gate.contiguous(), k, v.contiguous()


def write_cache(k, v, key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None):
    """vLLM-style NHD cache write: one ``index_copy_`` per cache (slots must be valid)."""
    KVH, D = k.shape[1], k.shape[2]
    ks = k if k_scale is None else (k.float() / k_scale.view(-1, 1) if k_scale.numel() > 1 else k.float() / k_scale)
    vs = v if v_scale is None else (v.float() / v_scale.view(-1, 1) if v_scale.numel() > 1 else v.float() / v_scale)
    for cache, x in ((key_cache, ks), (value_cache, vs)):
        if cache.element_size() == 1:  # fp8: saturate, and copy the bytes (index_copy_ has no fp8 kernels)
            m = torch.finfo(cache.dtype).max
            x = x.float().clamp(-m, m).to(cache.dtype).view(torch.uint8)
            cache = cache.view(torch.uint8)
        cache.view(-1, KVH, D).index_copy_(0, slot_mapping, x.to(cache.dtype))


def unfused(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, *, k_scale=None,
            v_scale=None, **cfg):
    """The whole chain, eager: ``prologue_math`` then ``write_cache``. Returns q, gate, k, v."""
    q, gate, k, v = prologue_math(qkv, q_weight, k_weight, cos, sin, positions, **cfg)
    write_cache(k, v, key_cache, value_cache, slot_mapping, k_scale, v_scale)
    return q, gate, k, v
