"""fused_qkv.torch_api: the PyTorch entrypoint (a ``torch.library`` custom op that mutates the caches)."""

from .op import OP_NAME, FusedQKVOutput, fused_qkv_split_qk_norm_rope_cache

__all__ = ["OP_NAME", "FusedQKVOutput", "fused_qkv_split_qk_norm_rope_cache"]
