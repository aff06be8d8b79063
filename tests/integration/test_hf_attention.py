"""fused-qkv against the attention code of real model families in Hugging Face transformers.

Families (details of each in ``hf_models``):

- Qwen3 (plain gamma, NeoX, full rotary), Qwen3-Next (gated queries interleaved per head, zero-centred gamma, rotary
  on a quarter of each head), Gemma3 (zero-centred gamma, head_dim 256; a sliding and a global layer, each with its
  own rotary base);
- mRoPE: Qwen2.5-VL (contiguous sections, no q/k norm, q/k/v biases) and Qwen3-VL (interleaved sections) on a prompt
  with an image, with the ``[3, T]`` positions the VL model computes itself (its ``get_rope_index`` on the image
  grid); Qwen3-VL also on a text-only prompt (three equal rows);
- Gemma 4 (plain gamma, ``scaling = 1``, V-norm): a sliding layer (head_dim 256) and a global K=V layer (head_dim
  512, one KV head, no v_proj, proportional RoPE: a full-width table whose last frequencies are zero);
- SmolLM3: a RoPE layer and a NoPE layer (``cos = sin = positions = None``) of one model.

A small randomly initialised model runs its own forward pass. Our op then gets the attention block's input multiplied
by the model's q/k/v weights (and biases) packed into one QKV projection (q/k only for K=V), the model's norm weights
and eps, the cos/sin table of the model's rotary module and the model's positions, and writes K/V into a poisoned
paged cache through a scattered ``slot_mapping``. Checked:

- q, k, v (and the gate) against what the model hands its attention kernel, and the cache slots against the
  model's k/v; every other cache slot bit-identical to the poison;
- the float64 oracle on the same inputs against the model (so the oracle's reading of each option is the model's),
  and our outputs against the oracle (correctly rounded);
- a whole attention layer: our q and the K/V read back from the paged cache through a small float64 attention,
  the model's mask (sliding windows included), scaling, gate and o_proj, against the model's attention block output;
- the JAX frontend on the same inputs: bit-identical to the torch frontend; and, jitted with donated caches, against
  the model (gated, mRoPE and K=V layers).

Sizes: few heads and 7 tokens (10 for the image prompt), but each family's head_dim (Gemma 4's 512 included) and
rotary configuration.

``test_mrope_tables_match_the_model`` checks the VL tables themselves: the rotary module at three equal rows is the
plain table ``cos(p * inv_freq) * attention_scaling`` (NeoX halves), and the cos/sin rows the model builds for the
``[3, T]`` positions are the entries the oracle's per-frequency row selection reads from that table.
``test_gemma4_global_table_is_proportional`` checks the zero tail of Gemma 4's proportional table.

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
from fused_qkv.core.oracle import table_rows
from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jax_op
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as torch_op
from helpers import as_bytes, assert_rounded, from_numpy, np64, poison, to_numpy
from hf_models import (
    MODELS,
    attention_module,
    build_model,
    check_spec,
    mrope_section,
    pack_qkv,
    plain_rope_table,
    reference_attention,
    rope_table,
    run_model,
    text_model,
    vl_prompt,
)

S, START, NUM_POSITIONS = 7, 5, 64  # tokens at positions 5..11 of a 64-row rotary table
S_IMAGE = 10  # VL prompt: a text token, <vision_start>, 6 image tokens (a 2 x 3 grid), <vision_end>, a text token
NUM_BLOCKS, BLOCK_SIZE = 6, 4  # 24 cache slots, S of them written

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


def _model_positions(spec, model, gen, device=DEVICE):
    """input_ids ``[1, S]``, the model's forward pass and the positions the op gets (``[S]``, or ``[3, S]`` for
    mRoPE; None for a NoPE layer)."""
    if spec.prompt == "image":
        input_ids, grid, mm_types = (t.to(device) for t in vl_prompt(model, S_IMAGE, gen))
        seen = run_model(model, spec, input_ids, None, image_grid_thw=grid, mm_token_type_ids=mm_types)
        # the model computed its [3, B, S] positions itself; they are those of its get_rope_index
        position_ids, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=mm_types, image_grid_thw=grid)
        assert torch.equal(seen["position_ids"], position_ids), "the text model ran with other positions"
        positions = position_ids[:, 0]  # [3, S] int64, as the model has them
        assert not torch.equal(positions[1], positions[2]) and not torch.equal(positions[0], positions[1])
        return input_ids, seen, positions
    input_ids = torch.randint(0, 80, (1, S), generator=gen).to(device)
    position_ids = torch.arange(START, START + S, device=device)[None]
    seen = run_model(model, spec, input_ids, position_ids)  # VL text-only: the model broadcasts them to 3 rows
    positions = position_ids[0].to(torch.int32)
    if spec.mrope is not None:
        positions = positions.expand(3, -1)  # a strided [3, S] view: three equal rows
    return input_ids, seen, positions if spec.rope else None


def _prepare(name, dtype):
    spec = MODELS[name]
    model = build_model(spec, dtype).to(DEVICE)
    check_spec(model, spec)
    gen = torch.Generator().manual_seed(1)
    input_ids, seen, positions = _model_positions(spec, model, gen)
    attn = attention_module(model, spec)
    h = seen["hidden_states"][0]  # [S, hidden], the attention block's input
    weight, bias = pack_qkv(attn)
    with torch.no_grad():
        qkv = torch.nn.functional.linear(h, weight, bias)
    cos, sin = rope_table(model, spec, NUM_POSITIONS, h) if spec.rope else (None, None)
    D = attn.head_dim
    QH = attn.q_proj.out_features // (D * (2 if spec.gate else 1))
    KVH = attn.k_proj.out_features // D
    layout = spec.kv_cache_layout
    page = (NUM_BLOCKS, BLOCK_SIZE, KVH, D) if layout == "NHD" else (NUM_BLOCKS, KVH, BLOCK_SIZE, D)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, generator=gen)[:input_ids.shape[1]].to(torch.int32)
    norms = [n for n in (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None), getattr(attn, "v_norm", None))
             if n is not None]
    eps = _eps(norms[0]) if norms else float(text_model(model).config.rms_norm_eps)
    assert all(_eps(n) == eps for n in norms), "q/k/v norms with different eps"
    args = dict(qkv=qkv, q_weight=attn.q_norm.weight.detach() if spec.qk_norm else None,
                k_weight=attn.k_norm.weight.detach() if spec.qk_norm else None, cos=cos, sin=sin,
                positions=positions, key_cache=poison(page, dtype, gen).to(DEVICE),
                value_cache=poison(page, dtype, gen).to(DEVICE), slot_mapping=slots.to(DEVICE))
    kwargs = dict(num_q_heads=QH, num_kv_heads=KVH, head_dim=D, eps=eps, norm_weight_offset=spec.norm_weight_offset,
                  is_neox=True, rotary_dim=cos.shape[-1] if spec.rope else None, attn_output_gate=spec.gate,
                  gated_qkv_layout="interleaved", kv_cache_layout=layout)
    # the new options only where a model uses them: the other models keep the defaults under test
    if spec.mrope is not None:
        kwargs.update(mrope_section=text_model(model).config.rope_parameters["mrope_section"],  # the config's list
                      mrope_interleaved=spec.mrope == "interleaved")
        assert tuple(kwargs["mrope_section"]) == mrope_section(model)
    if spec.v_norm:
        kwargs["v_norm"] = True
    if spec.k_eq_v:
        kwargs["k_eq_v"] = True
    return spec, model, attn, seen, args, kwargs


def _oracle(args, kwargs, dname):
    pos = args["positions"]
    return reference(np64(args["qkv"]), np64(args["q_weight"]), np64(args["k_weight"]), np64(args["cos"]),
                     np64(args["sin"]), None if pos is None else pos.cpu().numpy(),
                     args["slot_mapping"].cpu().numpy(), num_cache_slots=NUM_BLOCKS * BLOCK_SIZE,
                     key_cache_dtype=dname, value_cache_dtype=dname,
                     **{k: v for k, v in kwargs.items() if k != "kv_cache_layout"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_prologue_and_layer_match_the_model(name, dtype):
    spec, model, attn, seen, args, kwargs = _prepare(name, dtype)
    QH, D, layout = kwargs["num_q_heads"], kwargs["head_dim"], kwargs["kv_cache_layout"]
    T = args["qkv"].shape[0]
    frac, layer_frac = TOL[dtype]
    model_q, model_k, model_v = (seen[x][0].transpose(0, 1) for x in "qkv")  # [S, H, D]

    # 1. the float64 oracle with the model's options against the model itself
    dname = str(dtype).removeprefix("torch.")
    ref = _oracle(args, kwargs, dname)
    for field, model_t in (("q", model_q), ("k", model_k), ("v", model_v)):
        _close(torch.from_numpy(getattr(ref, field)), model_t, frac, f"oracle {field} vs model")

    # 2. our op against the model's own q, k, v (and gate)
    kc_before, vc_before = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
    out = torch_op(**args, **kwargs)
    kc, vc = args["key_cache"].cpu(), args["value_cache"].cpu()
    slots = args["slot_mapping"].cpu().tolist()
    _close(out.q, model_q, frac, "q vs model")
    _close(out.k, model_k, frac, "k vs model")
    _close(out.v, model_v, frac, "v vs model")
    if spec.gate:
        _close(out.gate, seen["gate"][0], frac, "gate vs model")
    else:
        assert out.gate is None
    k_cached = torch.stack([_slot_entry(kc, s, layout) for s in slots])
    v_cached = torch.stack([_slot_entry(vc, s, layout) for s in slots])
    _close(k_cached, model_k, frac, "key_cache vs model k")
    _close(v_cached, model_v, frac, "value_cache vs model v")
    assert torch.equal(as_bytes(k_cached), as_bytes(out.k)) and torch.equal(as_bytes(v_cached), as_bytes(out.v))
    written = torch.zeros(kc.shape, dtype=torch.bool)
    for s in slots:
        _slot_entry(written, s, layout).fill_(True)
    for cache, before, what in ((kc, kc_before, "key_cache"), (vc, vc_before, "value_cache")):
        assert torch.equal(as_bytes(cache)[~written], as_bytes(before)[~written]), f"{what}: unaddressed slot changed"

    # 3. our op against the float64 oracle on the same inputs
    assert_rounded(np64(out.q), ref.q, dname, "q vs oracle")
    assert_rounded(np64(out.k), ref.k, dname, "k vs oracle")
    assert_rounded(np64(k_cached), ref.exact_key_cache, dname, "key_cache vs oracle")
    if spec.v_norm:
        assert_rounded(np64(out.v), ref.v, dname, "v vs oracle")
        assert_rounded(np64(v_cached), ref.exact_value_cache, dname, "value_cache vs oracle")
    else:
        assert np.array_equal(np64(out.v), ref.v) and np.array_equal(np64(v_cached), ref.exact_value_cache)

    # 4. a whole attention layer: our q, K/V read back from the paged cache, the model's mask, gate and o_proj
    ctx = reference_attention(out.q.cpu(), k_cached, v_cached, seen["attention_mask"], seen["scaling"])
    ctx = ctx.reshape(T, QH * D)
    if spec.gate:
        ctx = ctx * torch.sigmoid(out.gate.cpu().double().reshape(T, QH * D))
    layer_out = ctx @ attn.o_proj.weight.detach().cpu().double().T
    if attn.o_proj.bias is not None:
        layer_out = layer_out + attn.o_proj.bias.detach().cpu().double()
    _close(layer_out, seen["output"][0], layer_frac, "attention layer output vs model")

    # 5. the JAX frontend on the same inputs (caches as they were before): bit-identical to torch
    jargs = {k: None if v is None else jnp.asarray(to_numpy(v)) for k, v in args.items()}
    jargs["key_cache"], jargs["value_cache"] = jnp.asarray(to_numpy(kc_before)), jnp.asarray(to_numpy(vc_before))
    jout = jax_op(**jargs, **kwargs)
    for field in ("q", "gate", "k", "v"):
        t, j = getattr(out, field), getattr(jout, field)
        assert (t is None) == (j is None), field
        if t is not None:
            assert torch.equal(as_bytes(from_numpy(j)), as_bytes(t)), f"JAX {field} differs from torch"
    assert torch.equal(as_bytes(from_numpy(jout.key_cache)), as_bytes(kc)), "JAX key_cache differs from torch"
    assert torch.equal(as_bytes(from_numpy(jout.value_cache)), as_bytes(vc)), "JAX value_cache differs from torch"


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.mrope is not None])
def test_mrope_tables_match_the_model(name):
    """The VL rotary module at three equal rows is the plain table (built by hand from ``inv_freq`` and
    ``attention_scaling``), and at the model's ``[3, T]`` positions it gives, per column, the table entry at the
    position row that the oracle assigns to that column's frequency (contiguous or interleaved sections)."""
    spec = MODELS[name]
    model = build_model(spec, torch.float32)
    like = torch.zeros(1, dtype=torch.float32)
    cos, sin = rope_table(model, spec, NUM_POSITIONS, like)
    plain_cos, plain_sin = plain_rope_table(model, NUM_POSITIONS, torch.float32)
    assert torch.equal(cos, plain_cos) and torch.equal(sin, plain_sin), "rotary module != plain table"

    _, _, positions = _model_positions(spec, model, torch.Generator().manual_seed(1), device="cpu")  # host tables
    with torch.no_grad():
        model_cos, model_sin = text_model(model).rotary_emb(like, positions[:, None].to(torch.int64))
    R = cos.shape[-1]
    for table, model_rows, what in ((cos, model_cos, "cos"), (sin, model_sin, "sin")):
        rows = table_rows(table.numpy(), positions.numpy(), R, True, mrope_section(model),
                          spec.mrope == "interleaved")
        assert np.array_equal(rows, model_rows[0].numpy()), f"{what}: the model reads other rows per frequency"


