"""What every frontend needs besides the plan itself: one rule for the compile target and its warp size, and
:func:`plan_for`, so that torch and JAX make the same plan (and raise the same errors) for the same call."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .config import OpConfig
from .plan import ARRAY_NAMES, ArrayInfo, LaunchPlan, plan_launch

ROCM_ARCHS = ("gfx942", "gfx950")  # MI300 and MI350 series: the AMD targets this kernel is compiled for


def rocm_target(arch: str) -> str:
    """The compile target of an AMD GPU from its architecture name (``"gfx942:sramecc+:xnack-"`` as torch's
    ``gcnArchName`` gives it, or ``"gfx942"``)."""
    base = arch.split(":")[0].strip().lower()
    if base not in ROCM_ARCHS:
        raise ValueError(f"qkv is on an AMD GPU of architecture {arch!r}; supported: {list(ROCM_ARCHS)}")
    return f"hip:{base}"


def warp_size(target: str) -> int:
    """Threads per warp (wavefront) of a target: 64 on the CDNA GPUs, 32 on NVIDIA (and for the interpreter)."""
    return 64 if target.startswith("hip:") else 32


def plan_for(arrays: Mapping[str, Optional[ArrayInfo]], config: OpConfig, layer: Any, target: str) -> LaunchPlan:
    """The launch plan for one call: ``arrays`` maps the names of ``ARRAY_NAMES`` (absent: None) to ArrayInfo."""
    unknown = set(arrays) - set(ARRAY_NAMES)
    if unknown:
        raise TypeError(f"unknown array arguments {sorted(unknown)}")
    return plan_launch(arrays, config, layer=layer, target=target, warp_size=warp_size(target))
