"""fused_qkv.jax_api: the JAX frontend (functional; returns the updated caches).

GPU through ``jax_triton.triton_call`` (imported lazily, only on GPU); CPU through the same
kernel under Triton's interpreter.
"""

from .op import FusedQKVJaxOutput, fused_qkv_split_qk_norm_rope_cache

__all__ = ["FusedQKVJaxOutput", "fused_qkv_split_qk_norm_rope_cache"]
