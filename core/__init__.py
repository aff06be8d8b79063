"""fused_qkv.core: the kernel, the framework-free launch plan and validation, the float64 oracle.

Frontends (``fused_qkv.torch_api``, ``fused_qkv.jax_api``) depend on this package; it
depends on neither. Importing it needs only NumPy; ``get_kernel`` needs Triton.
"""

from .config import OpConfig, config_from_values, tensor_parallel_columns
from .frontend import plan_for, rocm_target, warp_size
from .indices import check_indices, index_checks_requested
from .oracle import OracleResult, format_quantum, reference, round_to_format, rounding_error
from .plan import (
    ARRAY_NAMES,
    FAST_PATH_ARRAYS,
    FP8_ATTENTION_ARRAYS,
    FP8_FORMATS,
    INPUT_NAMES,
    OUTPUT_NAMES,
    REQUIRED_ARRAYS,
    SCALAR_NAMES,
    ArrayInfo,
    LaunchPlan,
    check_layer,
    ordered_args,
    plan_launch,
)


def get_kernel(interpret: bool):
    """The Triton kernel (compiled ``JITFunction`` or interpreted), loaded lazily."""
    from .launch import get_kernel as _get

    return _get(interpret)


def launch_on_host(plan, inputs, outputs):
    """Run the interpreted kernel over NumPy arrays (see ``fused_qkv.core.launch.launch_on_host``)."""
    from .launch import launch_on_host as _launch

    return _launch(plan, inputs, outputs)


__all__ = [
    "ARRAY_NAMES", "ArrayInfo", "FAST_PATH_ARRAYS", "FP8_ATTENTION_ARRAYS", "FP8_FORMATS", "INPUT_NAMES",
    "LaunchPlan", "OUTPUT_NAMES", "OpConfig", "OracleResult", "REQUIRED_ARRAYS", "SCALAR_NAMES", "check_indices",
    "check_layer", "config_from_values", "format_quantum", "get_kernel", "index_checks_requested", "launch_on_host",
    "ordered_args", "plan_for", "plan_launch", "reference", "rocm_target", "round_to_format", "rounding_error",
    "tensor_parallel_columns", "warp_size",
]
