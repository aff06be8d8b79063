"""The torch frontend's direct launch of cached compiled kernels (GPU only) keys its cache on
``_specialisation_bits``. Triton compiles a different kernel whenever its own specialisation of the runtime
arguments differs, so the two must separate exactly the same arguments. Checked here against Triton's
specialisation function for the CUDA backend, on a CPU."""

import itertools

import torch
from fused_qkv.torch_api.op import _specialisation_bits
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend

BACKEND = CUDABackend(GPUTarget("cuda", 90, 32))
_buf = torch.empty(256, dtype=torch.bfloat16)
VALUES = [0, 1, 2, 3, 15, 16, 17, 32, 48, -1, -16, 2**31 - 1, 2**31, 2**31 + 16, -(2**31), -(2**31) - 1, 2**40,
          None, 1e-6, 0.0, 1.0, _buf, _buf[1:], _buf[8:], _buf[4:]]


def _triton(v):
    return native_specialize_impl(BACKEND, v, False, True, True)


def test_specialisation_bits_separate_exactly_what_triton_separates():
    for a, b in itertools.combinations_with_replacement(VALUES, 2):
        if isinstance(a, float) != isinstance(b, float) or (a is None) != (b is None):
            continue  # different argument kinds never occupy the same parameter
        same_triton = _triton(a) == _triton(b)
        same_ours = _specialisation_bits([a]) == _specialisation_bits([b])
        assert same_triton == same_ours, (a if not isinstance(a, torch.Tensor) else "tensor",
                                          b if not isinstance(b, torch.Tensor) else "tensor", _triton(a), _triton(b))
