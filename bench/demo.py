"""``fused-qkv demo``: run the op on this machine's device through every frontend and verify it against the oracle.

A small Qwen3-like batch (8 Q heads, 2 KV heads, head_dim 128, plain gamma, NeoX RoPE,
NHD paged cache with block 16, tokens scattered over the cache), once with a bf16 cache
and once with an fp8 cache and per-head scales. Each row of the table is one output;
``err`` is the worst error in units of the allowed error (half an ulp of the storage
dtype, plus fp32 noise): a correctly rounded result scores <= 1.
"""

from __future__ import annotations

import sys

import numpy as np
from fused_qkv.core import reference, rounding_error

CONFIG = dict(num_q_heads=8, num_kv_heads=2, head_dim=128, eps=1e-6, norm_weight_offset=0.0, is_neox=True)
TOKENS, BLOCK_SIZE, NUM_BLOCKS, MAX_POS = 24, 16, 8, 4096


def make_batch(seed: int = 0):
    """NumPy inputs (float32 values exactly representable in bf16) shared by every frontend."""
    rng = np.random.default_rng(seed)
    QH, KVH, D = CONFIG["num_q_heads"], CONFIG["num_kv_heads"], CONFIG["head_dim"]

    def bf16_exact(x):  # round to bf16 values so every frontend sees the same numbers
        x = np.asarray(x, np.float32).view(np.uint32)
        x = (x + 0x7FFF + ((x >> 16) & 1)) & 0xFFFF0000
        return x.view(np.float32)

    qkv = bf16_exact(rng.standard_normal((TOKENS, (QH + 2 * KVH) * D)) + 0.1)
    inv_freq = 1.0 / (1e6 ** (np.arange(0, D, 2) / D))
    ang = np.arange(MAX_POS)[:, None] * inv_freq[None]
    return dict(
        qkv=qkv, q_weight=bf16_exact(rng.uniform(0.5, 1.5, D)), k_weight=bf16_exact(rng.uniform(0.5, 1.5, D)),
        cos=np.cos(ang).astype(np.float32), sin=np.sin(ang).astype(np.float32),
        positions=rng.integers(0, MAX_POS, TOKENS).astype(np.int64),
        slot_mapping=rng.permutation(NUM_BLOCKS * BLOCK_SIZE)[:TOKENS].astype(np.int64),
        k_scale=rng.uniform(0.5, 2.0, KVH).astype(np.float32), v_scale=rng.uniform(0.5, 2.0, KVH).astype(np.float32),
    )


def run_torch(batch, device: str, cache_dtype: str):
    import torch
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache

    t = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    for k in ("qkv", "q_weight", "k_weight"):
        t[k] = t[k].to(torch.bfloat16)
    cdt = getattr(torch, cache_dtype)
    shape = (NUM_BLOCKS, BLOCK_SIZE, CONFIG["num_kv_heads"], CONFIG["head_dim"])
    kc = torch.full(shape, -3.0, device=device).to(cdt)  # poison
    vc = torch.full(shape, -3.0, device=device).to(cdt)
    fp8 = cache_dtype.startswith("float8")
    out = fused_qkv_split_qk_norm_rope_cache(
        t["qkv"], t["q_weight"], t["k_weight"], t["cos"], t["sin"], t["positions"], kc, vc, t["slot_mapping"],
        k_scale=t["k_scale"] if fp8 else None, v_scale=t["v_scale"] if fp8 else None, **CONFIG)
    f64 = lambda x: x.detach().cpu().to(torch.float64).numpy()  # noqa: E731
    return dict(q=f64(out.q), k=f64(out.k), v=f64(out.v), key_cache=f64(kc), value_cache=f64(vc))


def run_jax(batch, device: str, cache_dtype: str):
    import jax
    import jax.numpy as jnp
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache

    dev = jax.devices("cpu")[0] if device == "cpu" else jax.devices("gpu")[int(device.partition(":")[2] or 0)]
    j = {k: jax.device_put(jnp.asarray(v), dev) for k, v in batch.items()}
    for k in ("qkv", "q_weight", "k_weight"):
        j[k] = j[k].astype(jnp.bfloat16)  # exact: the values are bf16 values
    shape = (NUM_BLOCKS, BLOCK_SIZE, CONFIG["num_kv_heads"], CONFIG["head_dim"])
    cdt = jnp.dtype(cache_dtype)
    kc = jax.device_put(jnp.full(shape, -3.0, cdt), dev)
    vc = jax.device_put(jnp.full(shape, -3.0, cdt), dev)
    fp8 = cache_dtype.startswith("float8")
    step = jax.jit(lambda j, kc, vc: fused_qkv_split_qk_norm_rope_cache(
        j["qkv"], j["q_weight"], j["k_weight"], j["cos"], j["sin"], j["positions"], kc, vc, j["slot_mapping"],
        k_scale=j["k_scale"] if fp8 else None, v_scale=j["v_scale"] if fp8 else None, **CONFIG),
        donate_argnums=(1, 2))
    with jax.default_device(dev):  # inside jit the op builds its kernel for this device's platform
        out = step(j, kc, vc)
    f64 = lambda x: np.asarray(x).astype(np.float64)  # noqa: E731
    return dict(q=f64(out.q), k=f64(out.k), v=f64(out.v), key_cache=f64(out.key_cache),
                value_cache=f64(out.value_cache))


