"""White-box (the parameter layout, recorded signatures and fast-path entries are private): the torch frontend's
native eager launcher (``torch_api/native.cpp``), built here with the CPU torch and run on
CPU tensors: entries on CPU record their launch instead of calling the driver. With the compile target and
Triton's compile faked (no GPU), the native path must hand the kernel exactly the parameters Triton's own launcher
would (its signature decides which arguments are constexpr), allocate outputs of the documented shapes, and send
every call it does not cover back to the checked Python path. The same path on the H100: tests/gpu/test_fast_path.py.
"""

import dataclasses
import pathlib
import re
import struct
import types
import warnings

import pytest
import torch
from fused_qkv.core import FAST_PATH_ARRAYS, get_kernel
from fused_qkv.torch_api import fast_path, native
from fused_qkv.torch_api import op as op_module
from helpers import Case, make_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend

BACKEND = CUDABackend(GPUTarget("cuda", 90, 32))


def _triton_type(arg):
    """The signature type Triton's JIT gives a runtime argument (pointer, i32/i64/fp32, or constexpr)."""
    if arg is None:
        return "constexpr"
    return native_specialize_impl(BACKEND, arg, False, True, True)[0]


class _FakeCompiled:
    """A compiled kernel as Triton returns it, with the signature Triton would have built for these arguments."""

    function, packed_metadata = 0x7000, (4, 1, 0)

    def __init__(self, args, tail):
        names = [f"a{i}" for i in range(len(args) + len(tail))]
        types_ = [_triton_type(a) for a in args] + ["constexpr"] * len(tail)
        self.src = types.SimpleNamespace(signature=dict(zip(names, types_, strict=True)))
        self.metadata = types.SimpleNamespace(num_warps=2, shared=96, global_scratch_size=0, profile_scratch_size=0,
                                              launch_pdl=False, launch_cooperative_grid=False, num_ctas=1)
        self.python_launches = []

    def run(self, *args):
        self.python_launches.append(args)


@pytest.fixture
def faked(monkeypatch):
    """CPU tensors treated as CUDA ones by the frontend, Triton's compile and launch faked; yields the record."""
    module = native.load(warn=False)
    assert module is not None, native.status()
    yield from _fake_cuda(monkeypatch)


def _fake_cuda(monkeypatch):
    rec = types.SimpleNamespace(checked=[], compiled=None)

    def launch_compiled(plan, args, device):
        rec.checked.append(list(args))
        tail = [plan.constexprs[n] for n in get_kernel(interpret=False).arg_names[len(args):]]
        if rec.compiled is None:
            rec.compiled = _FakeCompiled(args, tail)
        return rec.compiled, tail, True

    monkeypatch.setattr(op_module, "_target", lambda device: "cuda")
    monkeypatch.setattr(fast_path, "launch_compiled", launch_compiled)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # CPU tensors: device index None
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: None, raising=False)
    op_module.clear_caches()
    yield rec
    op_module.clear_caches()


def _expected_params(checked_args, out):
    """What Triton's launcher passes the kernel for these arguments: every argument its signature does not make
    constexpr (tensors as data pointers, fp32 as bits), in order, then the two scratch pointers (null)."""
    from fused_qkv.core import INPUT_NAMES, OUTPUT_NAMES, SCALAR_NAMES

    first_out = len(INPUT_NAMES) + len(SCALAR_NAMES)
    fresh = {first_out + OUTPUT_NAMES.index(n): getattr(out, n) for n in ("q", "gate", "k", "v", "q_scales")
             if hasattr(out, n)}  # this call's new outputs
    values = []
    for i, a in enumerate(checked_args):
        if i in fresh:
            a = fresh[i]
        ty = _triton_type(a)
        if ty == "constexpr":
            continue
        if isinstance(a, torch.Tensor):
            values.append(a.data_ptr())
        elif ty == "fp32":
            values.append(struct.unpack("<I", struct.pack("<f", a))[0])
        else:
            values.append(a & 0xFFFFFFFF if ty == "i32" else a)
    return values + [0, 0]


