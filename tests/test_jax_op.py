"""The JAX frontend: the oracle case list, bit-identical agreement with the torch frontend, jit/donation/scan/layer.

On CPU both frontends run the one kernel under Triton's interpreter; on a GPU machine
(``FUSED_QKV_TEST_DEVICE=cuda``) JAX runs it compiled through jax_triton and torch compiled through Triton's
launcher: the same compiled code, so the same bits are expected there too.
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import DEVICE
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jop
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache_fp8 as jop8
from helpers import Case, as_bytes, make_inputs, oracle_for, run_jax, run_torch, to_numpy
from test_torch_op import DEVICE_CASES

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
# int64 index arrays stay int64 only with x64 on (JAX truncates them to int32 otherwise: slot 2**40 would wrap);
# the int32 cases cover JAX's default mode.
jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("case", DEVICE_CASES, ids=lambda c: c.id())
def test_jax_matches_oracle_and_torch_bit_for_bit(case):
    """Same inputs through both frontends: each matches the oracle, and they match each other bit for bit."""
    jout, jkc, jvc, jscales = run_jax(case, with_scales=True)
    tout, tkc, tvc, tscales = run_torch(case, DEVICE, with_scales=True)
    for name in ("q", "gate", "k", "v", "q_scales"):
        a, b = getattr(jout, name), getattr(tout, name, None)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(as_bytes(a), as_bytes(b)), f"{name}: torch and JAX differ"
    assert torch.equal(as_bytes(jkc), as_bytes(tkc)), "key_cache: torch and JAX differ"
    assert torch.equal(as_bytes(jvc), as_bytes(tvc)), "value_cache: torch and JAX differ"
    assert set(jscales) == set(tscales)
    for name in jscales:
        assert torch.equal(as_bytes(jscales[name]), as_bytes(tscales[name])), f"{name}: torch and JAX differ"


@pytest.mark.parametrize("case", [Case(gate="interleaved", cache_dtype="float8_e4m3fn", scale="head"),
                                  Case(layers=3, layout="HND"), Case(slots="short", with_offsets=True),
                                  Case(mrope="interleaved", with_offsets=True, index_dtype="int32"),
                                  Case(mrope="contiguous", mrope_rows="view", gate="blocked"),
                                  Case(nope=True, k_eq_v=True, v_norm=True, cache_dtype="float8_e4m3fn", scale="head"),
                                  Case(q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv", layers=2,
                                       index_dtype="int32", zero_heads=True),
                                  Case(q_fp8="static", cache_dtype="float8_e4m3fn", scale_cache="v", gate="blocked")],
                         ids=lambda c: c.id())
def test_under_jit(case):
    run_jax(case, jit=True)


def _model_inputs(L=3, T=6, seed=0, **options):
    case = Case(T=T, layers=L, seed=seed, **options)
    args, kwargs = make_inputs(case, "cpu")
    rng = np.random.default_rng(seed)
    qkvs = np.stack([to_numpy(args["qkv"]) * np.float32(1 + 0.1 * i) for i in range(L)]).astype(
        to_numpy(args["qkv"]).dtype)
    static = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor) and k != "layer"}
    arr = {k: jnp.asarray(to_numpy(v)) for k, v in args.items() if v is not None}
    del rng
    return case, args, kwargs, jnp.asarray(qkvs), arr, static


@pytest.mark.parametrize("options", [{}, dict(mrope="interleaved"), dict(nope=True, k_eq_v=True, v_norm=True)],
                         ids=["rope", "mrope", "nope-k_eq_v-v_norm"])
def test_scan_over_layers_with_donated_stacked_cache(options):
    """lax.scan over layers, traced layer index, stacked caches donated: every layer's slots hold its K/V
    ([3, T] mRoPE positions and the Gemma 4 options inside the scan too)."""
    case, args, kwargs, qkvs, arr, static = _model_inputs(**options)
    L = qkvs.shape[0]

    def step(key_cache, value_cache, qkvs):
        def body(carry, xs):
            kc, vc = carry
            layer, qkv = xs
            out = jop(qkv, arr["q_weight"], arr["k_weight"], arr.get("cos"), arr.get("sin"), arr.get("positions"),
                      kc, vc, arr["slot_mapping"], layer=layer, **static)
            return (out.key_cache, out.value_cache), out.q
        (kc, vc), qs = jax.lax.scan(body, (key_cache, value_cache), (jnp.arange(L, dtype=jnp.int32), qkvs))
        return kc, vc, qs

    f = jax.jit(step, donate_argnames=("key_cache", "value_cache"))
    kc0, vc0 = np.asarray(arr["key_cache"]).copy(), np.asarray(arr["value_cache"]).copy()
    kc, vc, qs = f(arr["key_cache"], arr["value_cache"], qkvs)
    from helpers import assert_rounded, cache_entries, from_numpy

    kc_t, vc_t = from_numpy(kc), from_numpy(vc)
    written = np.zeros(kc0.shape, dtype=bool)
    for layer in range(L):
        args_l = dict(args, qkv=from_numpy(np.asarray(qkvs[layer])))
        ref = oracle_for(case, args_l, kwargs)
        assert_rounded(np.asarray(qs[layer], np.float64), ref.q, "bfloat16", f"q layer {layer}")
        for t, s in enumerate(ref.slots):
            if s < 0:
                continue
            c = dataclasses.replace(case, layers=layer + 1)  # cache_entries indexes layer c.layers - 1
            assert_rounded(cache_entries(kc_t, int(s), c).double().numpy(), ref.key_cache_values[t], "bfloat16",
                           f"key_cache layer {layer}")
            assert torch.equal(cache_entries(vc_t, int(s), c), from_numpy(np.asarray(ref.value_cache_values[t],
                               np.float32)).to(torch.bfloat16))
            written[layer, s // case.block_size, s % case.block_size] = True
    untouched = ~written
    assert np.array_equal(np.asarray(kc).view(np.int16)[untouched], kc0.view(np.int16)[untouched])
    assert np.array_equal(np.asarray(vc).view(np.int16)[untouched], vc0.view(np.int16)[untouched])


def test_fp8_scan_over_layers_with_donated_scale_caches():
    """The fp8 entry point inside lax.scan over layers: stacked fp8 caches and stacked per-token-head scale caches,
    donated, a traced layer index; every layer's q, q_scales, cache slots and scale slots match the oracle, and no
    other element of any of the four changes."""
    from helpers import assert_rounded, assert_scales, cache_entries, from_numpy, written_mask

    case, args, kwargs, qkvs, arr, static = _model_inputs(cache_dtype="float8_e4m3fn", scale_cache="kv",
                                                          q_fp8="dynamic", index_dtype="int32")
    L = qkvs.shape[0]
    static = dict(static, q_dtype=jnp.float8_e4m3fn)
    names = ("key_cache", "value_cache", "k_scale_cache", "v_scale_cache")
    before = {n: (args[n] if n in args else kwargs[n]).clone() for n in names}
    state = tuple(jnp.asarray(to_numpy(before[n])) for n in names)

    def step(state, qkvs):
        def body(carry, xs):
            layer, qkv = xs
            kc, vc, ksc, vsc = carry
            out = jop8(qkv, arr["q_weight"], arr["k_weight"], arr["cos"], arr["sin"], arr["positions"], kc, vc,
                       arr["slot_mapping"], k_scale_cache=ksc, v_scale_cache=vsc, layer=layer, **static)
            return (out.key_cache, out.value_cache, out.k_scale_cache, out.v_scale_cache), (out.q, out.q_scales)
        return jax.lax.scan(body, state, (jnp.arange(L, dtype=jnp.int32), qkvs))

    after, (qs, q_scales) = jax.jit(step, donate_argnums=(0,))(state, qkvs)
    after = dict(zip(names, (from_numpy(x) for x in after), strict=True))
    written = {n: torch.zeros(before[n].shape, dtype=torch.bool) for n in names}
    for layer in range(L):
        ref = oracle_for(case, dict(args, qkv=from_numpy(np.asarray(qkvs[layer]))), kwargs)
        assert_rounded(np.asarray(qs[layer].astype(jnp.float32), np.float64), ref.exact_q, "float8_e4m3fn",
                       f"q layer {layer}")
        assert_scales(np.asarray(q_scales[layer], np.float64), ref.q_scales, f"q_scales layer {layer}")
        c = dataclasses.replace(case, layers=layer + 1)  # cache_entries indexes layer c.layers - 1
        idx = [t for t in range(case.T) if ref.slots[t] >= 0]
        for n, exact in (("key_cache", ref.exact_key_cache), ("value_cache", ref.exact_value_cache)):
            got = np.stack([cache_entries(after[n], int(ref.slots[t]), c).double().numpy() for t in idx])
            assert_rounded(got, exact[idx], "float8_e4m3fn", f"{n} layer {layer}")
        for n, exact in (("k_scale_cache", ref.key_scales), ("v_scale_cache", ref.value_scales)):
            got = np.stack([cache_entries(after[n], int(ref.slots[t]), c).double().numpy() for t in idx])
            assert_scales(got, exact[idx], f"{n} layer {layer}")
        for n in names:
            written[n] |= written_mask(before[n], ref.slots, c)
    for n in names:
        assert torch.equal(as_bytes(before[n])[~written[n]], as_bytes(after[n])[~written[n]]), n


def test_no_retrace_for_same_shapes():
    case, args, kwargs, qkvs, arr, static = _model_inputs(L=2)
    traces = []

    def step(qkv, kc, vc, layer):
        traces.append(1)
        return jop(qkv, arr["q_weight"], arr["k_weight"], arr["cos"], arr["sin"], arr["positions"], kc, vc,
                   arr["slot_mapping"], layer=layer, **static)

    f = jax.jit(step, donate_argnames=("kc", "vc"))
    kc, vc = arr["key_cache"], arr["value_cache"]
    for i in range(3):
        out = f(qkvs[i % 2], kc, vc, jnp.int32(i % 2))
        kc, vc = out.key_cache, out.value_cache
    assert len(traces) == 1


def test_layer_validation():
    case, args, kwargs, qkvs, arr, static = _model_inputs(L=2)
    call = lambda **kw: jop(qkvs[0], arr["q_weight"], arr["k_weight"], arr["cos"], arr["sin"],  # noqa: E731
                            arr["positions"], arr["key_cache"], arr["value_cache"], arr["slot_mapping"],
                            **dict(static, **kw))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\), got 5"):
        call(layer=5)
    with pytest.raises(ValueError, match="layer must be given"):
        call()
    with pytest.raises(TypeError, match="layer must be an integer scalar"):
        call(layer=jnp.zeros((2,), jnp.int32))
    with pytest.raises(TypeError, match="layer must be None, an int"):
        call(layer=1.5)


def test_jax_validation_names_the_argument():
    args, kwargs = make_inputs(Case(), "cpu")
    jargs = {k: None if v is None else jnp.asarray(to_numpy(v)) for k, v in args.items()}
    static = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="qkv must have width"):
        jop(**dict(jargs, qkv=jargs["qkv"][:, :-64]), **static)
    with pytest.raises(TypeError, match="slot_mapping must have dtype"):
        jop(**dict(jargs, slot_mapping=jargs["slot_mapping"].astype(jnp.float32)), **static)
    with pytest.raises(TypeError, match="cos must be a jax.Array"):
        jop(**dict(jargs, cos=[1.0]), **static)
    with pytest.raises(ValueError, match="kv_cache_layout must be one of"):
        jop(**jargs, **dict(static, kv_cache_layout="XYZ"))
