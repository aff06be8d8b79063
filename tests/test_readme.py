"""The README's quick start is what CI runs, and its claims match the code."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quick_start_has_exactly_two_commands_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert len(commands) == 2
    assert "fused-qkv demo" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "&& fused-qkv demo" in ci and "&& python -m pytest" in ci


def test_readme_names_the_public_signature():
    import inspect

    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache

    readme = (ROOT / "README.md").read_text()
    for name in inspect.signature(fused_qkv_split_qk_norm_rope_cache).parameters:
        assert f"`{name}`" in readme, name


def _python_block(after: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(after, 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_torch_example_runs_as_written_on_this_machine():
    import torch

    code = _python_block("## Use from PyTorch")
    scope = {}
    exec(compile(code, "README.md (torch example)", "exec"), scope)
    assert scope["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert scope["q"].device.type == scope["device"]
    assert scope["q"].shape == (4, 32, 128) and scope["k"].shape == (4, 8, 128)
    kc = scope["key_cache"]
    assert kc[2, :4].float().abs().sum() > 0 and kc[3:].float().abs().sum() == 0  # slots 32..35 = block 2


def test_jax_example_runs():
    code = _python_block("## Use from JAX")
    scope = {}
    exec(compile(code, "README.md (JAX example)", "exec"), scope)
    kc = scope["key_cache"]
    assert scope["qs"].shape == (4, 1, 32, 128)
    assert float(abs(kc[:, 0, :3].astype("float32")).sum()) > 0  # slots 0..2 written in every layer
    assert float(abs(kc[:, 1:].astype("float32")).sum()) == 0


def test_transformers_example_runs():
    code = _python_block("## Real models (Hugging Face transformers)")
    scope = {}
    exec(compile(code, "README.md (transformers example)", "exec"), scope)
    assert scope["q"].shape == (5, 4, 64) and scope["gate"].shape == (5, 4, 64)
    kc = scope["key_cache"]
    assert kc[1, :5].abs().sum() > 0 and kc[1, 5:].abs().sum() == 0 and kc[0].abs().sum() == 0
