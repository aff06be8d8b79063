"""GPU reliability: 64-bit cache addressing beyond 2**31 elements, no memory growth over 1000 donated JAX calls."""

import numpy as np
import torch
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
from helpers import assert_rounded, np64, oracle_for


def test_cache_with_more_than_2_31_elements():
    """Slots beyond 2**31 / (KVH * D) land where they should (element offsets above 2**31), nothing else moves."""
    import dataclasses

    from helpers import Case, make_inputs

    QH, KVH, D, BS = 32, 8, 128, 16
    num_blocks = 2**31 // (BS * KVH * D) + 4096  # 2.2e9 elements per cache (fp8: 2.2 GB each)
    n_slots = num_blocks * BS
    case = Case(T=6, QH=QH, KVH=KVH, D=D, block_size=BS, num_blocks=num_blocks, cache_dtype="float8_e4m3fn",
                scale="tensor", max_positions=64)
    args, kwargs = make_inputs(dataclasses.replace(case, num_blocks=2, block_size=4), "cuda")  # small tensors
    POISON = 0x5A
    kc = torch.full((num_blocks, BS, KVH, D), POISON, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    vc = torch.full((num_blocks, BS, KVH, D), POISON, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    assert kc.numel() > 2**31
    first_big = 2**31 // (KVH * D)
    slots = torch.tensor([n_slots - 1, first_big, first_big + 12345, n_slots - BS, 7, -1], device="cuda")
    args.update(key_cache=kc, value_cache=vc, slot_mapping=slots)
    out = op(**args, **kwargs)
    torch.cuda.synchronize()
    ref = oracle_for(case, args, kwargs)
    for t, s in enumerate(ref.slots.tolist()):
        if s < 0:
            continue
        b, o = divmod(s, BS)
        assert_rounded(np64(kc[b, o]), ref.exact_key_cache[t], "float8_e4m3fn", f"key_cache slot {s}")
        assert_rounded(np64(vc[b, o]), ref.exact_value_cache[t], "float8_e4m3fn", f"value_cache slot {s}")
        kc[b, o].view(torch.uint8).fill_(POISON)  # restore, then everything must be poison again
        vc[b, o].view(torch.uint8).fill_(POISON)
    assert bool((kc.view(torch.uint8) == POISON).all()) and bool((vc.view(torch.uint8) == POISON).all())
    assert_rounded(np64(out.q), ref.q, "bfloat16", "q")


def test_jax_donated_loop_1000_calls_no_memory_growth():
    import jax
    import jax.numpy as jnp
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jop

    T, QH, KVH, D = 4, 8, 2, 128
    rng = np.random.default_rng(0)
    qkv = jnp.asarray(rng.standard_normal((T, (QH + 2 * KVH) * D)), jnp.bfloat16)
    w = jnp.ones((D,), jnp.bfloat16)
    ang = np.arange(256)[:, None] / (1e4 ** (np.arange(0, D, 2) / D))
    cos, sin = jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)

    @jax.jit
    def positions_for(i):
        return (jnp.arange(T, dtype=jnp.int32) + i * T) % 256

    step = jax.jit(lambda kc, vc, pos: jop(qkv, w, w, cos, sin, pos, kc, vc, pos, num_q_heads=QH, num_kv_heads=KVH,
                                           head_dim=D), donate_argnums=(0, 1))
    kc = jnp.zeros((64, 4, KVH, D), jnp.bfloat16)
    vc = jnp.zeros_like(kc)
    dev = kc.devices().pop()
    for i in range(10):
        out = step(kc, vc, positions_for(i))
        kc, vc = out.key_cache, out.value_cache
    jax.block_until_ready(kc)
    before = dev.memory_stats()["bytes_in_use"]
    for i in range(1000):
        out = step(kc, vc, positions_for(i))
        kc, vc = out.key_cache, out.value_cache
    jax.block_until_ready((kc, vc, out.q))
    del out
    after = dev.memory_stats()["bytes_in_use"]
    assert after <= before + (1 << 20), f"device memory grew from {before} to {after} bytes over 1000 calls"
