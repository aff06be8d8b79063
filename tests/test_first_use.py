"""What a new user meets first: the version, the command line's answers to wrong input, the development index
checks and the JAX frontend's dtype errors."""

import importlib.metadata
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import DEVICE
from fused_qkv.bench import bench, cli
from helpers import Case, make_inputs, to_numpy


def test_version_comes_from_the_installed_metadata(capsys):
    import fused_qkv

    assert fused_qkv.__version__ == importlib.metadata.version("fused-qkv")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"fused-qkv {fused_qkv.__version__}\n"


BAD_DEVICES = ["cpu:0", "gpu", "cuda:99", "cuda:x", ""] + (["cuda", "cuda:0"] if DEVICE == "cpu" else [])


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_demo_answers_a_wrong_or_missing_device_with_one_line_and_exit_code_2(device, capsys):
    assert cli.main(["demo", "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith("fused-qkv demo: ") and "--device" in captured.err


def test_demo_device_error_from_the_installed_command_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "fused_qkv.bench.cli", "demo", "--device", "cuda:99"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.startswith("fused-qkv demo: --device cuda:99: ") and "Traceback" not in proc.stderr


def test_every_bench_option_has_help_and_shows_its_default(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    parser = bench.build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"shapes", "tokens", "out", "no_jax", "sweep", "sweep_stream"}
    for action in options:
        assert action.help, action.dest
        shown = " ".join(f"{action.help} (default: {action.default})".split())
        assert shown in text, shown


def test_bench_on_a_cpu_says_timing_needs_a_gpu_and_what_it_checked(capsys):
    assert bench.smoke() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "fused-qkv bench: timing needs a CUDA GPU and none is visible here, so nothing was timed."
    rows = {line.split()[0]: line for line in out[2:]}
    assert set(rows) == {"fused_torch", "fused_jax", "unfused_eager", "unfused_jax"}
    assert all(line.endswith("PASS") for line in rows.values()), rows


# --------------------------------------------------------------------------- development index checks
BAD_INDICES = [  # (what to break, the argument named, the message's start)
    ("position", "positions[2] = 40 is outside the rotary table's rows [0, 40)"),
    ("negative_position", "positions[2] = -1 is outside"),
    ("offset", "positions[2] + offsets[2] = 1 + 39 = 40 is outside"),
    ("slot", "slot_mapping[3] = 24 is >= num_blocks * block_size = 24"),
    ("negative_slot", "slot_mapping[3] = -2 is negative (only -1 is the padding slot)"),
]


def _break(what, args, kwargs):
    """The case's inputs with one index made bad (T=5 tokens, a 40-row table, 6 blocks of 4 slots)."""
    positions, slots = args["positions"].clone(), args["slot_mapping"].clone()
    slots[0] = -1  # padding: never an error
    if what == "position":
        positions[2] = 40
    elif what == "negative_position":
        positions[2] = -1
    elif what == "offset":
        positions[2] = 1
        kwargs["offsets"] = torch.zeros_like(positions)
        kwargs["offsets"][2] = 39
    elif what == "slot":
        slots[3] = 24
    elif what == "negative_slot":
        slots[3] = -2
    args["positions"], args["slot_mapping"] = positions, slots


def _inputs(what="none", device="cpu"):
    args, kwargs = make_inputs(Case(T=5), "cpu")
    _break(what, args, kwargs)
    if device != "cpu":
        args = {k: v.to(device) if v is not None else None for k, v in args.items()}
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return args, kwargs


@pytest.mark.parametrize("what,message", BAD_INDICES, ids=[b[0] for b in BAD_INDICES])
def test_torch_index_check_names_the_first_bad_index_before_anything_is_written(what, message):
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op

    args, kwargs = _inputs(what, DEVICE)
    before = args["key_cache"].clone(), args["value_cache"].clone()
    with pytest.raises(ValueError) as exc:
        op(**args, **kwargs, check_indices=True)
    assert str(exc.value).startswith(message), str(exc.value)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
               for a, b in zip(before, (args["key_cache"], args["value_cache"]), strict=True))
    op(**args, **kwargs)  # off by default: clamped / skipped as documented


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_the_environment_variable_is_read_at_import(value, on):
    proc = subprocess.run([sys.executable, "-c", "import fused_qkv.core.indices as i; print(i.CHECK_BY_DEFAULT)"],
                          env=dict(os.environ, FUSED_QKV_CHECK_INDICES=value), capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == str(on), proc.stderr


def test_index_check_follows_the_default_and_the_argument_wins(monkeypatch):
    from fused_qkv.core import indices
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op

    args, kwargs = _inputs("slot", DEVICE)
    monkeypatch.setattr(indices, "CHECK_BY_DEFAULT", True)  # what FUSED_QKV_CHECK_INDICES=1 sets at import
    with pytest.raises(ValueError, match=r"slot_mapping\[3\] = 24"):
        op(**args, **kwargs)
    op(**args, **kwargs, check_indices=False)
    good_args, good_kwargs = _inputs("none", DEVICE)
    op(**good_args, **good_kwargs)  # -1 padding and in-range indices pass
    with pytest.raises(TypeError, match="check_indices must be None or a bool, got str"):
        op(**good_args, **good_kwargs, check_indices="yes")


def _jax_inputs(what):
    args, kwargs = _inputs(what)
    jargs = {k: None if v is None else jnp.asarray(to_numpy(v)) for k, v in args.items()}
    jkw = {k: jnp.asarray(to_numpy(v)) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return jargs, jkw


@pytest.mark.parametrize("what,message", BAD_INDICES, ids=[b[0] for b in BAD_INDICES])
def test_jax_index_check_raises_on_concrete_arrays(what, message):
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as op

    jargs, jkw = _jax_inputs(what)
    with pytest.raises(ValueError) as exc:
        op(**jargs, **jkw, check_indices=True)
    assert str(exc.value).startswith(message), str(exc.value)


def test_jax_index_check_inside_jit_reports_through_the_runtime_error():
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as op

    jargs, jkw = _jax_inputs("offset")
    offsets = jkw.pop("offsets")
    step = jax.jit(lambda a, off: op(**a, offsets=off, **jkw, check_indices=True).key_cache)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"ValueError: positions\[2\] \+ offsets\[2\]"):
        jax.block_until_ready(step(jargs, offsets))
    good, good_kw = _jax_inputs("none")
    jax.block_until_ready(jax.jit(lambda a: op(**a, **good_kw, check_indices=True).key_cache)(good))


@pytest.mark.parametrize("frontend", ["torch", "jax"])
def test_index_checks_with_mrope_and_without_rope(frontend):
    """mRoPE: a bad entry of the [3, T] positions is named by row and token. NoPE: positions are not read, so
    they are not checked (None, or values past the missing table), and bad slots are still reported."""
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as jop
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as top

    def call(case, check=True, **change):
        args, kwargs = make_inputs(case, DEVICE if frontend == "torch" else "cpu")
        args.update(change)
        if frontend == "torch":
            return top(**args, **kwargs, check_indices=check)
        conv = lambda v: jnp.asarray(to_numpy(v)) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return jop(**{k: conv(v) for k, v in args.items()}, **{k: conv(v) for k, v in kwargs.items()},
                   check_indices=check)

    mrope = Case(T=5, mrope="interleaved", with_offsets=True, index_dtype="int32")
    args, _ = make_inputs(mrope, "cpu")
    bad = args["positions"].clone()
    bad[2, 3] = 10_000
    with pytest.raises(ValueError, match=r"^positions\[2, 3\] \+ offsets\[3\] = 10000 \+ \d+ = \d+ is outside"):
        call(mrope, positions=bad.to(DEVICE if frontend == "torch" else "cpu"))
    nope = Case(T=5, nope=True)
    call(nope)  # positions None
    far = torch.full((5,), 1000, dtype=torch.int64, device=DEVICE if frontend == "torch" else "cpu")
    call(nope, positions=far)  # given, not read: not an error
    slots = torch.tensor([0, 1, 2, 24, 3], device=DEVICE if frontend == "torch" else "cpu")
    with pytest.raises(ValueError, match=r"slot_mapping\[3\] = 24"):
        call(nope, positions=far, slot_mapping=slots)


# --------------------------------------------------------------------------- JAX dtypes under x64 off
@pytest.mark.parametrize("name", ["qkv", "cos", "q_weight", "k_scale"])
def test_jax_float64_input_is_reported_under_its_own_name(name, x64_off):
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache as op

    args, kwargs = make_inputs(Case(T=3, scale="tensor"), "cpu")
    jargs = {k: None if v is None else to_numpy(v) for k, v in args.items()}
    jkw = {k: to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    where = jargs if name in jargs else jkw
    where[name] = np.asarray(where[name], np.float64)
    with pytest.raises(TypeError, match=rf"^{name} has dtype float64, which JAX would silently turn into float32"):
        op(**jargs, **jkw)
