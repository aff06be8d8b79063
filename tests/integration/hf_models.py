"""Small, randomly initialised Hugging Face models and what their attention code computes.

Each model is built from a config (no download): one or two decoder layers, a small hidden size, the real head
configuration of its family (GQA, head_dim, gate, partial rotary, gamma style, q/k norms or none, mRoPE sections,
V-norm, K=V, NoPE layers). ``run_model`` runs the model's own forward pass and records, for one attention layer:

- the input of the attention block (``hidden_states``, after the layer's input norm) and the mask the model built;
- q, k, v exactly as the model hands them to its attention kernel (normed and rotated; ``[B, H, S, D]``), by
  wrapping the module's ``eager_attention_forward``;
- the Qwen3-Next output gate, as the model splits it out of its q projection;
- the attention block's output (after the gate and o_proj);
- the position ids the text model ran with (``[3, B, S]`` for the VL models: the vision-language model computes them
  itself, with its own ``get_rope_index``, from the image grid of the prompt).

``pack_qkv`` packs the model's q/k/v projection weights (and biases) into the one QKV projection that fused-qkv
consumes (q and k only where the layer has no v_proj: Gemma 4's ``attention_k_eq_v`` layers), and ``rope_table``
reads the cos/sin table for all positions from the model's rotary embedding module.

Family notes (the same in transformers 5.17 and 5.24):

- Qwen2.5-VL: no q/k norm, q/k/v biases, ``head_dim = hidden_size // num_attention_heads``; the text config's
  ``rope_parameters["mrope_section"]`` (contiguous sections; ``rope_scaling`` is only the legacy spelling).
- Qwen3-VL: plain-gamma q/k norms, ``mrope_section`` in ``rope_parameters``; the modeling code always interleaves
  (``Qwen3VLTextRotaryEmbedding.recomposition_frequencies``), the released configs also say
  ``mrope_interleaved: true``, which the code does not read.
- Gemma 4: ``Gemma4RMSNorm`` multiplies by ``w`` (plain gamma, not Gemma 3's ``1 + w``), ``x * (mean(x^2) + eps) **
  -0.5`` in fp32; ``v_norm`` is the same norm without weight; ``scaling = 1.0``. Global layers take
  ``global_head_dim`` (a config ``__init__`` argument, resolved per layer in ``config.per_layer_config``) and, with
  ``attention_k_eq_v``, ``num_global_key_value_heads`` and no v_proj; their "proportional" RoPE returns a full
  ``head_dim`` table whose frequencies past ``partial_rotary_factor`` are zero (cos 1, sin 0).
- SmolLM3: ``no_rope_layers[i] == 0`` (from ``no_rope_layer_interval`` by default) marks a NoPE layer; no q/k norm.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

import torch


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    module: str  # transformers.models.<module>.modeling_<module>
    build: Callable[[], object]  # -> (config, model class)
    layer: int  # which decoder layer to check
    norm_weight_offset: float  # 0: plain gamma, 1: zero-centred
    gate: bool  # Qwen3-Next: q projection is [q_h | gate_h] per head
    layer_type: Optional[str] = None  # Gemma3/Gemma4: the rotary embedding is selected per layer type
    qk_norm: bool = True  # False: the layer has no q_norm/k_norm (Qwen2.5-VL, SmolLM3)
    rope: bool = True  # False: a NoPE layer (SmolLM3's no_rope_layers)
    mrope: Optional[str] = None  # None | "contiguous" | "interleaved": positions [3, T]
    prompt: str = "text"  # "text": tokens at START..START+S-1; "image": a VL prompt with an image grid
    v_norm: bool = False  # Gemma 4: V RMS-normalised per head, no weight
    k_eq_v: bool = False  # Gemma 4 global layers: no v_proj, V is the raw K projection
    kv_cache_layout: str = "NHD"


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                      rope_theta=1e6)
    return cfg, Qwen3ForCausalLM


def _qwen3_next():
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    # rotary on a quarter of each head (the family's partial_rotary_factor), gated queries, zero-centred gamma
    cfg = Qwen3NextConfig(vocab_size=96, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
                          shared_expert_intermediate_size=32, num_experts=2, num_experts_per_tok=1,
                          num_hidden_layers=1, layer_types=["full_attention"], num_attention_heads=4,
                          num_key_value_heads=2, head_dim=64, max_position_embeddings=64, partial_rotary_factor=0.25)
    return cfg, Qwen3NextForCausalLM


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # head_dim 256 as in the family; layer 0 slides (window 4, local rope base), layer 1 is global
    cfg = Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"], num_attention_heads=2,
                           num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=4,
                           max_position_embeddings=64)
    return cfg, Gemma3ForCausalLM


# token ids of the small VL vocabulary (the real ones are past its end)
VL_TOKENS = dict(image_token_id=90, video_token_id=91, vision_start_token_id=92, vision_end_token_id=93)
# a tiny vision tower: the VL model builds one, get_rope_index reads its spatial_merge_size; the prompts carry no
# pixels, so it never runs
_VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, spatial_merge_size=2)


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    # head_dim 128 (= hidden_size / heads) and the family's contiguous sections (16, 24, 24); GQA 2:1
    text = dict(vocab_size=96, hidden_size=256, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]))
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(_VISION, out_hidden_size=256,
                                                                 fullatt_block_indexes=[0]), **VL_TOKENS)
    return cfg, Qwen2_5_VLForConditionalGeneration


def _qwen3_vl():
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    # head_dim 128 and the family's interleaved sections (24, 20, 20)
    text = dict(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, head_dim=128, max_position_embeddings=64, bos_token_id=None,
                eos_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=5e6,
                                                        mrope_section=[24, 20, 20], mrope_interleaved=True))
    cfg = Qwen3VLConfig(text_config=text, vision_config=dict(_VISION, out_hidden_size=64, num_position_embeddings=16,
                                                             deepstack_visual_indexes=[]), **VL_TOKENS)
    return cfg, Qwen3VLForConditionalGeneration


def _gemma4():
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    # the family's head dims (256 sliding, 512 global) and K=V global layers with fewer KV heads (as the 31B);
    # layer 0 slides (window 4, default RoPE base 1e4), layer 1 is global (proportional RoPE on a quarter, base 1e6)
    cfg = Gemma4TextConfig(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"], num_attention_heads=2,
                           num_key_value_heads=2, head_dim=256, global_head_dim=512, num_global_key_value_heads=1,
                           attention_k_eq_v=True, sliding_window=4, hidden_size_per_layer_input=0,
                           max_position_embeddings=64)
    return cfg, Gemma4ForCausalLM


def _smollm3():
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    # head_dim 128 as in the family; no_rope_layer_interval 2: layer 0 uses RoPE, layer 1 is NoPE
    cfg = SmolLM3Config(vocab_size=96, hidden_size=256, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, no_rope_layer_interval=2,
                        max_position_embeddings=64, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return cfg, SmolLM3ForCausalLM


MODELS = {
    "qwen3": ModelSpec("qwen3", "qwen3", _qwen3, layer=0, norm_weight_offset=0.0, gate=False),
    "qwen3_next": ModelSpec("qwen3_next", "qwen3_next", _qwen3_next, layer=0, norm_weight_offset=1.0, gate=True),
    "gemma3_sliding": ModelSpec("gemma3_sliding", "gemma3", _gemma3, layer=0, norm_weight_offset=1.0, gate=False,
                                layer_type="sliding_attention", kv_cache_layout="HND"),
    "gemma3_global": ModelSpec("gemma3_global", "gemma3", _gemma3, layer=1, norm_weight_offset=1.0, gate=False,
                               layer_type="full_attention", kv_cache_layout="HND"),
    "qwen2_5_vl_image": ModelSpec("qwen2_5_vl_image", "qwen2_5_vl", _qwen2_5_vl, layer=0, norm_weight_offset=0.0,
                                  gate=False, qk_norm=False, mrope="contiguous", prompt="image"),
    "qwen3_vl_image": ModelSpec("qwen3_vl_image", "qwen3_vl", _qwen3_vl, layer=0, norm_weight_offset=0.0,
                                gate=False, mrope="interleaved", prompt="image", kv_cache_layout="HND"),
    "qwen3_vl_text": ModelSpec("qwen3_vl_text", "qwen3_vl", _qwen3_vl, layer=0, norm_weight_offset=0.0, gate=False,
                               mrope="interleaved"),
    "gemma4_sliding": ModelSpec("gemma4_sliding", "gemma4", _gemma4, layer=0, norm_weight_offset=0.0, gate=False,
                                layer_type="sliding_attention", v_norm=True, kv_cache_layout="HND"),
    "gemma4_global": ModelSpec("gemma4_global", "gemma4", _gemma4, layer=1, norm_weight_offset=0.0, gate=False,
                               layer_type="full_attention", v_norm=True, k_eq_v=True, kv_cache_layout="HND"),
    "smollm3_rope": ModelSpec("smollm3_rope", "smollm3", _smollm3, layer=0, norm_weight_offset=0.0, gate=False,
                              qk_norm=False),
    "smollm3_nope": ModelSpec("smollm3_nope", "smollm3", _smollm3, layer=1, norm_weight_offset=0.0, gate=False,
                              qk_norm=False, rope=False),
}


def text_model(model):
    """The decoder stack: ``model.model`` of a causal LM, ``model.model.language_model`` of a VL model."""
    return getattr(model.model, "language_model", model.model)


def build_model(spec: ModelSpec, dtype: torch.dtype, seed: int = 0):
    """The model in eval mode, with random (not default) norm weights so that a missing gamma or offset shows."""
    torch.manual_seed(seed)
    cfg, cls = spec.build()
    cfg._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        if getattr(cfg, sub, None) is not None:
            getattr(cfg, sub)._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():
        for layer in text_model(model).layers:
            attn = getattr(layer, "self_attn", None)
            if attn is None or not hasattr(attn, "q_norm"):
                continue
            for norm in (attn.q_norm, attn.k_norm):
                if spec.norm_weight_offset == 1.0:  # zero-centred: weights around 0
                    norm.weight.copy_(torch.randn_like(norm.weight) * 0.3)
                else:
                    norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)
    return model.to(dtype)


def attention_module(model, spec: ModelSpec):
    return text_model(model).layers[spec.layer].self_attn


def check_spec(model, spec: ModelSpec):
    """The spec's claims about the layer hold for the model (a changed transformers shows here first)."""
    attn = attention_module(model, spec)
    assert hasattr(attn, "q_norm") == spec.qk_norm, f"{spec.name}: q/k norm present: {hasattr(attn, 'q_norm')}"
    assert (getattr(attn, "v_norm", None) is not None) == spec.v_norm, f"{spec.name}: v_norm"
    if spec.v_norm:
        assert not attn.v_norm.with_scale, "Gemma 4's v_norm has no weight"
    assert (attn.v_proj is None) == spec.k_eq_v, f"{spec.name}: v_proj is {attn.v_proj}"
    assert bool(getattr(attn, "use_rope", True)) == spec.rope, f"{spec.name}: use_rope"
    rotary = text_model(model).rotary_emb
    assert (getattr(rotary, "mrope_section", None) is not None) == (spec.mrope is not None), f"{spec.name}: mRoPE"


