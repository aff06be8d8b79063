"""GPU-only JAX checks: donated caches are updated in place, and a donated scan over layers never copies the
stacked cache (the layer slice is selected inside the kernel)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jop
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache_fp8 as jop8
from helpers import Case, make_inputs, to_numpy

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


def _setup(case):
    args, kwargs = make_inputs(case, "cpu")
    arr = {k: jnp.asarray(to_numpy(v)) for k, v in args.items() if v is not None}
    static = {k: v for k, v in kwargs.items() if k not in ("layer", "offsets", "k_scale", "v_scale", "q_scale",
                                                           "k_scale_cache", "v_scale_cache")}
    if "q_dtype" in static:
        static["q_dtype"] = jnp.dtype(case.q_dtype)
    for name in ("k_scale_cache", "v_scale_cache"):
        if kwargs.get(name) is not None:
            arr[name] = jnp.asarray(kwargs[name].numpy())
    return arr, static


def test_donated_update_is_in_place():
    case = Case(T=8, num_blocks=64, block_size=16)
    arr, static = _setup(case)
    step = jax.jit(lambda a, kc, vc: jop(a["qkv"], a["q_weight"], a["k_weight"], a["cos"], a["sin"], a["positions"],
                                         kc, vc, a["slot_mapping"], **static), donate_argnums=(1, 2))
    kc, vc = arr.pop("key_cache"), arr.pop("value_cache")
    assert kc.devices().pop().platform == "gpu"
    pk, pv = kc.unsafe_buffer_pointer(), vc.unsafe_buffer_pointer()
    for _ in range(3):
        out = step(arr, kc, vc)
        kc, vc = out.key_cache, out.value_cache
        assert kc.unsafe_buffer_pointer() == pk and vc.unsafe_buffer_pointer() == pv


def test_donated_fp8_scale_caches_are_updated_in_place():
    """The fp8 entry point: caches and per-token-head scale caches, donated, keep their buffers over a donated scan
    of three calls (dynamic fp8 q)."""
    case = Case(T=8, num_blocks=64, block_size=16, cache_dtype="float8_e4m3fn", scale_cache="kv", q_fp8="dynamic")
    arr, static = _setup(case)
    names = ("key_cache", "value_cache", "k_scale_cache", "v_scale_cache")
    state = [arr.pop(n) for n in names]

    def call(a, kc, vc, ksc, vsc):
        return jop8(a["qkv"], a["q_weight"], a["k_weight"], a["cos"], a["sin"], a["positions"], kc, vc,
                    a["slot_mapping"], k_scale_cache=ksc, v_scale_cache=vsc, **static)

    step = jax.jit(call, donate_argnums=(1, 2, 3, 4))
    pointers = [x.unsafe_buffer_pointer() for x in state]
    for _ in range(3):
        out = step(arr, *state)
        state = [getattr(out, n) for n in names]
        assert [x.unsafe_buffer_pointer() for x in state] == pointers
        assert out.q.dtype == jnp.float8_e4m3fn and out.q_scales.shape == (case.T, case.QH)


def _cache_copies(hlo: str, shape: str):
    return [line for line in hlo.splitlines() if shape in line.split("=")[-1].split("(")[0]
            and (" copy(" in line or " copy-start(" in line)]


def test_donated_scan_over_layers_has_no_cache_copy():
    L, case = 4, Case(T=8, layers=4, num_blocks=32, block_size=16)
    arr, static = _setup(case)
    kc, vc = arr.pop("key_cache"), arr.pop("value_cache")
    qkvs = jnp.stack([arr["qkv"]] * L)

    def step(key_cache, value_cache, qkvs):
        def body(carry, xs):
            layer, qkv = xs
            out = jop(qkv, arr["q_weight"], arr["k_weight"], arr["cos"], arr["sin"], arr["positions"], *carry,
                      arr["slot_mapping"], layer=layer, **static)
            return (out.key_cache, out.value_cache), out.q
        (k2, v2), qs = jax.lax.scan(body, (key_cache, value_cache), (jnp.arange(L, dtype=jnp.int32), qkvs))
        return k2, v2, qs

    f = jax.jit(step, donate_argnames=("key_cache", "value_cache"))
    hlo = f.lower(kc, vc, qkvs).compile().as_text()
    shape = "bf16[" + ",".join(str(n) for n in kc.shape) + "]"
    assert shape in hlo
    assert not _cache_copies(hlo, shape), _cache_copies(hlo, shape)
    pk = kc.unsafe_buffer_pointer()
    k2, v2, qs = f(kc, vc, qkvs)
    assert k2.unsafe_buffer_pointer() == pk
    assert np.isfinite(np.asarray(qs, np.float32)).all()


def test_without_donation_the_input_cache_is_unchanged():
    case = Case(T=8)
    arr, static = _setup(case)
    kc, vc = arr.pop("key_cache"), arr.pop("value_cache")
    before = np.asarray(kc).copy()
    out = jax.jit(lambda a, kc, vc: jop(a["qkv"], a["q_weight"], a["k_weight"], a["cos"], a["sin"],
                                        a["positions"], kc, vc, a["slot_mapping"], **static))(arr, kc, vc)
    assert np.array_equal(np.asarray(kc).view(np.int16), before.view(np.int16))
    assert not np.array_equal(np.asarray(out.key_cache).view(np.int16), before.view(np.int16))


def test_jax_triton_import_keeps_triton_cache_dir():
    import os

    from fused_qkv.jax_api.op import _import_jax_triton

    before = os.environ.get("TRITON_CACHE_DIR")
    _import_jax_triton()
    assert os.environ.get("TRITON_CACHE_DIR") == before
