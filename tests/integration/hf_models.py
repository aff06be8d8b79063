"""Small, randomly initialised Hugging Face models and what their attention code computes.

Each model is built from a config (no download): one or two decoder layers, a small hidden size, the real head
configuration of its family (GQA, head_dim, gate, partial rotary, gamma style). ``run_model`` runs the model's own
forward pass and records, for one attention layer:

- the input of the attention block (``hidden_states``, after the layer's input norm) and the mask the model built;
- q, k, v exactly as the model hands them to its attention kernel (normed and rotated; ``[B, H, S, D]``), by
  wrapping the module's ``eager_attention_forward``;
- the Qwen3-Next output gate, as the model splits it out of its q projection;
- the attention block's output (after the gate and o_proj).

``pack_qkv`` packs the model's q/k/v projection weights into the one QKV projection that fused-qkv consumes, and
``rope_table`` reads the cos/sin table for all positions from the model's rotary embedding module.
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
    layer_type: Optional[str] = None  # Gemma3: its rotary embedding is selected per layer type


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


MODELS = {
    "qwen3": ModelSpec("qwen3", "qwen3", _qwen3, layer=0, norm_weight_offset=0.0, gate=False),
    "qwen3_next": ModelSpec("qwen3_next", "qwen3_next", _qwen3_next, layer=0, norm_weight_offset=1.0, gate=True),
    "gemma3_sliding": ModelSpec("gemma3_sliding", "gemma3", _gemma3, layer=0, norm_weight_offset=1.0, gate=False,
                                layer_type="sliding_attention"),
    "gemma3_global": ModelSpec("gemma3_global", "gemma3", _gemma3, layer=1, norm_weight_offset=1.0, gate=False,
                               layer_type="full_attention"),
}


def build_model(spec: ModelSpec, dtype: torch.dtype, seed: int = 0):
    """The model in eval mode, with random (not default) norm weights so that a missing gamma or offset shows."""
    torch.manual_seed(seed)
    cfg, cls = spec.build()
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            attn = getattr(layer, "self_attn", None)
            if attn is None:
                continue
            for norm in (attn.q_norm, attn.k_norm):
                if spec.norm_weight_offset == 1.0:  # zero-centred: weights around 0
                    norm.weight.copy_(torch.randn_like(norm.weight) * 0.3)
                else:
                    norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)
    return model.to(dtype)


def attention_module(model, spec: ModelSpec):
    return model.model.layers[spec.layer].self_attn


def run_model(model, spec: ModelSpec, input_ids: torch.Tensor, position_ids: torch.Tensor) -> dict:
    """The model's forward pass; returns what its attention layer ``spec.layer`` saw and computed (see module doc)."""
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

    hooks = [attn.register_forward_hook(block_hook, with_kwargs=True),
             attn.q_proj.register_forward_hook(q_proj_hook)]
    modeling.eager_attention_forward = capture
    try:
        with torch.no_grad():
            model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    finally:
        modeling.eager_attention_forward = original
        for h in hooks:
            h.remove()
    if spec.gate:  # the model's own split: q_proj output viewed [B, S, H, 2D], second half of each head
        B, S = input_ids.shape
        seen["gate"] = torch.chunk(seen["q_proj"].view(B, S, -1, attn.head_dim * 2), 2, dim=-1)[1]
    return seen


def pack_qkv(attn) -> torch.Tensor:
    """``[(QH * (2 if gated else 1) + 2 * KVH) * D, hidden]``: q_proj, k_proj, v_proj rows stacked (Qwen3-Next's q_proj
    already interleaves ``[q_h | gate_h]`` per head, fused-qkv's ``gated_qkv_layout="interleaved"``)."""
    for p in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert p.bias is None, "these configs have no attention bias"
    return torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0)


def rope_table(model, spec: ModelSpec, num_positions: int, like: torch.Tensor):
    """cos, sin ``[num_positions, rotary_dim]`` from the model's rotary embedding, in the dtype the model uses."""
    pos = torch.arange(num_positions, device=like.device)[None]
    args = (like, pos) if spec.layer_type is None else (like, pos, spec.layer_type)
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(*args)
    return cos[0].contiguous(), sin[0].contiguous()


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