def mrope_section(model) -> tuple:
    """(t, h, w) of the text config's ``rope_parameters``, checked against the rotary module's copy."""
    section = tuple(text_model(model).config.rope_parameters["mrope_section"])
    assert tuple(text_model(model).rotary_emb.mrope_section) == section
    return section


def vl_prompt(model, seq_len: int, gen: torch.Generator):
    """A VL prompt of ``seq_len`` tokens: text, ``<vision_start>``, one image of 2 x 3 merged patches (grid
    ``(1, 4, 6)`` before the 2 x 2 merge), ``<vision_end>``, text. Returns input_ids ``[1, S]``, the image grid
    ``[1, 3]`` and mm_token_type_ids (1 on the image tokens)."""
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    grid = torch.tensor([[1, 2 * merge, 3 * merge]])
    n_image = int(grid.prod()) // merge**2
    n_text = seq_len - n_image - 2
    assert n_text >= 2, "prompt too short for the image"
    text = torch.randint(0, 80, (n_text,), generator=gen)
    head = n_text // 2
    ids = torch.cat([text[:head], torch.tensor([cfg.vision_start_token_id]),
                     torch.full((n_image,), cfg.image_token_id), torch.tensor([cfg.vision_end_token_id]), text[head:]])
    mm_types = (ids == cfg.image_token_id).to(torch.int32)
    return ids[None], grid, mm_types[None]


