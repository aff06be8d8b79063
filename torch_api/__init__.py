"""fused_qkv.torch_api: the PyTorch entrypoints (``torch.library`` custom ops that mutate the caches)."""

from .op import (
    FP8_OP_NAME,
    OP_NAME,
    FusedQKVFp8Output,
    FusedQKVOutput,
    fused_qkv_split_qk_norm_rope_cache,
    fused_qkv_split_qk_norm_rope_cache_fp8,
)

__all__ = ["FP8_OP_NAME", "OP_NAME", "FusedQKVFp8Output", "FusedQKVOutput", "fused_qkv_split_qk_norm_rope_cache",
           "fused_qkv_split_qk_norm_rope_cache_fp8"]
