"""The torch frontend's direct launch of cached compiled kernels (GPU only) keys its cache on
``fast_path.specialisation_bits``. Triton compiles a different kernel whenever its own specialisation of the runtime
arguments differs, so the two must separate exactly the same arguments. Checked here against Triton's
specialisation function for the CUDA backend, on a CPU.

White-box: the cache key and the fast path are private (``fast_path``); nothing public exposes them."""

import itertools

import torch
from fused_qkv.torch_api.fast_path import specialisation_bits as _specialisation_bits
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


class _FakeCompiled:
    """Stands in for a compiled kernel: records what the fast path hands to Triton's launcher."""

    function, packed_metadata = 7, (4, 1, 0)

    def __init__(self):
        self.launches = []

    def run(self, *args):
        self.launches.append(args)


def test_fast_path_passes_the_arguments_the_checked_path_passes(monkeypatch):
    """The eager fast path (``_FastLaunch``, used on CUDA) on a CPU, with the compile target and the launcher faked:
    the second call of a signature skips the checks and hands Triton's launcher the same arguments, in the same
    order, as the checked path (tensors as their data pointers), plus the compiled constexpr values; outputs are
    new tensors of the documented shapes; a misaligned pointer or caches that overlap send it back to the checks."""
    import dataclasses

    import pytest
    from fused_qkv.torch_api import fast_path, native
    from fused_qkv.torch_api import op as op_module
    from helpers import Case, make_inputs

    fake, checked = _FakeCompiled(), []

    def launch_compiled(plan, args, device):
        checked.append(list(args))
        return fake, ["constexprs"], True

    monkeypatch.setattr(native, "load", lambda **kw: None)  # the Python fast path alone
    monkeypatch.setattr(native, "loaded", lambda: None)
    monkeypatch.setattr(op_module, "_target", lambda device: "cuda")
    monkeypatch.setattr(fast_path, "launch_compiled", launch_compiled)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # CPU tensors: device index None
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: None, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 123, raising=False)
    op_module.clear_caches()
    try:
        case = Case(T=5, gate="interleaved", scale="head", with_offsets=True)
        args, kwargs = make_inputs(case)
        op_module.fused_qkv_split_qk_norm_rope_cache(**args, **kwargs)
        assert len(checked) == 1 and not fake.launches
        out = op_module.fused_qkv_split_qk_norm_rope_cache(**args, **kwargs)
        assert len(checked) == 1 and len(fake.launches) == 1
        launched = fake.launches[0]
        grid = -(-case.T // 2) * (2 * case.QH + 2 * case.KVH)  # 2-token tiles at T <= 16; Q, K, V, gate heads
        assert launched[:9] == (grid, 1, 1, 123, 7, (4, 1, 0), None, None, None)
        expect = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in checked[0]]
        from fused_qkv.core import INPUT_NAMES, SCALAR_NAMES

        n_in = len(INPUT_NAMES) + len(SCALAR_NAMES)  # then q, gate, k, v, the caches, q_scales, the scale caches
        assert list(launched[9:9 + n_in]) == expect[:n_in]
        assert list(launched[9 + n_in:]) == [out.q.data_ptr(), out.gate.data_ptr(), out.k.data_ptr(),
                                             out.v.data_ptr()] + expect[n_in + 4:] + ["constexprs"]
        assert tuple(out.q.shape) == tuple(out.gate.shape) == (case.T, case.QH, case.D)
        assert tuple(out.k.shape) == tuple(out.v.shape) == (case.T, case.KVH, case.D)

        # misaligned pointer (same metadata): back to the checked path
        base = torch.empty(args["positions"].numel() + 1, dtype=args["positions"].dtype)
        misaligned = dict(args, positions=base[1:])
        op_module.fused_qkv_split_qk_norm_rope_cache(**misaligned, **kwargs)
        assert len(checked) == 2
        # overlapping caches (same metadata): checked, and refused
        with pytest.raises(ValueError, match="must not overlap"):
            op_module.fused_qkv_split_qk_norm_rope_cache(**dict(args, value_cache=args["key_cache"]), **kwargs)
        # a value of another type that hashes alike: checked, and refused
        with pytest.raises(TypeError, match="is_neox must be a bool"):
            op_module.fused_qkv_split_qk_norm_rope_cache(**args, **dict(kwargs, is_neox=1))
        # caches that are views of one allocation: the exact check runs once per pointer difference
        view_case = dataclasses.replace(case, cache_view=True)
        vargs, vkw = make_inputs(view_case)
        for _ in range(3):
            op_module.fused_qkv_split_qk_norm_rope_cache(**vargs, **vkw)
        assert len(checked) == 3 and len(fake.launches) == 3
    finally:
        op_module.clear_caches()