def run_model(model, spec: ModelSpec, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor],
              **extra) -> dict:
    """The model's forward pass; returns what its attention layer ``spec.layer`` saw and computed (see module doc).
    ``position_ids=None`` with ``extra`` (image_grid_thw, mm_token_type_ids): the VL model computes them."""
    modeling = importlib.import_module(f"transformers.models.{spec.module}.modeling_{spec.module}")
    attn = attention_module(model, spec)
    seen: dict = {}
    original = modeling.eager_attention_forward

    def capture(module, query, key, value, attention_mask, **kwargs):
        if module is attn:
            seen.update(q=query.detach().clone(), k=key.detach().clone(), v=value.detach().clone(),
                        scaling=kwargs["scaling"])
        return original(module, query, key, value, attention_mask, **kwargs)

    def block_hook(module, args, kwargs, output):
        seen.update(hidden_states=kwargs["hidden_states"].detach().clone(),
                    attention_mask=kwargs.get("attention_mask"), output=output[0].detach().clone())

    def q_proj_hook(module, args, output):
        seen["q_proj"] = output.detach().clone()

    def text_model_hook(module, args, kwargs):
        seen["position_ids"] = kwargs.get("position_ids")

    hooks = [attn.register_forward_hook(block_hook, with_kwargs=True),
             attn.q_proj.register_forward_hook(q_proj_hook),
             text_model(model).register_forward_pre_hook(text_model_hook, with_kwargs=True)]
    modeling.eager_attention_forward = capture
    try:
        with torch.no_grad():
            model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra)
    finally:
        modeling.eager_attention_forward = original
        for h in hooks:
            h.remove()
    if spec.gate:  # the model's own split: q_proj output viewed [B, S, H, 2D], second half of each head
        B, S = input_ids.shape
        seen["gate"] = torch.chunk(seen["q_proj"].view(B, S, -1, attn.head_dim * 2), 2, dim=-1)[1]
    return seen


