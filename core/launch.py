"""Loads the one kernel source as a compiled and as an interpreted Triton kernel.

``@triton.jit`` decides between compiled and interpreted code when the decorator runs
(``TRITON_INTERPRET``), and a compiled helper cannot be called from an interpreted
kernel. So ``kernel.py`` is executed once per mode, as two private modules, each with
its own helpers decorated in that mode. CPU data runs the interpreted copy, GPU data
the compiled one; users set nothing.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import threading

import triton

KERNEL_NAME = "fused_qkv_split_qk_norm_rope_cache_kernel"
_SOURCE = pathlib.Path(__file__).with_name("kernel.py")
_lock = threading.Lock()
_kernels: dict = {}


def get_kernel(interpret: bool):
    """The kernel from ``core/kernel.py``, as a compiled ``JITFunction`` or an interpreted one."""
    interpret = bool(interpret)
    kern = _kernels.get(interpret)
    if kern is not None:
        return kern
    with _lock:
        if interpret not in _kernels:
            name = f"fused_qkv.core._kernel_{'interpreted' if interpret else 'compiled'}"
            spec = importlib.util.spec_from_file_location(name, _SOURCE)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            with triton.knobs.runtime.scope():
                triton.knobs.runtime.interpret = interpret
                spec.loader.exec_module(module)
            _kernels[interpret] = getattr(module, KERNEL_NAME)
    return _kernels[interpret]