def test_gemma4_global_table_is_proportional():
    """Gemma 4's global layer: the rotary module's full-width table rotates only the first quarter of the
    frequencies (partial_rotary_factor 0.25); the rest are zero (cos 1, sin 0), pairing channel i with i + D/2."""
    spec = MODELS["gemma4_global"]
    model = build_model(spec, torch.float32)
    D = attention_module(model, spec).head_dim
    cos, sin = rope_table(model, spec, NUM_POSITIONS, torch.zeros(1))
    assert cos.shape == (NUM_POSITIONS, D) and D == 512
    rotated = int(text_model(model).config.rope_parameters["full_attention"]["partial_rotary_factor"] * D // 2)
    assert torch.equal(cos[:, :D // 2], cos[:, D // 2:]) and torch.equal(sin[:, :D // 2], sin[:, D // 2:])
    assert bool((cos[:, rotated:D // 2] == 1).all()) and bool((sin[:, rotated:D // 2] == 0).all())
    assert bool((sin[1:, :rotated] != 0).all())


@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_vl_image", "gemma4_global"])
def test_jax_inside_jit_matches_the_model(name):
    """Through a jitted JAX function with donated caches (the options static, mrope_section the config's list),
    against the model's q, k, v (and gate): gated queries, mRoPE on ``[3, T]`` positions, K=V with V-norm."""
    spec, model, attn, seen, args, kwargs = _prepare(name, torch.float32)
    jargs = {k: None if v is None else jnp.asarray(to_numpy(v)) for k, v in args.items()}
    kc, vc = jargs.pop("key_cache"), jargs.pop("value_cache")
    step = jax.jit(lambda a, kc, vc: jax_op(**a, key_cache=kc, value_cache=vc, **kwargs), donate_argnums=(1, 2))
    jout = step(jargs, kc, vc)
    frac = TOL[torch.float32][0]
    for field in "qkv":
        _close(from_numpy(getattr(jout, field)), seen[field][0].transpose(0, 1), frac, f"jit {field} vs model")
    if spec.gate:
        _close(from_numpy(jout.gate), seen["gate"][0], frac, "jit gate vs model")