def pack_qkv(attn):
    """``(weight, bias)``: weight ``[(QH * (2 if gated else 1) + (1 if k_eq_v else 2) * KVH) * D, hidden]``, the
    q_proj, k_proj (and v_proj, where the layer has one) rows stacked (Qwen3-Next's q_proj already interleaves
    ``[q_h | gate_h]`` per head, fused-qkv's ``gated_qkv_layout="interleaved"``); bias the same for the biases, or
    None where the projections have none."""
    projs = [p for p in (attn.q_proj, attn.k_proj, attn.v_proj) if p is not None]
    weight = torch.cat([p.weight for p in projs], 0)
    if all(p.bias is None for p in projs):
        return weight, None
    assert all(p.bias is not None for p in projs), "either all q/k/v projections have a bias or none"
    return weight, torch.cat([p.bias for p in projs], 0)


def rope_table(model, spec: ModelSpec, num_positions: int, like: torch.Tensor):
    """cos, sin ``[num_positions, rotary_dim]`` from the model's rotary embedding, in the dtype the model uses.

    mRoPE models are evaluated with all three position rows equal to ``arange(num_positions)``: every section then
    reads the same position, so row ``p`` is the plain table at ``p``, which the op indexes per frequency."""
    pos = torch.arange(num_positions, device=like.device)[None]
    if spec.mrope is not None:
        pos = pos[None].expand(3, 1, num_positions)
    args = (like, pos) if spec.layer_type is None else (like, pos, spec.layer_type)
    with torch.no_grad():
        cos, sin = text_model(model).rotary_emb(*args)
    return cos[0].contiguous(), sin[0].contiguous()


def plain_rope_table(model, num_positions: int, dtype: torch.dtype):
    """The same table built by hand from the rotary module's ``inv_freq`` and ``attention_scaling``:
    ``cos(p * inv_freq) * attention_scaling``, repeated to full width (NeoX halves) as Hugging Face does."""
    rotary = text_model(model).rotary_emb
    freqs = torch.arange(num_positions, dtype=torch.float32)[:, None] * rotary.inv_freq.float()[None, :]
    emb = torch.cat([freqs, freqs], -1)
    return (emb.cos() * rotary.attention_scaling).to(dtype), (emb.sin() * rotary.attention_scaling).to(dtype)


def reference_attention(q, k, v, mask, scaling: float):
    """Plain softmax attention in float64. q ``[S, QH, D]``; k, v ``[S, KVH, D]``; mask: the model's 4-D mask
    (additive float or boolean ``[1, 1, S, S]``) or None (then causal). Returns ``[S, QH, D]`` float64."""
    S, QH, D = q.shape
    KVH = k.shape[1]
    q, k, v = (t.double() for t in (q, k, v))
    k = k.repeat_interleave(QH // KVH, dim=1)
    v = v.repeat_interleave(QH // KVH, dim=1)
    scores = torch.einsum("shd,thd->hst", q, k) * scaling
    if mask is None:
        mask = torch.ones(S, S, dtype=torch.bool).tril()
    else:
        mask = mask[0, 0].to(scores.device)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.double()
    return torch.einsum("hst,thd->shd", scores.softmax(-1), v)
