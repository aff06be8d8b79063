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


def test_vl_and_gemma4_example_runs_and_matches_the_oracle():
    import numpy as np
    from fused_qkv.core import reference, rounding_error

    code = _python_block("## Vision-language models, Gemma 4 and NoPE layers")
    scope = {}
    exec(compile(code, "README.md (VL / Gemma 4 example)", "exec"), scope)
    f64 = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    s = scope
    common = dict(num_cache_slots=32, key_cache_dtype="bfloat16", value_cache_dtype="bfloat16")
    vl = reference(f64(s["qkv"]), f64(s["norm_w"]), f64(s["norm_w"]), f64(s["cos"]), f64(s["sin"]),
                   f64(s["positions"]).astype(np.int64), np.arange(6), num_q_heads=4, num_kv_heads=2, head_dim=128,
                   mrope_section=(24, 20, 20), mrope_interleaved=True, **common)
    g4 = reference(f64(s["qkv4"]), f64(s["w4"]), f64(s["w4"]), f64(s["cos4"]), f64(s["sin4"]), np.arange(6),
                   np.arange(16, 22), num_q_heads=4, num_kv_heads=1, head_dim=512, k_eq_v=True, v_norm=True, **common)
    for name, got, exact in (("q", s["q"], vl.q), ("k", s["k"], vl.k), ("key_cache", s["key_cache"][0, :6], vl.k),
                             ("q4", s["q4"], g4.q), ("k4", s["k4"], g4.k), ("v4", s["v4"], g4.v),
                             ("g4 value_cache", s["g4_value_cache"][1, :6], g4.v)):
        assert rounding_error(f64(got), exact, "bfloat16")[0] <= 1.0, name
    assert s["gate"] is None
    kc = s["key_cache"]
    assert kc[0, 6:].float().abs().sum() == 0 and kc[1].float().abs().sum() == 0
    # the image patches' height/width rows matter: the temporal row alone gives another q
    plain = reference(f64(s["qkv"]), f64(s["norm_w"]), f64(s["norm_w"]), f64(s["cos"]), f64(s["sin"]),
                      f64(s["positions"][0]).astype(np.int64), np.arange(6), num_q_heads=4, num_kv_heads=2,
                      head_dim=128, **common)
    assert not np.allclose(plain.q[2:], vl.q[2:]) and np.allclose(plain.q[:2], vl.q[:2])


def test_fp8_example_runs_and_matches_the_oracle():
    """The fp8 section's snippet: fp8 q with dynamic per-token-head scales and per-token-head K/V scale caches,
    against the float64 oracle on the same inputs."""
    import numpy as np
    from fused_qkv.core import reference
    from helpers import assert_rounded, assert_scales, np64

    code = _python_block("## FP8 attention")
    scope = {}
    exec(compile(code, "README.md (fp8 example)", "exec"), scope)
    T, QH, KVH, D = (scope[n] for n in ("T", "QH", "KVH", "D"))
    ang = scope["ang8"]
    ref = reference(np64(scope["qkv8"]), np64(scope["w8"]), np64(scope["w8"]), np64(ang.cos()), np64(ang.sin()),
                    np.arange(T), np.arange(T), num_q_heads=QH, num_kv_heads=KVH, head_dim=D, num_cache_slots=64,
                    key_cache_dtype="float8_e4m3fn", value_cache_dtype="float8_e4m3fn", q_dtype="float8_e4m3fn",
                    k_scale_cache=True, v_scale_cache=True)
    assert_rounded(np64(scope["q8"]), ref.exact_q, "float8_e4m3fn", "q")
    assert_scales(np64(scope["q8_scales"]), ref.q_scales, "q_scales")
    assert_scales(np64(scope["k_scales"][0, :T]), ref.key_scales, "k_scale_cache")
    assert_rounded(np64(scope["fp8_value_cache"][0, :T]), ref.exact_value_cache, "float8_e4m3fn", "value_cache")
    k0 = np64(scope["k_token0"])
    assert np.allclose(k0, ref.k[0], rtol=2.0**-3, atol=1e-6)  # dequantised within e4m3's precision


def test_readme_names_the_fp8_signature():
    import inspect

    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache, fused_qkv_split_qk_norm_rope_cache_fp8

    readme = (ROOT / "README.md").read_text()
    main = set(inspect.signature(fused_qkv_split_qk_norm_rope_cache).parameters)
    for name in set(inspect.signature(fused_qkv_split_qk_norm_rope_cache_fp8).parameters) - main:
        assert f"`{name}`" in readme, name
