"""The unfused JAX chain for the same op (separate jnp ops, cache write as ``.at[slots].set``), for tests and
``fused-qkv bench``. A baseline, not the specification (``fused_qkv.core.oracle``). NHD caches, half tables."""

from __future__ import annotations

import jax.numpy as jnp


def _rms_norm(x, weight, eps, offset):
    xf = x.astype(jnp.float32)
    y = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps))
    return (y * (weight.astype(jnp.float32) + offset)).astype(x.dtype)


def _rope(x, c, s, rotary_dim, is_neox):
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    c, s = c[:, None, :].astype(x.dtype), s[:, None, :].astype(x.dtype)
    if is_neox:
        a, b = jnp.split(rot, 2, axis=-1)
        out = jnp.concatenate([a * c - b * s, b * c + a * s], axis=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = jnp.stack([a * c - b * s, b * c + a * s], axis=-1).reshape(rot.shape)
    return jnp.concatenate([out, rest], axis=-1)


def unfused(qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, *, num_q_heads,
            num_kv_heads, head_dim, eps=1e-6, norm_weight_offset=0.0, is_neox=True, rotary_dim=None,
            attn_output_gate=False, gated_qkv_layout="interleaved", k_scale=None, v_scale=None):
    """Returns (q, gate, k, v, key_cache, value_cache); jit it with the caches donated."""
    T = qkv.shape[0]
    QH, KVH, D = num_q_heads, num_kv_heads, head_dim
    rotary_dim = rotary_dim or D
    q_cols = QH * D * (2 if attn_output_gate else 1)
    q, k, v = qkv[:, :q_cols], qkv[:, q_cols:q_cols + KVH * D], qkv[:, q_cols + KVH * D:]
    gate = None
    if attn_output_gate and gated_qkv_layout == "interleaved":
        qg = q.reshape(T, QH, 2, D)
        q, gate = qg[:, :, 0], qg[:, :, 1]
    elif attn_output_gate:
        q, gate = q[:, :QH * D].reshape(T, QH, D), q[:, QH * D:].reshape(T, QH, D)
    q, k, v = q.reshape(T, QH, D), k.reshape(T, KVH, D), v.reshape(T, KVH, D)
    if q_weight is not None:
        q = _rms_norm(q, q_weight, eps, norm_weight_offset)
    if k_weight is not None:
        k = _rms_norm(k, k_weight, eps, norm_weight_offset)
    c, s = cos[positions], sin[positions]
    q, k = _rope(q, c, s, rotary_dim, is_neox), _rope(k, c, s, rotary_dim, is_neox)

    def scaled(x, scale, cache):
        if scale is not None:
            x = x.astype(jnp.float32) / (scale.reshape(-1, 1) if scale.size > 1 else scale.reshape(()))
        if jnp.issubdtype(cache.dtype, jnp.floating) and jnp.finfo(cache.dtype).bits == 8:
            m = float(jnp.finfo(cache.dtype).max)
            x = jnp.clip(x.astype(jnp.float32), -m, m)
        return x.astype(cache.dtype)

    shape = key_cache.shape
    kc = key_cache.reshape(-1, KVH, D).at[slot_mapping].set(scaled(k, k_scale, key_cache)).reshape(shape)
    vc = value_cache.reshape(-1, KVH, D).at[slot_mapping].set(scaled(v, v_scale, value_cache)).reshape(shape)
    return q, gate, k, v, kc, vc
