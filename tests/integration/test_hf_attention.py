"""fused-qkv against the attention code of real model families in Hugging Face transformers.

For Qwen3 (plain gamma, NeoX, full rotary), Qwen3-Next (gated queries interleaved per head, zero-centred gamma,
rotary on a quarter of each head) and Gemma3 (zero-centred gamma, head_dim 256; a sliding and a global layer, each
with its own rotary base), a small randomly initialised model runs its own forward pass. Our op then gets the
attention block's input multiplied by the model's q/k/v weights packed into one QKV projection, the model's norm
weights and eps, and the cos/sin table of the model's rotary module, and writes K/V into a poisoned paged cache
through a scattered ``slot_mapping``. Checked:

- q, k, v (and the gate) against what the model hands its attention kernel, and the cache slots against the
  model's k/v; every other cache slot bit-identical to the poison;
- the same outputs against the float64 oracle (correctly rounded);
- a whole attention layer: our q and the K/V read back from the paged cache through a small float64 attention,
  the model's mask, gate and o_proj, against the model's attention block output;
- the JAX frontend on the same inputs: bit-identical to the torch frontend.

Tolerances against the model: in float32 both sides compute in fp32 and differ by fp32 rounding (and by the
matmul's summation order, since the model runs three projections and we run one packed one). In bfloat16 the model
rounds to bf16 after the projection, after the norm and after each RoPE product and sum, we round once, so the two
differ by a few bf16 ulps; the float64 oracle check is the exact one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import DEVICE
from fused_qkv.core import reference
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jax_op
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as torch_op
from helpers import as_bytes, assert_rounded, from_numpy, np64, poison, to_numpy
from hf_models import MODELS, attention_module, build_model, pack_qkv, reference_attention, rope_table, run_model

S, START, NUM_POSITIONS = 7, 5, 64  # tokens at positions 5..11 of a 64-row rotary table
NUM_BLOCKS, BLOCK_SIZE = 6, 4  # 24 cache slots, 7 of them written

# allowed |ours - model| as a fraction of max |model| per tensor (module doc); layer output looser: it goes
# through softmax, a second matmul and o_proj, in the model's dtype
TOL = {torch.float32: (2e-6, 1e-5), torch.bfloat16: (2.0**-6, 2.0**-6)}


def _close(ours, model, frac, what):
    ours, model = ours.detach().double().cpu(), model.detach().double().cpu()
    assert ours.shape == model.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(model.shape)}"
    err = (ours - model).abs().max().item()
    bound = frac * model.abs().max().item()
    assert err <= bound, f"{what}: max |ours - model| = {err:.3g} > {bound:.3g}"


def _eps(norm):
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", None)))


def _slot_entry(cache, slot, layout):
    b, o = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    return cache[b, o] if layout == "NHD" else cache[b, :, o]


def _prepare(name, dtype):
    spec = MODELS[name]
    model = build_model(spec, dtype).to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, model.config.vocab_size, (1, S), generator=gen).to(DEVICE)
    position_ids = torch.arange(START, START + S, device=DEVICE)[None]
    seen = run_model(model, spec, input_ids, position_ids)
    attn = attention_module(model, spec)
    h = seen["hidden_states"][0]  # [S, hidden], the attention block's input
    with torch.no_grad():
        qkv = torch.nn.functional.linear(h, pack_qkv(attn))
    cos, sin = rope_table(model, spec, NUM_POSITIONS, h)
    QH, KVH, D = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    layout = "HND" if spec.module == "gemma3" else "NHD"
    page = (NUM_BLOCKS, BLOCK_SIZE, KVH, D) if layout == "NHD" else (NUM_BLOCKS, KVH, BLOCK_SIZE, D)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, generator=gen)[:S].to(torch.int32)
    args = dict(qkv=qkv, q_weight=attn.q_norm.weight.detach(), k_weight=attn.k_norm.weight.detach(), cos=cos,
                sin=sin, positions=position_ids[0].to(torch.int32), key_cache=poison(page, dtype, gen).to(DEVICE),
                value_cache=poison(page, dtype, gen).to(DEVICE), slot_mapping=slots.to(DEVICE))
    kwargs = dict(num_q_heads=QH, num_kv_heads=KVH, head_dim=D, eps=_eps(attn.q_norm),
                  norm_weight_offset=spec.norm_weight_offset, is_neox=True, rotary_dim=cos.shape[-1],
                  attn_output_gate=spec.gate, gated_qkv_layout="interleaved", kv_cache_layout=layout)
    assert _eps(attn.k_norm) == kwargs["eps"]
    return spec, model, attn, seen, args, kwargs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_prologue_and_layer_match_the_model(name, dtype):
    spec, model, attn, seen, args, kwargs = _prepare(name, dtype)
    QH, KVH, D, layout = kwargs["num_q_heads"], kwargs["num_kv_heads"], kwargs["head_dim"], kwargs["kv_cache_layout"]
    kc_before, vc_before = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
    out = torch_op(**args, **kwargs)
    kc, vc = args["key_cache"].cpu(), args["value_cache"].cpu()
    slots = args["slot_mapping"].cpu().tolist()
    frac, layer_frac = TOL[dtype]

    # 1. against the model's own q, k, v (and gate)
    _close(out.q, seen["q"][0].transpose(0, 1), frac, "q vs model")
    _close(out.k, seen["k"][0].transpose(0, 1), frac, "k vs model")
    _close(out.v, seen["v"][0].transpose(0, 1), frac, "v vs model")
    if spec.gate:
        _close(out.gate, seen["gate"][0], frac, "gate vs model")
    else:
        assert out.gate is None
    k_cached = torch.stack([_slot_entry(kc, s, layout) for s in slots])
    v_cached = torch.stack([_slot_entry(vc, s, layout) for s in slots])
    _close(k_cached, seen["k"][0].transpose(0, 1), frac, "key_cache vs model k")
    _close(v_cached, seen["v"][0].transpose(0, 1), frac, "value_cache vs model v")
    assert torch.equal(as_bytes(k_cached), as_bytes(out.k)) and torch.equal(as_bytes(v_cached), as_bytes(out.v))
    written = torch.zeros(kc.shape, dtype=torch.bool)
    for s in slots:
        _slot_entry(written, s, layout).fill_(True)
    for cache, before, what in ((kc, kc_before, "key_cache"), (vc, vc_before, "value_cache")):
        assert torch.equal(as_bytes(cache)[~written], as_bytes(before)[~written]), f"{what}: unaddressed slot changed"

    # 2. against the float64 oracle on the same inputs
    dname = str(dtype).removeprefix("torch.")
    ref = reference(np64(args["qkv"]), np64(args["q_weight"]), np64(args["k_weight"]), np64(args["cos"]),
                    np64(args["sin"]), args["positions"].cpu().numpy(), np.asarray(slots),
                    num_q_heads=QH, num_kv_heads=KVH, head_dim=D, num_cache_slots=NUM_BLOCKS * BLOCK_SIZE,
                    key_cache_dtype=dname, value_cache_dtype=dname, eps=kwargs["eps"],
                    norm_weight_offset=spec.norm_weight_offset, rotary_dim=kwargs["rotary_dim"],
                    attn_output_gate=spec.gate)
    assert_rounded(np64(out.q), ref.q, dname, "q vs oracle")
    assert_rounded(np64(out.k), ref.k, dname, "k vs oracle")
    assert_rounded(np64(k_cached), ref.exact_key_cache, dname, "key_cache vs oracle")
    assert np.array_equal(np64(out.v), ref.v) and np.array_equal(np64(v_cached), ref.exact_value_cache)

    # 3. a whole attention layer: our q, K/V read back from the paged cache, the model's mask, gate and o_proj
    ctx = reference_attention(out.q.cpu(), k_cached, v_cached, seen["attention_mask"], seen["scaling"])
    ctx = ctx.reshape(S, QH * D)
    if spec.gate:
        ctx = ctx * torch.sigmoid(out.gate.cpu().double().reshape(S, QH * D))
    layer_out = ctx @ attn.o_proj.weight.detach().cpu().double().T
    _close(layer_out, seen["output"][0], layer_frac, "attention layer output vs model")

    # 4. the JAX frontend on the same inputs (caches as they were before): bit-identical to torch
    jargs = {k: jnp.asarray(to_numpy(v)) for k, v in args.items()}
    jargs["key_cache"], jargs["value_cache"] = jnp.asarray(to_numpy(kc_before)), jnp.asarray(to_numpy(vc_before))
    jout = jax_op(**jargs, **kwargs)
    for field in ("q", "gate", "k", "v"):
        t, j = getattr(out, field), getattr(jout, field)
        assert (t is None) == (j is None), field
        if t is not None:
            assert torch.equal(as_bytes(from_numpy(j)), as_bytes(t)), f"JAX {field} differs from torch"
    assert torch.equal(as_bytes(from_numpy(jout.key_cache)), as_bytes(kc)), "JAX key_cache differs from torch"
    assert torch.equal(as_bytes(from_numpy(jout.value_cache)), as_bytes(vc)), "JAX value_cache differs from torch"


def test_jax_inside_jit_matches_the_model():
    """Qwen3-Next through a jitted JAX function with donated caches, against the model's q and k."""
    spec, model, attn, seen, args, kwargs = _prepare("qwen3_next", torch.float32)
    jargs = {k: jnp.asarray(to_numpy(v)) for k, v in args.items()}
    kc, vc = jargs.pop("key_cache"), jargs.pop("value_cache")
    step = jax.jit(lambda a, kc, vc: jax_op(**a, key_cache=kc, value_cache=vc, **kwargs), donate_argnums=(1, 2))
    jout = step(jargs, kc, vc)
    _close(from_numpy(jout.q), seen["q"][0].transpose(0, 1), TOL[torch.float32][0], "jit q vs model")
    _close(from_numpy(jout.k), seen["k"][0].transpose(0, 1), TOL[torch.float32][0], "jit k vs model")
    _close(from_numpy(jout.gate), seen["gate"][0], TOL[torch.float32][0], "jit gate vs model")
