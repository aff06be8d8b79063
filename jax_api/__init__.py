"""fused_qkv.jax_api: the JAX frontend (not implemented yet; see the JAX frontend issue)."""
