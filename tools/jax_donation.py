"""JAX donation check: with donated caches the op's time does not grow with the cache size; without, XLA copies.

``python tools/jax_donation.py [--out FILE]``: a Qwen3-8B-like decode step (T=16, 32 Q heads,
8 KV heads, head_dim 128, bf16, NHD block 16) jitted with and without ``donate_argnames`` over caches of growing
size. Times are medians over repeated calls, each ended with ``block_until_ready`` (so they include host dispatch,
which does not depend on the cache size). On a CPU it runs a small smoke version and says so.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def run(sizes_mb, reps: int):
    import jax
    import jax.numpy as jnp
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as op

    T, QH, KVH, D, BS = 16, 32, 8, 128, 16
    rng = np.random.default_rng(0)
    qkv = jnp.asarray(rng.standard_normal((T, (QH + 2 * KVH) * D)), jnp.bfloat16)
    w = jnp.ones((D,), jnp.bfloat16)
    ang = np.arange(4096)[:, None] / (1e6 ** (np.arange(0, D, 2) / D))
    cos, sin = jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)
    pos = jnp.asarray(rng.integers(0, 4096, T), jnp.int32)
    cfg = dict(num_q_heads=QH, num_kv_heads=KVH, head_dim=D)

    def step(qkv, slots, key_cache, value_cache):
        out = op(qkv, w, w, cos, sin, pos, key_cache, value_cache, slots, **cfg)
        return out.q, out.key_cache, out.value_cache

    donated = jax.jit(step, donate_argnames=("key_cache", "value_cache"))
    copying = jax.jit(step)
    rows = []
    for mb in sizes_mb:
        blocks = max(2, int(mb * 2**20 // (BS * KVH * D * 2)))
        slots = jnp.asarray(rng.permutation(blocks * BS)[:T], jnp.int32)
        res = {"cache_mb_each": round(blocks * BS * KVH * D * 2 / 2**20, 1)}
        for name, fn in (("donated", donated), ("not_donated", copying)):
            kc = jnp.zeros((blocks, BS, KVH, D), jnp.bfloat16)
            vc = jnp.zeros_like(kc)
            ptr = kc.unsafe_buffer_pointer()
            for _ in range(3):  # compile + warm up
                q, kc, vc = fn(qkv, slots, kc, vc)
            jax.block_until_ready(kc)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                q, kc, vc = fn(qkv, slots, kc, vc)
                jax.block_until_ready((q, kc, vc))
                times.append(time.perf_counter() - t0)
            res[f"{name}_us"] = round(float(np.median(times)) * 1e6, 1)
            res[f"{name}_in_place"] = kc.unsafe_buffer_pointer() == ptr
            del kc, vc
        rows.append(res)
    return rows


def main(argv=None) -> int:
    import jax

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    gpu = jax.default_backend() != "cpu"
    sizes, reps = ([64, 512, 4096], 50) if gpu else ([1, 4], 3)
    device = str(jax.devices()[0].device_kind)
    if not gpu:
        print("CPU smoke run (Triton interpreter; the caches are copied into the callback): not a measurement")
    rows = run(sizes, reps)
    print(f"JAX donation check on {device}: median time per call (us), T=16 decode step, S1 shapes")
    print(f"{'cache MB (each)':>16} {'donated':>10} {'in place':>9} {'not donated':>12} {'in place':>9}")
    for r in rows:
        print(f"{r['cache_mb_each']:>16} {r['donated_us']:>10} {str(r['donated_in_place']):>9} "
              f"{r['not_donated_us']:>12} {str(r['not_donated_in_place']):>9}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device, "gpu": gpu, "rows": rows}, f, indent=1)
    if gpu:
        flat = max(r["donated_us"] for r in rows) <= 1.5 * min(r["donated_us"] for r in rows)
        print("donated time flat across cache sizes:", flat)
        return 0 if flat and all(r["donated_in_place"] for r in rows) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