CASES = [
    Case(T=5, gate="interleaved", scale="head", with_offsets=True),
    Case(T=1, return_kv=False, cache_dtype="float8_e4m3fn", scale="tensor", q_norm=False),  # T=1: constexpr ints
    Case(T=16, layout="HND", rotary_dim=16, is_neox=False, index_dtype="int32", table="vllm_view", row_pad=8,
         dtype="float16", offset=1.0, slots="negative"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c.T}-gate{c.gate}-kv{c.return_kv}-{c.layout}")
def test_native_path_passes_the_parameters_tritons_launcher_would(case, faked):
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    args, kwargs = make_inputs(case)
    op(**args, **kwargs)  # checked path: validates, plans, "compiles", records the signature
    assert len(faked.checked) == 1 and native.loaded().size() == 1
    out = op(**args, **kwargs)
    assert len(faked.checked) == 1 and not faked.compiled.python_launches, "the second call must be native"
    assert type(out) is op_module.FusedQKVOutput  # built in C++ as the public result type
    grid0, block, shared, params = native.loaded().last_recorded()
    plan_grid = fast_path._FAST[next(iter(fast_path._FAST))].grid0
    assert (grid0, block, shared) == (plan_grid, 2 * 32, 96)
    assert list(params) == _expected_params(faked.checked[0], out)
    QH, KVH, D, T = case.QH, case.KVH, case.D, case.T
    assert tuple(out.q.shape) == (T, QH, D) and out.q.dtype == args["qkv"].dtype
    assert (out.gate is None) == (case.gate is None) and (out.k is None) == (not case.return_kv)
    if case.gate:
        assert tuple(out.gate.shape) == (T, QH, D)
    if case.return_kv:
        assert tuple(out.k.shape) == tuple(out.v.shape) == (T, KVH, D)
    again = op(**args, **kwargs)
    assert again.q.data_ptr() != out.q.data_ptr(), "each call returns new outputs"
    # the outputs share one allocation: each contiguous, 256-byte aligned within it, none overlapping another
    present = [o for o in out if o is not None]
    spans = sorted((o.data_ptr(), o.data_ptr() + o.numel() * o.element_size()) for o in present)
    assert all(o.is_contiguous() and (o.data_ptr() - out.q.data_ptr()) % 256 == 0 for o in present)
    assert all(end <= start for (_, end), (start, _) in zip(spans[:-1], spans[1:], strict=True))
    assert {o.untyped_storage().data_ptr() for o in present} == {out.q.untyped_storage().data_ptr()}
    for i, o in enumerate(present):  # (the kernel did not run: fill them first)
        o.fill_(i + 1.0)
    for o in present:  # writing one output leaves the others as they were
        before = [x.clone() for x in present]
        o.fill_(-3.0)
        assert all(torch.equal(x, b) for x, b in zip(present, before, strict=True) if x is not o)


FP8_CASES = [
    Case(T=5, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv", gate="interleaved"),
    Case(T=16, q_fp8="static", cache_dtype="float8_e4m3fn", scale="tensor", layout="HND", index_dtype="int32"),
    Case(T=3, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="k", scale="head", return_kv=False),
    Case(T=4, cache_dtype="float8_e4m3fn", scale_cache="v", with_offsets=True),  # q in the input dtype
]


@pytest.mark.parametrize("case", FP8_CASES, ids=lambda c: c.id())
def test_native_path_of_the_fp8_entry_point(case, faked):
    """The fp8 entry point's repeat calls launch natively too: the parameters Triton's launcher would pass (q
    scales, scale caches and the static q scale among them), outputs of their own dtypes (fp8 q, float32
    q_scales) in one allocation, the fp8 result type."""
    op = op_module.fused_qkv_split_qk_norm_rope_cache_fp8
    args, kwargs = make_inputs(case)
    op(**args, **kwargs)
    assert len(faked.checked) == 1 and native.loaded().size() == 1
    out = op(**args, **kwargs)
    assert len(faked.checked) == 1 and not faked.compiled.python_launches, "the second call must be native"
    assert type(out) is op_module.FusedQKVFp8Output
    _, _, _, params = native.loaded().last_recorded()
    assert list(params) == _expected_params(faked.checked[0], out)
    for name in ("k_scale_cache", "v_scale_cache", "q_scale"):
        if kwargs.get(name) is not None:
            assert kwargs[name].data_ptr() in params
    T, QH, D = case.T, case.QH, case.D
    q_dtype = getattr(torch, case.q_dtype) if case.q_fp8 else args["qkv"].dtype
    assert tuple(out.q.shape) == (T, QH, D) and out.q.dtype == q_dtype
    if case.q_fp8 == "dynamic":
        assert tuple(out.q_scales.shape) == (T, QH) and out.q_scales.dtype == torch.float32
    else:
        assert out.q_scales is None
    assert (out.gate is None) == (case.gate is None) and (out.k is None) == (not case.return_kv)
    present = [o for o in out if o is not None]
    assert all(o.dtype == args["qkv"].dtype for o in (out.gate, out.k, out.v) if o is not None)
    spans = sorted((o.data_ptr(), o.data_ptr() + o.numel() * o.element_size()) for o in present)
    assert all(o.is_contiguous() and (o.data_ptr() - out.q.data_ptr()) % 256 == 0 for o in present)
    assert all(end <= start for (_, end), (start, _) in zip(spans[:-1], spans[1:], strict=True))
    assert {o.untyped_storage().data_ptr() for o in present} == {out.q.untyped_storage().data_ptr()}
    if case.scale_cache == "none":  # the main entry point on the same tensors: another signature, checked first
        faked.compiled = None  # (its own compiled kernel)
        main_kwargs = {k: v for k, v in kwargs.items() if k not in ("q_dtype", "q_scale")}
        for _ in range(2):
            main_out = op_module.fused_qkv_split_qk_norm_rope_cache(**args, **main_kwargs)
        assert len(faked.checked) == 2 and not faked.compiled.python_launches
        assert type(main_out) is op_module.FusedQKVOutput and main_out.q.dtype == args["qkv"].dtype


def test_fp8_scale_caches_that_meet_another_array_take_the_checked_path(faked):
    """The scale caches are written: views of one buffer that are apart launch natively after the first call; the
    same metadata with the two scale caches on the same memory goes to the checked path, which rejects it."""
    op = op_module.fused_qkv_split_qk_norm_rope_cache_fp8
    args, kwargs = make_inputs(Case(T=5, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv"))
    shape = kwargs["k_scale_cache"].shape
    n = kwargs["k_scale_cache"].numel()
    buf = torch.rand(3 * n + 8)
    apart = dict(kwargs, k_scale_cache=buf[:n].view(shape), v_scale_cache=buf[2 * n:3 * n].view(shape))
    op(**args, **apart)
    op(**args, **apart)
    assert len(faked.checked) == 1 and not faked.compiled.python_launches
    with pytest.raises(ValueError, match="v_scale_cache must not overlap k_scale_cache"):
        op(**args, **dict(apart, v_scale_cache=buf[:n].view(shape)))
    with pytest.raises(ValueError, match="v_scale_cache must not overlap k_scale_cache"):
        op(**args, **dict(apart, v_scale_cache=buf[n // 2:n // 2 + n].view(shape)))
    op(**args, **dict(apart, v_scale_cache=buf[n:2 * n].view(shape)))  # adjacent, apart: native again
    assert len(faked.checked) == 1 and not faked.compiled.python_launches


def test_native_path_sends_what_it_does_not_cover_to_the_checked_path(faked):
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    case = Case(T=6, gate="blocked")
    args, kwargs = make_inputs(case)
    op(**args, **kwargs)
    op(**args, **kwargs)
    assert len(faked.checked) == 1

    def python_path_taken(call_args, call_kwargs):
        before = (len(faked.checked), len(faked.compiled.python_launches))
        op(**call_args, **call_kwargs)
        return (len(faked.checked), len(faked.compiled.python_launches)) != before

    base = torch.empty(args["positions"].numel() + 1, dtype=args["positions"].dtype)
    assert python_path_taken(dict(args, positions=base[1:]), kwargs)  # misaligned pointer
    assert python_path_taken(dict(args, qkv=args["qkv"].as_subclass(_Sub)), kwargs)  # a tensor subclass
    # errors only the checked path raises: the native path did not take these calls
    with pytest.raises(TypeError, match="is_neox must be a bool"):  # a value that compares equal to True
        op(**args, **dict(kwargs, is_neox=1))
    with pytest.raises(ValueError, match="must not overlap"):  # same metadata, caches now one array
        op(**dict(args, value_cache=args["key_cache"]), **kwargs)
    assert python_path_taken(args, dict(kwargs, eps=2e-6))  # another configuration: checked, then recorded
    assert not python_path_taken(args, dict(kwargs, eps=2e-6))
    assert not python_path_taken(args, kwargs)


class _Sub(torch.Tensor):
    pass


def _seeing(mode_base, hook):
    """A mode class (``mode_base``) that records the name of every op its ``hook`` method sees, then runs it."""

    def see(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def init(self):
        mode_base.__init__(self)
        self.ops = []

    return type(f"Seen{mode_base.__name__}", (mode_base,), {"__init__": init, hook: see})


_SeenDispatch = _seeing(torch.utils._python_dispatch.TorchDispatchMode, "__torch_dispatch__")
_SeenFunction = _seeing(torch.overrides.TorchFunctionMode, "__torch_function__")


@pytest.mark.parametrize("mode", [_SeenDispatch, _SeenFunction])
def test_calls_under_a_dispatch_or_function_mode_are_not_taken_natively(mode, faked):
    """A mode observes every op: the call must reach it through the registered op, not launch from C++."""
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    args, kwargs = make_inputs(Case(T=4))
    op(**args, **kwargs)
    before = len(faked.checked) + len(faked.compiled.python_launches)
    with mode() as seen:
        op(**args, **kwargs)
    assert any("split_qk_norm_rope_cache" in name for name in seen.ops), seen.ops
    assert len(faked.checked) + len(faked.compiled.python_launches) > before


def test_qkv_that_requires_grad_is_not_taken_natively(faked):
    """Autograd on the inputs: the public function sends such calls through the registered op (the Python path)."""
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    case = Case(T=3, dtype="float32", cache_dtype="float32")
    args, kwargs = make_inputs(case)
    op(**args, **kwargs)
    module = native.loaded()
    cfg = next(iter(fast_path._FAST))[1]  # the configuration values, as the public function passes them
    tensors = [args.get(n) for n in FAST_PATH_ARRAYS]  # this case has no offsets or scales: None
    assert module.call(cfg, *tensors) is not None
    tensors[0] = args["qkv"].clone().requires_grad_(True)
    assert module.call(cfg, *tensors) is None
    tensors[0] = args["qkv"].as_subclass(_Sub)
    assert module.call(cfg, *tensors) is None
    assert module.call(cfg[:-1] + (not cfg[-1],), *([args["qkv"]] + tensors[1:])) is None  # another config
    assert module.call((1,) + cfg[1:], *([args["qkv"]] + tensors[1:])) is None


def test_caches_in_one_allocation_run_the_exact_overlap_check_once_per_pointer_difference(faked):
    """Key and value caches interleaved in one allocation: their byte ranges meet. The checked path's exact
    check accepts a pointer difference once; the native path then takes calls with that difference only."""
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    case = dataclasses.replace(Case(T=5), cache_view=True)
    args, kwargs = make_inputs(case)
    for _ in range(3):
        op(**args, **kwargs)
    assert len(faked.checked) == 1 and not faked.compiled.python_launches
    _, _, _, params = native.loaded().last_recorded()
    assert args["key_cache"].data_ptr() in params and args["value_cache"].data_ptr() in params
    swapped = dict(args, key_cache=args["value_cache"], value_cache=args["key_cache"])  # same metadata, -difference
    for _ in range(3):
        op(**swapped, **kwargs)
    assert len(faked.checked) == 2 and not faked.compiled.python_launches


def test_result_type_must_be_a_plain_tuple_subclass():
    module = native.load(warn=False)
    with pytest.raises(TypeError, match="tuple subclass"):
        module.set_result_type(list)
    with pytest.raises(TypeError, match="tuple subclass"):
        module.set_result_type(type("WithDict", (tuple,), {}))  # instances would need a __dict__


_EXIT_SCRIPT = """
import torch
from fused_qkv.torch_api import native
module = native.load(warn=False)
cfg = tuple([float(n) for n in range(3)])  # owned by the entry alone once this script drops it
module.add(cfg, (torch.ones(4),) + (None,) * 11, (0,) * 6, ((4,), None, None, None), (torch.float32,) + (None,) * 3,
           0, 0, 0, 0, ())
del cfg
assert module.size() == 1
print("recorded")
"""


def test_a_process_with_recorded_signatures_exits_cleanly():
    """Recorded entries own Python references; the interpreter must not be asked to release them after it has
    finalised (that aborted every process that had used the native path)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout.strip()) == (0, "recorded"), proc.stderr[-2000:]


def test_status_and_switch(monkeypatch):
    assert native.enabled()
    monkeypatch.setenv("FUSED_QKV_NATIVE", "0")
    assert not native.enabled()


def test_the_tools_record_the_python_fast_path_launch(faked, monkeypatch):
    """``tools/lab.py``'s ``recorded_launch`` (used by host_profile and ptx_jit) records what the Python fast path
    hands Triton's launcher, with the native launcher skipped: the checked call's arguments, this call's outputs."""
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parent.parent / "tools"))
    from lab import recorded_launch

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 123, raising=False)
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    args, kwargs = make_inputs(Case(T=4, gate="interleaved"))
    entry, launched, out = recorded_launch(lambda: op(**args, **kwargs))
    assert len(faked.checked) == 1 and not faked.compiled.python_launches  # the second call: Python fast path
    assert launched[3:5] == (123, faked.compiled.function)
    expect = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in faked.checked[0]]
    from fused_qkv.core import INPUT_NAMES, SCALAR_NAMES

    n = len(INPUT_NAMES) + len(SCALAR_NAMES)
    assert list(launched[9:9 + n]) == expect[:n]  # inputs and scalars
    assert list(launched[9 + n:9 + n + 4]) == [out.q.data_ptr(), out.gate.data_ptr(), out.k.data_ptr(),
                                               out.v.data_ptr()]


def test_build_announces_its_start_and_duration_on_stderr(tmp_path, monkeypatch, capfd):
    """The first eager call never stalls silently: the build says when it starts and how long it took (a stand-in
    compiler that only writes its output keeps this fast)."""
    fake = tmp_path / "fake-cxx"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done; echo built > "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    native.build(tmp_path / "lib.so")
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("fused_qkv: building the native eager launcher with") and str(fake) in err[0]
    assert re.fullmatch(r"fused_qkv: native eager launcher built in \d+\.\d s", err[1]), err[1]
    assert (tmp_path / "lib.so").read_text() == "built\n"


def test_without_a_compiler_the_op_warns_once_and_launches_from_python(tmp_path, monkeypatch):
    """No C++ compiler (nothing cached either): the first eager CUDA call warns once, naming the reason; it and
    every later call take the Python launch path, the second one its fast path."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FUSED_QKV_CACHE_DIR", str(tmp_path))
    native.reset()
    try:
        rec = next(_fake_cuda(monkeypatch))
        monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
        args, kwargs = make_inputs(Case(T=4))
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as warned:
            first = op_module.fused_qkv_split_qk_norm_rope_cache(**args, **kwargs)
        assert len(warned) == 1 and native.loaded() is None
        assert native.status().startswith("unavailable: no C++ compiler") and "no-such-compiler" in native.status()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            second = op_module.fused_qkv_split_qk_norm_rope_cache(**args, **kwargs)
        assert len(rec.checked) == 1 and len(rec.compiled.python_launches) == 1  # checked once, then fast path
        assert second.q.shape == first.q.shape == (4, 4, 64)
    finally:
        op_module.clear_caches()
        native.reset()


def test_build_native_command_reports_why_it_cannot_build(tmp_path, monkeypatch, capsys):
    from fused_qkv.bench.cli import main

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FUSED_QKV_CACHE_DIR", str(tmp_path))
    native.reset()
    try:
        assert main(["build-native"]) == 1
    finally:
        native.reset()
    err = capsys.readouterr().err
    assert err.startswith("fused-qkv build-native: not built: unavailable: no C++ compiler") and err.count("\n") == 1


def test_build_native_command_builds_or_finds_the_library(capsys):
    from fused_qkv.bench.cli import main

    native.reset()
    assert main(["build-native"]) == 0, capsys.readouterr().err
    assert native.loaded() is not None and str(native.library_path()) in capsys.readouterr().out


_PAGE = (6, 4, 2, 64)  # the caches of Case(): num_blocks, block_size, KVH, D
_PAGE_STRIDES = (512, 128, 64, 1)


@st.composite
def _layouts(draw):
    """qkv and the two caches as views of one buffer (element offsets, 16-byte aligned): either three contiguous
    views placed anywhere, or K|V packed as ``both[:, 0]`` / ``both[:, 1]`` of one [num_blocks, 2, ...] block with
    the V view shifted by up to half a block either way (legal exactly when no element is shared)."""
    offset = st.builds(lambda block, jitter: block * 1024 + jitter, st.integers(0, 12), st.sampled_from((0, 8, 1016)))
    qkv_at = draw(offset)
    if draw(st.booleans()):
        return qkv_at, (draw(offset), _PAGE_STRIDES), (draw(offset), _PAGE_STRIDES)
    packed = (1024, 128, 64, 1)  # strides of both[:, 0] in a [6, 2, 4, 2, 64] block
    base = draw(offset)
    shift = draw(st.one_of(st.just(0), st.integers(-32, 32))) * 8  # 0: the legal packing
    return qkv_at, (base, packed), (base + 512 + shift, packed)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=_layouts())
def test_the_fast_paths_reuse_exactly_the_python_overlap_verdict(faked, layout, monkeypatch):
    """The one overlap rule is ``plan.check_overlaps``; the native launcher and ``_FastLaunch`` only remember its
    verdict per pointer difference. On fuzzed views of one buffer (K|V packed views among them): neither takes a call
    the rule rejects; after the checked path accepted one, both take its repeats."""
    from fused_qkv.core import ArrayInfo, OpConfig
    from fused_qkv.core.config import FIELDS
    from fused_qkv.core.plan import check_overlaps

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    args, kwargs = make_inputs(Case(T=4))
    op = op_module.fused_qkv_split_qk_norm_rope_cache
    op(**args, **kwargs)  # separate tensors: records the plain signature
    buf = torch.randn(20 * 1024).to(torch.bfloat16)
    qkv_at, (k_at, k_strides), (v_at, v_strides) = layout
    views = dict(qkv=buf.as_strided(args["qkv"].shape, args["qkv"].stride(), qkv_at),
                 key_cache=buf.as_strided(_PAGE, k_strides, k_at), value_cache=buf.as_strided(_PAGE, v_strides, v_at))
    call_args = dict(args, **views)
    infos = [ArrayInfo(tuple(t.shape), tuple(t.stride()), "bfloat16", "cpu", t.data_ptr()) for t in views.values()]
    try:
        check_overlaps(*infos)
        legal = True
    except ValueError:
        legal = False
    # as the public function passes Case()'s: every field but the fp8 entry point's q_dtype
    values = tuple(getattr(OpConfig(4, 2, 64), f) for f in FIELDS[:FIELDS.index("q_dtype")])
    tensors = [call_args.get(n) for n in FAST_PATH_ARRAYS]
    key = fast_path.signature_key(values, tuple(tensors))
    entry = fast_path._FAST.get(key)  # None for the packed layout's first draw
    for taken in (native.loaded().call(values, *tensors), entry and entry(*tensors)):
        assert taken is None or legal, layout
    if not legal:
        with pytest.raises(ValueError, match="must not overlap"):
            op(**call_args, **kwargs)
        return
    op(**call_args, **kwargs)  # the checked path (or a fast path, where it already knew) accepts it
    assert native.loaded().call(values, *tensors) is not None
    assert fast_path._FAST[key](*tensors) is not None