def verify(batch, result, cache_dtype: str):
    """Rows (name, dtype, err score, ok) comparing one frontend's result with the oracle."""
    fp8 = cache_dtype.startswith("float8")
    ref = reference(batch["qkv"], batch["q_weight"], batch["k_weight"], batch["cos"], batch["sin"],
                    batch["positions"], batch["slot_mapping"], num_cache_slots=NUM_BLOCKS * BLOCK_SIZE,
                    key_cache_dtype=cache_dtype, value_cache_dtype=cache_dtype,
                    k_scale=batch["k_scale"] if fp8 else None, v_scale=batch["v_scale"] if fp8 else None, **CONFIG)
    rows = []
    for name in ("q", "k", "v"):
        score, _ = rounding_error(result[name], getattr(ref, name), "bfloat16")
        rows.append((name, "bfloat16", score, score <= 1.0))
    written = np.zeros(NUM_BLOCKS * BLOCK_SIZE, dtype=bool)
    written[ref.slots[ref.slots >= 0]] = True
    for name, exact in (("key_cache", ref.exact_key_cache), ("value_cache", ref.exact_value_cache)):
        flat = result[name].reshape(NUM_BLOCKS * BLOCK_SIZE, CONFIG["num_kv_heads"], CONFIG["head_dim"])
        score, _ = rounding_error(flat[ref.slots[ref.slots >= 0]], exact[ref.slots >= 0], cache_dtype)
        rows.append((f"{name} written", cache_dtype, score, score <= 1.0))
        untouched = bool(np.all(flat[~written] == -3.0))
        rows.append((f"{name} untouched", cache_dtype, float("nan"), untouched))
    return rows


def frontends():
    """(name, runner) for every frontend importable here."""
    found = []
    try:
        import torch  # noqa: F401

        found.append(("torch", run_torch))
    except ImportError:
        pass
    try:
        import jax  # noqa: F401

        found.append(("jax", run_jax))
    except ImportError:
        pass
    return found


def _cuda_device_count() -> int:
    """CUDA devices visible to the installed frontends (torch first, else JAX)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        import jax

        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU backend in this jaxlib
            return 0


def resolve_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as the device the demo runs on; ValueError with one line otherwise."""
    name = device.strip().lower()
    if name == "auto":
        return "cuda" if _cuda_device_count() else "cpu"
    if name == "cpu":
        return "cpu"
    index = 0
    if name.startswith("cuda:") and name[5:].isdigit():
        index = int(name[5:])
    elif name != "cuda":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    count = _cuda_device_count()
    if count == 0:
        raise ValueError(f"--device {device}: no CUDA device is visible here; use --device cpu (Triton's "
                         f"interpreter) or auto")
    if index >= count:
        raise ValueError(f"--device {device}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return name


def main(device: str = "auto") -> int:
    found = frontends()
    if not found:
        print("fused-qkv demo: no frontend available: install fused-qkv[torch] (or [jax])", file=sys.stderr)
        return 2
    try:
        device = resolve_device(device)
    except ValueError as exc:
        print(f"fused-qkv demo: {exc}", file=sys.stderr)
        return 2
    mode = "Triton interpreter" if device == "cpu" else "compiled Triton"
    print(f"fused-qkv demo: Qwen3-like batch (T={TOKENS}, QH=8, KVH=2, D=128, NeoX, plain gamma, NHD block "
          f"{BLOCK_SIZE}) on {device} ({mode}); err = worst error / allowed error (<= 1 passes)")
    batch = make_batch()
    header = f"{'frontend':<9} {'cache':<14} {'output':<22} {'dtype':<14} {'err':>6}  result"
    print(header)
    print("-" * len(header))
    all_ok = True
    for cache_dtype in ("bfloat16", "float8_e4m3fn"):
        for name, runner in found:
            try:
                result = runner(batch, device, cache_dtype)
            except ImportError as exc:  # e.g. jax_triton missing on a GPU machine
                print(f"{name:<9} {cache_dtype:<14} not run: {exc}")
                all_ok = False
                continue
            rows = verify(batch, result, cache_dtype)
            for out, dt, score, ok in rows:
                all_ok &= ok
                err = "-" if score != score else f"{score:.2f}"
                print(f"{name:<9} {cache_dtype:<14} {out:<22} {dt:<14} {err:>6}  {'PASS' if ok else 'FAIL'}")
    print("ALL PASS" if all_ok else "SOME CHECKS FAILED")
    return 0 if all_ok else 1
