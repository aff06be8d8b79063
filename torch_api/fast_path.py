"""The torch frontend's eager fast paths on CUDA, and the launch of compiled kernels.

A call signature (the configuration values and their types, and every tensor's shape, strides, dtype and device)
that the checked path validated, planned and launched is recorded here. A later eager call with the same signature
then allocates its outputs and launches straight away: from C++ (``native.cpp``, called first by the public
function) when the native launcher is built, else from :class:`_FastLaunch` in Python. Both reuse the checked
path's verdict on the overlap of qkv and the caches per pointer difference (``plan.meeting_pairs``); anything else
they do not cover goes back to the checked path.
"""

from __future__ import annotations

import torch
from fused_qkv.core import ARRAY_NAMES, INPUT_NAMES, SCALAR_NAMES, ArrayInfo, get_kernel
from fused_qkv.core.plan import COMPILE_OPTIONS, PAIR_CODES, meeting_pairs
from fused_qkv.torch_api import native as _native
from triton import knobs
from triton.knobs import HookChain

_COMPILED: dict = {}  # (plan, device, Triton's specialisation bits) -> (CompiledKernel, constexpr values, plan)
_FAST: dict = {}  # eager fast path: call signature -> _FastLaunch
_FAST_MAX = 512
_result_type = tuple  # set by the op module: the public result types (main entry point, fp8 entry point)
_fp8_result_type = tuple


def set_result_type(cls, fp8_cls=tuple) -> None:
    global _result_type, _fp8_result_type
    _result_type, _fp8_result_type = cls, fp8_cls


def specialisation_bits(args):
    """What Triton specialises a compiled kernel on, for the runtime arguments: 16-byte alignment of each
    pointer; for each int, whether it is 1, a multiple of 16, or needs 64 bits."""
    return tuple(a.data_ptr() % 16 == 0 if isinstance(a, torch.Tensor)
                 else (a == 1, a % 16 == 0, -(2**31) <= a < 2**31) if type(a) is int
                 else a is None for a in args)


def launch_compiled(plan, args, device: int):
    """Launch on GPU ``device`` (the current device). The first launch of a specialisation goes through Triton's
    JITFunction (compiles, caches); later ones call the compiled kernel directly, skipping the per-call binding of
    ~80 arguments that dominates the eager host time. Returns (compiled kernel, constexpr values, whether every
    pointer argument was 16-byte aligned)."""
    bits = specialisation_bits(args)
    key = (id(plan), device, bits)
    compiled = _COMPILED.get(key)
    aligned = all(b for a, b in zip(args, bits, strict=True) if isinstance(a, torch.Tensor))
    if compiled is None:
        kernel = get_kernel(interpret=False)
        compiled = kernel[plan.grid](*args, **plan.constexprs, num_warps=plan.num_warps, **COMPILE_OPTIONS)
        if len(_COMPILED) > 4096:
            _COMPILED.clear()
        _COMPILED[key] = (compiled, [plan.constexprs[n] for n in kernel.arg_names[len(args):]], plan)
        return compiled, _COMPILED[key][1], aligned
    compiled, constexpr_values, _ = compiled
    bound = (*args, *constexpr_values)
    stream = torch._C._cuda_getCurrentRawStream(device)  # what Triton's own launcher asks torch for
    grid = (plan.grid[0], 1, 1)
    compiled.run(grid[0], 1, 1, stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(grid, stream, *bound), knobs.runtime.launch_enter_hook,
                 knobs.runtime.launch_exit_hook, *bound)
    return compiled, constexpr_values, aligned


def _meta(t):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def signature_key(values: tuple, tensors: tuple):
    """The fast paths' key: every tensor's metadata, the configuration values and their types (``True`` and ``1``
    hash alike; validation tells them apart). Raises AttributeError or TypeError for arguments that are not
    tensors or not hashable (the checked path then names them)."""
    key = (tuple(_meta(t) for t in tensors), values, tuple(map(type, values)))
    hash(key)
    return key


def hooked() -> bool:
    """Whether a Triton launch hook is set: a function, or Triton's hook chain holding functions."""
    hook = knobs.runtime.launch_enter_hook
    if hook is not None and (type(hook) is not HookChain or hook.calls):
        return True
    hook = knobs.runtime.launch_exit_hook
    return hook is not None and (type(hook) is not HookChain or bool(hook.calls))


