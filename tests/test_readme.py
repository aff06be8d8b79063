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
