"""Run in its own process with XLA_FLAGS=--xla_force_host_platform_device_count=4 (see test_jax_shard_map.py).

The JAX op under jax.shard_map with Q heads, KV heads and the caches' head axis split across a 4-device mesh
axis ("tp"), against the unsharded op on the same inputs: every output and both caches must be bit-identical.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from fused_qkv.core import tensor_parallel_columns
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as op
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache_fp8 as op8
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def check(gate, layout, option=None):
    """``option``: None, "mrope" (interleaved sections, [3, T] positions) or "k_eq_v" (no V block, V-norm)."""
    n = len(jax.devices())
    assert n == 4, f"expected 4 simulated devices, got {n}"
    mesh = jax.make_mesh((n,), ("tp",))
    QH, KVH, D, T, NB, BS = 8, 4, 32, 6, 4, 4
    rng = np.random.default_rng(1)
    k_eq_v = option == "k_eq_v"
    width = (QH * (2 if gate else 1) + (1 if k_eq_v else 2) * KVH) * D
    qkv = jnp.asarray(rng.standard_normal((T, width)) + 0.2, jnp.bfloat16)
    w = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.bfloat16)
    ang = np.arange(16)[:, None] * (1 / 10000 ** (np.arange(0, D, 2) / D))
    cos, sin = jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)
    pos = jnp.asarray(rng.integers(0, 16, (3, T) if option == "mrope" else T), jnp.int32)
    slots = jnp.asarray(rng.permutation(NB * BS)[:T], jnp.int32)
    cache_shape = (NB, BS, KVH, D) if layout == "NHD" else (NB, KVH, BS, D)
    kc = jnp.asarray(rng.standard_normal(cache_shape), jnp.bfloat16)
    vc = jnp.asarray(rng.standard_normal(cache_shape), jnp.bfloat16)
    head_axis = 2 if layout == "NHD" else 1
    kw = dict(head_dim=D, attn_output_gate=gate is not None, gated_qkv_layout=gate or "interleaved",
              kv_cache_layout=layout, norm_weight_offset=1.0 if gate else 0.0)
    if option == "mrope":
        kw.update(mrope_section=[6, 5, 5], mrope_interleaved=True)
    elif option == "k_eq_v":
        kw.update(k_eq_v=True, v_norm=True)

    full = op(qkv, w, w, cos, sin, pos, kc, vc, slots, num_q_heads=QH, num_kv_heads=KVH, **kw)

    perm = tensor_parallel_columns(n, num_q_heads=QH, num_kv_heads=KVH, head_dim=D,
                                   attn_output_gate=gate is not None, gated_qkv_layout=gate or "interleaved",
                                   k_eq_v=k_eq_v)
    qkv_tp = qkv[:, jnp.asarray(perm)]
    cache_spec = P(*[("tp" if i == head_axis else None) for i in range(4)])

    def local(qkv_l, kc_l, vc_l):
        out = op(qkv_l, w, w, cos, sin, pos, kc_l, vc_l, slots, num_q_heads=QH // n, num_kv_heads=KVH // n, **kw)
        gate_l = out.gate if out.gate is not None else out.q
        return out.q, gate_l, out.k, out.v, out.key_cache, out.value_cache

    heads = P(None, "tp", None)
    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(None, "tp"), cache_spec, cache_spec),
                                    out_specs=(heads, heads, heads, heads, cache_spec, cache_spec)),
                      donate_argnums=(1, 2))
    kc_s = jax.device_put(kc, NamedSharding(mesh, cache_spec))
    vc_s = jax.device_put(vc, NamedSharding(mesh, cache_spec))
    q, g, k, v, kc2, vc2 = sharded(jax.device_put(qkv_tp, NamedSharding(mesh, P(None, "tp"))), kc_s, vc_s)
    pairs = [("q", q, full.q), ("k", k, full.k), ("v", v, full.v), ("key_cache", kc2, full.key_cache),
             ("value_cache", vc2, full.value_cache)]
    if gate:
        pairs.append(("gate", g, full.gate))
    for name, a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), f"{name}: sharded != unsharded"
    print(f"shard_map gate={gate} layout={layout} option={option}: q, k, v, gate, caches bit-identical on {n} "
          f"devices")


def check_fp8(layout):
    """The fp8 entry point sharded over heads: dynamic fp8 q with its per-token-head scales, fp8 caches and their
    per-token-head scale caches split along the KV-head axis; bit-identical to the unsharded call."""
    n = len(jax.devices())
    mesh = jax.make_mesh((n,), ("tp",))
    QH, KVH, D, T, NB, BS = 8, 4, 32, 6, 4, 4
    rng = np.random.default_rng(2)
    qkv = jnp.asarray(rng.standard_normal((T, (QH + 2 * KVH) * D)) + 0.2, jnp.bfloat16)
    w = jnp.asarray(rng.uniform(0.5, 1.5, D), jnp.bfloat16)
    ang = np.arange(16)[:, None] * (1 / 10000 ** (np.arange(0, D, 2) / D))
    cos, sin = jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)
    pos = jnp.asarray(rng.integers(0, 16, T), jnp.int32)
    slots = jnp.asarray(rng.permutation(NB * BS)[:T], jnp.int32)
    cache_shape = (NB, BS, KVH, D) if layout == "NHD" else (NB, KVH, BS, D)
    kc = jnp.asarray(rng.standard_normal(cache_shape), jnp.float8_e4m3fn)
    vc = jnp.asarray(rng.standard_normal(cache_shape), jnp.float8_e4m3fn)
    ksc = jnp.asarray(rng.uniform(1, 2, cache_shape[:-1]), jnp.float32)
    vsc = jnp.asarray(rng.uniform(1, 2, cache_shape[:-1]), jnp.float32)
    head_axis = 2 if layout == "NHD" else 1
    kw = dict(head_dim=D, kv_cache_layout=layout, q_dtype=jnp.float8_e4m3fn)
    full = op8(qkv, w, w, cos, sin, pos, kc, vc, slots, num_q_heads=QH, num_kv_heads=KVH, k_scale_cache=ksc,
               v_scale_cache=vsc, **kw)
    perm = tensor_parallel_columns(n, num_q_heads=QH, num_kv_heads=KVH, head_dim=D)
    qkv_tp = qkv[:, jnp.asarray(perm)]
    cache_spec = P(*[("tp" if i == head_axis else None) for i in range(4)])
    scale_spec = P(*[("tp" if i == head_axis else None) for i in range(3)])

    def local(qkv_l, kc_l, vc_l, ksc_l, vsc_l):
        out = op8(qkv_l, w, w, cos, sin, pos, kc_l, vc_l, slots, num_q_heads=QH // n, num_kv_heads=KVH // n,
                  k_scale_cache=ksc_l, v_scale_cache=vsc_l, **kw)
        return out.q, out.q_scales, out.key_cache, out.value_cache, out.k_scale_cache, out.v_scale_cache

    sharded = jax.jit(jax.shard_map(local, mesh=mesh,
                                    in_specs=(P(None, "tp"), cache_spec, cache_spec, scale_spec, scale_spec),
                                    out_specs=(P(None, "tp", None), P(None, "tp"), cache_spec, cache_spec,
                                               scale_spec, scale_spec)), donate_argnums=(1, 2, 3, 4))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    got = sharded(put(qkv_tp, P(None, "tp")), put(kc, cache_spec), put(vc, cache_spec), put(ksc, scale_spec),
                  put(vsc, scale_spec))
    want = (full.q, full.q_scales, full.key_cache, full.value_cache, full.k_scale_cache, full.v_scale_cache)
    for name, a, b in zip(("q", "q_scales", "key_cache", "value_cache", "k_scale_cache", "v_scale_cache"), got,
                          want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        raw = np.uint8 if a.dtype.itemsize == 1 else np.uint32
        assert np.array_equal(a.view(raw), b.view(raw)), f"{name}: sharded != unsharded"
    print(f"shard_map fp8 layout={layout}: q, q_scales, caches and scale caches bit-identical on {n} devices")


if __name__ == "__main__":
    for layout in ("NHD", "HND"):
        check_fp8(layout)
    for gate, layout, option in ((None, "NHD", None), ("interleaved", "HND", None), ("blocked", "NHD", None),
                                 (None, "NHD", "mrope"), ("interleaved", "HND", "k_eq_v")):
        check(gate, layout, option)
    print("SHARD_MAP OK")
    sys.exit(0)
