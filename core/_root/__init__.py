"""fused-qkv: one Triton kernel for the attention prologue, with a PyTorch and a JAX frontend.

Subpackages: ``fused_qkv.core`` (kernel, launch plan, float64 oracle), ``fused_qkv.torch_api``,
``fused_qkv.jax_api`` and ``fused_qkv.bench`` (the ``fused-qkv`` command line). Importing this package imports
none of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fused-qkv")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
