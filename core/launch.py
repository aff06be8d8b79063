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
# Triton's interpreter patches triton.language module globals for the duration of a launch: two
# interpreted launches on different threads (e.g. JAX callbacks of several CPU devices) must not overlap.
_interpret_lock = threading.Lock()


def launch_interpreted(grid, args, constexprs) -> None:
    """Launch the interpreted kernel, one launch at a time in this process."""
    kernel = get_kernel(interpret=True)
    with _interpret_lock:
        kernel[grid](*args, **constexprs)


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


class _HostArray:
    """Just enough of a tensor for Triton's interpreter launcher, over a NumPy array in host memory.

    The interpreter reads ``data_ptr()`` and ``dtype`` (a Triton dtype: it decides the pointer type, so
    e4m3fnuz stays fp8e4b8), and copies storages to and from the host; here the data already is on the host,
    so the storage is the array itself and the copies are no-ops.
    """

    def __init__(self, array, dtype):
        self._array = array
        self.dtype = dtype

    def data_ptr(self):
        return self._array.ctypes.data

    def untyped_storage(self):
        return self

    def cpu(self):
        return self

    def storage_offset(self):
        return 0

    def size(self):
        return self._array.shape

    def stride(self):
        return tuple(s // self._array.itemsize for s in self._array.strides)

    def new_empty(self, *args, **kwargs):
        return _HostArray(self._array, self.dtype)

    def set_(self, storage, *args):
        self._array = storage._array
        return self

    def copy_(self, other):
        return self


def _triton_dtype(name: str):
    import triton.language as tl

    return {
        "float16": tl.float16, "bfloat16": tl.bfloat16, "float32": tl.float32, "int32": tl.int32,
        "int64": tl.int64, "float8_e4m3fn": tl.float8e4nv, "float8_e5m2": tl.float8e5,
        "float8_e4m3fnuz": tl.float8e4b8,
    }[name]


def launch_on_host(plan, inputs, outputs) -> None:
    """Run the interpreted kernel over NumPy arrays (``None`` for absent optional arguments).

    ``inputs``/``outputs`` map the names of ``plan.INPUT_NAMES``/``plan.OUTPUT_NAMES`` to arrays;
    outputs must be writable and C-contiguous. Used by frontends whose CPU arrays are not torch tensors.
    """
    import numpy as np

    from .plan import ordered_args

    def wrap(a):
        if a is None:
            return None
        return _HostArray(a, _triton_dtype(np.dtype(a.dtype).name))

    args = ordered_args({k: wrap(v) for k, v in inputs.items()}, plan.scalars,
                        {k: wrap(v) for k, v in outputs.items()})
    if plan.grid[0] > 0:
        launch_interpreted(plan.grid, args, plan.constexprs)
