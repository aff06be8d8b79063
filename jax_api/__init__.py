"""fused_qkv.jax_api: the JAX frontend (functional; returns the updated caches).

GPU through ``jax_triton.triton_call`` (imported lazily, only on GPU); CPU through the same
kernel under Triton's interpreter.
"""

from .op import (
    FusedQKVJaxFp8Output,
    FusedQKVJaxOutput,
    fused_qkv_split_qk_norm_rope_cache,
    fused_qkv_split_qk_norm_rope_cache_fp8,
)

__all__ = ["FusedQKVJaxFp8Output", "FusedQKVJaxOutput", "fused_qkv_split_qk_norm_rope_cache",
           "fused_qkv_split_qk_norm_rope_cache_fp8"]
