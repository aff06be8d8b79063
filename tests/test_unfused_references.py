"""The unfused baselines the benchmark times (torch_api.unfused, jax_api.unfused) compute the same op:
checked against the oracle with a tolerance for their input-dtype arithmetic (several roundings, not one)."""

import numpy as np
import pytest
from fused_qkv.core import format_quantum
from helpers import Case, make_inputs, np64, oracle_for, to_numpy

BENCH_LIKE = [
    Case(T=9, QH=8, KVH=2, D=128, block_size=16, num_blocks=4),  # S1-like
    Case(T=9, QH=4, KVH=1, D=256, gate="interleaved", offset=1.0, rotary_dim=64, block_size=16, num_blocks=4),
    Case(T=9, QH=8, KVH=2, D=128, cache_dtype="float8_e4m3fn", scale="tensor", block_size=16, num_blocks=4),
    Case(T=5, is_neox=False, gate="blocked", scale="head", dtype="float16"),
]


def _close(got, exact, dtype, ulps, what):
    """Norm-wise: every error within ``ulps`` ulps of the tensor's largest value (RoPE's cancellation makes
    per-element bounds meaningless for a chain that rounds after every op)."""
    scale = np.abs(exact).max()
    tol = ulps * format_quantum(scale, dtype)
    assert np.abs(got - exact).max() <= tol, f"{what}: worst {np.abs(got - exact).max():.3g} > {tol:.3g}"


def _cfg(kwargs):
    return {k: kwargs[k] for k in ("num_q_heads", "num_kv_heads", "head_dim", "eps", "norm_weight_offset",
                                   "is_neox", "rotary_dim", "attn_output_gate", "gated_qkv_layout")}


@pytest.mark.parametrize("case", BENCH_LIKE, ids=lambda c: c.id())
def test_torch_unfused_matches_oracle(case):
    from fused_qkv.torch_api.unfused import unfused

    args, kwargs = make_inputs(case, "cpu")
    q, gate, k, v = unfused(**args, k_scale=kwargs["k_scale"], v_scale=kwargs["v_scale"], **_cfg(kwargs))
    ref = oracle_for(case, args, kwargs)
    _close(np64(q), ref.q, case.dtype, 4, "q")
    _close(np64(k), ref.k, case.dtype, 4, "k")
    assert np.array_equal(np64(v), ref.v)
    kc = args["key_cache"].view(-1, case.KVH, case.D)
    cdt = str(kc.dtype).removeprefix("torch.")
    _close(np64(kc[args["slot_mapping"]]), ref.exact_key_cache, cdt, 4, "key_cache")


@pytest.mark.parametrize("case", BENCH_LIKE, ids=lambda c: c.id())
def test_jax_unfused_matches_oracle(case):
    import jax.numpy as jnp
    from fused_qkv.jax_api.unfused import unfused

    args, kwargs = make_inputs(case, "cpu")
    j = {k: None if v is None else jnp.asarray(to_numpy(v)) for k, v in args.items()}
    js = {k: None if kwargs[k] is None else jnp.asarray(to_numpy(kwargs[k])) for k in ("k_scale", "v_scale")}
    q, gate, k, v, kc, vc = unfused(**j, **js, **_cfg(kwargs))
    ref = oracle_for(case, args, kwargs)
    f64 = lambda x: np.asarray(x).astype(np.float64)  # noqa: E731
    _close(f64(q), ref.q, case.dtype, 4, "q")
    _close(f64(k), ref.k, case.dtype, 4, "k")
    cdt = np.dtype(kc.dtype).name
    got = f64(kc).reshape(-1, case.KVH, case.D)[np.asarray(args["slot_mapping"])]
    _close(got, ref.exact_key_cache, cdt, 4, "key_cache")