def plain_eager(*tensors) -> bool:
    """True when nothing observes the call but eager execution: not traced by torch.compile, no tensor
    subclass (fake, functional, ...), no dispatch or function mode, no autograd on the inputs."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return False
    return all(type(t) is torch.Tensor and not t.requires_grad for t in tensors)


def try_python(values: tuple, tensors: tuple):
    """The Python fast path: ``(result, None)`` for a recorded signature; else ``(None, key)``, ``key`` the signature
    to record once the checked path has launched the call (None when it cannot be recorded). ``tensors``: the 12
    array arguments in ``plan.FAST_PATH_ARRAYS`` order (4-D caches: calls with ``layer`` never come here). The native
    path (``native.call``) is tried before, by the public function itself: it costs one call less there."""
    qkv, kc, vc = tensors[0], tensors[6], tensors[7]
    if not plain_eager(qkv, kc, vc):
        return None, None
    try:
        key = signature_key(values, tensors)
        entry = _FAST.get(key)
    except (AttributeError, TypeError):  # not tensors, or unhashable values: the checked path names them
        return None, None
    if entry is not None:
        out = entry(*tensors)
        if out is not None:
            return out, None
    return None, key


def _ptr(t):
    return None if t is None else t.data_ptr()


class _FastLaunch:
    """A validated call signature on CUDA, ready to launch: the plan's outputs, scalars and constexprs, and the
    compiled kernel for 16-byte-aligned pointers. Pointers go to Triton's launcher as ints: every tensor was
    checked to be on this device when the plan was made, so the launcher's per-pointer driver query is skipped.
    Returns None (the caller takes the checked path) when anything the entry does not cover comes up: another
    current device, a misaligned pointer, launch hooks, or qkv/cache byte ranges that meet at a pointer difference
    not yet checked exactly."""

    __slots__ = ("spans", "ok_pairs", "outs", "device", "index", "scalars", "tail", "grid0", "run",
                 "function", "packed_metadata", "native", "python")

    def __init__(self, plan, device, compiled, constexpr_values, spans, python=True):
        self.python = python  # False: an fp8 entry-point signature, which only the native path launches
        self.spans = spans
        self.ok_pairs = frozenset()
        self.native = None  # (native module, generation, index) when the native path also has this signature
        self.outs = tuple(None if plan.out_shapes[n] is None else plan.out_shapes[n][0]
                          for n in ("q", "gate", "k", "v"))
        self.device = device
        self.index = device.index
        self.scalars = tuple(plan.scalars[n] for n in SCALAR_NAMES)
        self.tail = tuple(constexpr_values)
        self.grid0 = plan.grid[0]
        self.run, self.function, self.packed_metadata = compiled.run, compiled.function, compiled.packed_metadata

    def __call__(self, qkv, q_weight, k_weight, cos, sin, positions, kc, vc, slot_mapping, offsets, k_scale,
                 v_scale):
        if not self.python or torch._C._cuda_getDevice() != self.index or hooked():
            return None
        pq, pk, pv = qkv.data_ptr(), kc.data_ptr(), vc.data_ptr()
        (q0, q1), (k0, k1), (v0, v1) = self.spans
        if ((pk + k0 < pv + v1 and pv + v0 < pk + k1) or (pq + q0 < pk + k1 and pk + k0 < pq + q1)
                or (pq + q0 < pv + v1 and pv + v0 < pq + q1)) \
                and meeting_pairs(self.spans, pq, pk, pv) - self.ok_pairs:
            return None
        ptrs = (pq, _ptr(q_weight), _ptr(k_weight), _ptr(cos), _ptr(sin), _ptr(positions),
                _ptr(offsets), slot_mapping.data_ptr(), _ptr(k_scale), _ptr(v_scale), None, pk, pv, None, None, None)
        m = 0
        for p in ptrs:
            if p is not None:
                m |= p
        if m & 15:
            return None
        dtype, device = qkv.dtype, self.device
        q_shape, gate_shape, k_shape, v_shape = self.outs
        q = torch.empty(q_shape, dtype=dtype, device=device)
        gate = None if gate_shape is None else torch.empty(gate_shape, dtype=dtype, device=device)
        k = None if k_shape is None else torch.empty(k_shape, dtype=dtype, device=device)
        v = None if v_shape is None else torch.empty(v_shape, dtype=dtype, device=device)
        if self.grid0:
            self.run(self.grid0, 1, 1, torch._C._cuda_getCurrentRawStream(self.index), self.function,
                     self.packed_metadata, None, None, None, *ptrs, *self.scalars, q.data_ptr(), _ptr(gate),
                     _ptr(k), _ptr(v), pk, pv, None, None, None, *self.tail)  # no fp8-attention arrays here
        return _result_type(q, gate, k, v)


def register(key, plan, tensors, values, compiled, constexpr_values, spans):
    """Record a validated, launched call signature for the fast paths: the Python one (``_FastLaunch``) and, where
    it is available, the native one (``native.cpp``). ``tensors``: the 12 tensors (or None) in ``FAST_PATH_ARRAYS``
    order, or the fp8 entry point's 15 in ``ARRAY_NAMES`` order (native path only); ``values``: the configuration
    values as the public function passes them."""
    qkv, kc, vc = tensors[0], tensors[6], tensors[7]
    entry = _FAST.get(key)
    if entry is None:
        if len(_FAST) >= _FAST_MAX:
            _FAST.clear()
        fp8 = len(tensors) == len(ARRAY_NAMES)
        entry = _FAST[key] = _FastLaunch(plan, qkv.device, compiled, constexpr_values, spans, python=not fp8)
        module = _native.load()
        if module is not None:
            module.set_result_type(_result_type)  # its calls return the public result types
            module.set_result_type(_fp8_result_type, 5)
            entry.native = _native_register(module, plan, tensors, values, compiled, constexpr_values, spans)
    # the byte ranges of these pairs meet, and the exact check (in the checked path) found no shared element:
    # whether two arrays share an element depends on their pointers' difference only, so it is now known good
    if len(entry.ok_pairs) < 64:
        pairs = meeting_pairs(spans, qkv.data_ptr(), kc.data_ptr(), vc.data_ptr())
        entry.ok_pairs |= pairs
        if entry.native is not None:
            for name, diff in pairs:
                entry.native[0].add_ok_pair(entry.native[1], entry.native[2], PAIR_CODES[name], diff)


# kernel pointer arguments (plan.INPUT_NAMES order) -> index among the 12 (15: fp8 entry point) tensors of a native
# call
_NATIVE_TENSOR_INDEX = {"qkv": 0, "q_weight": 1, "k_weight": 2, "cos": 3, "sin": 4, "positions": 5, "offsets": 9,
                        "slot_mapping": 8, "k_scale": 10, "v_scale": 11, "layer": None, "key_cache_in": 6,
                        "value_cache_in": 7, "q_scale": 12, "k_scale_cache_in": 13, "v_scale_cache_in": 14}
_NATIVE_SCALAR_KINDS = {"i32": 2, "i64": 3, "fp32": 4}
_NATIVE_OUTPUTS = ("q", "gate", "k", "v", "q_scales")  # output index of a native call (q_scales: fp8 entry point)


def native_params(compiled, plan, constexpr_values):
    """The compiled kernel's parameters in order, as (kind, value) for ``native.cpp``: kind 0 = pointer of one of
    the 12 (15) call tensors, 1 = pointer of output q/gate/k/v(/q_scales), 2/3/4 = i32/i64/fp32 value, 5 = null
    pointer. Mirrors
    Triton's launcher: parameters the compiled signature made constexpr are not passed, and two scratch pointers
    follow. None when the kernel needs anything the native launcher does not do (scratch memory, PDL, clusters)."""
    src, meta = getattr(compiled, "src", None), getattr(compiled, "metadata", None)
    if src is None or meta is None or getattr(meta, "global_scratch_size", 1) or \
            getattr(meta, "profile_scratch_size", 1) or getattr(meta, "launch_pdl", True) or \
            getattr(meta, "launch_cooperative_grid", True) or getattr(meta, "num_ctas", 2) != 1:
        return None
    sources = ([("tensor", _NATIVE_TENSOR_INDEX[n]) for n in INPUT_NAMES]
               + [("scalar", plan.scalars[n]) for n in SCALAR_NAMES]
               + [("output", i) if plan.out_shapes[n] is not None else ("tensor", None)
                  for i, n in enumerate(_NATIVE_OUTPUTS[:4])]
               + [("tensor", 6), ("tensor", 7)]
               + [("output", 4) if plan.out_shapes["q_scales"] is not None else ("tensor", None)]
               + [("tensor", 13), ("tensor", 14)]  # the scale caches (absent: None, a constexpr)
               + [("constexpr", v) for v in constexpr_values])
    types = list(src.signature.values())
    if len(types) != len(sources):
        return None
    params = []
    for (what, value), ty in zip(sources, types, strict=True):
        if ty == "constexpr":
            continue
        if ty.startswith("*") and what in ("tensor", "output") and value is not None:
            params.append((0 if what == "tensor" else 1, value))
        elif what == "scalar" and ty in _NATIVE_SCALAR_KINDS:
            params.append((_NATIVE_SCALAR_KINDS[ty], value))
        else:
            return None
    return tuple(params) + ((5, 0), (5, 0))  # global and profile scratch: none


def _native_register(module, plan, tensors, values, compiled, constexpr_values, spans):
    """Record this call signature in the native module; returns (module, generation, index) or None."""
    params = native_params(compiled, plan, constexpr_values)
    if params is None:
        return None
    names = _NATIVE_OUTPUTS if len(tensors) == len(ARRAY_NAMES) else _NATIVE_OUTPUTS[:4]
    flat = [b for span in spans for b in span]
    if len(names) == 5:  # the scale caches' byte ranges, for the native path's overlap check
        flat += [b for t in tensors[13:] for b in (_byte_extent(t) if t is not None else (0, 0))]
    outs = tuple(None if plan.out_shapes[n] is None else tuple(plan.out_shapes[n][0]) for n in names)
    dtypes = tuple(None if plan.out_shapes[n] is None else getattr(torch, plan.out_shapes[n][1]) for n in names)
    generation, index = module.add(values, tuple(tensors), tuple(flat), outs, dtypes, int(compiled.function),
                                   plan.grid[0], 32 * compiled.metadata.num_warps, compiled.metadata.shared, params)
    return module, generation, index


def _byte_extent(t):
    """[lo, hi) byte offsets from ``t``'s data pointer that its elements occupy."""
    return ArrayInfo(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch.")).byte_extent()


def clear() -> None:
    """Forget every compiled-kernel handle and recorded signature (Python and native)."""
    _COMPILED.clear()
    _FAST.clear()
    module = _native.loaded()
    if module is not None:
        module.clear()
