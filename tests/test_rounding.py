"""The kernel's own rounding: every stored value is the correctly rounded one, bit for bit.

Triton's interpreter truncates fp32->bf16 and drops the carry of fp32->fp8 rounding at
binade edges (1.95 -> 1.0); the kernel therefore rounds explicitly and casts only exact
values. These inputs sit on the edges that would expose either problem.
"""

import numpy as np
import pytest
import torch
from conftest import DEVICE, FP8_ON_DEVICE
from fused_qkv.core import format_quantum, round_to_format
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
from helpers import TORCH_DTYPES

EDGES = [1.95, 1.9375, 1.8125, 447.0, 449.0, 464.0, 500.0, 1e6, 239.0, 241.0, 2.0**-9, 0.75 * 2.0**-9,
         0.4 * 2.0**-9, 2.0**-10, 3 * 2.0**-11, 57343.0, 61440.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 0.1, -0.1,
         -1.95, -500.0, -1e-30, 3.0, 1.0]


@pytest.mark.parametrize("cache_dtype", FP8_ON_DEVICE)
def test_fp8_value_cache_rounding_is_exact(cache_dtype):
    """V from an fp32 input: the fp8 cache holds round(v / v_scale) bit for bit (saturated, ties to even)."""
    D = 32
    vals = torch.tensor((EDGES * 2)[:D], dtype=torch.float64)
    T = 2
    qkv = torch.randn(T, 3 * D, dtype=torch.float32)
    qkv[0, 2 * D:] = vals.float()
    qkv[1, 2 * D:] = -vals.float()
    cos, sin = torch.ones(1, D // 2), torch.zeros(1, D // 2)
    cdt = TORCH_DTYPES[cache_dtype]
    for scale in (1.0, 0.5):  # powers of two: v / scale is exact in fp32
        kc = torch.zeros(1, 2, 1, D, dtype=cdt, device=DEVICE)
        vc = torch.zeros(1, 2, 1, D, dtype=cdt, device=DEVICE)
        op(qkv.to(DEVICE), None, None, cos.to(DEVICE), sin.to(DEVICE), torch.zeros(T, dtype=torch.int64,
           device=DEVICE), kc, vc, torch.tensor([0, 1], device=DEVICE), num_q_heads=1, num_kv_heads=1,
           head_dim=D, v_scale=torch.tensor([scale], device=DEVICE))
        got = vc[0, :, 0].cpu().double().numpy()
        want = round_to_format(qkv[:, 2 * D:].double().numpy() / scale, cache_dtype)
        np.testing.assert_array_equal(got, want, err_msg=f"{cache_dtype} scale {scale}")
        # the bits too: a result that rounds to zero keeps its input's sign, as the hardware casts give, except
        # in e4m3fnuz, which has no -0 (its code 0x80 is NaN): there it is +0
        inputs = qkv[:, 2 * D:].double().numpy()
        zero = 0.0 if cache_dtype == "float8_e4m3fnuz" else np.copysign(0.0, inputs)
        want_bits = torch.from_numpy(np.where(want == 0.0, zero, want)).to(cdt).view(torch.uint8)
        assert cache_dtype == "float8_e4m3fnuz" or (want_bits == 0x80).any()
        assert (want == 0.0).any() and (qkv[:, 2 * D:] < 0).any()
        torch.testing.assert_close(vc[0, :, 0].view(torch.uint8).cpu(), want_bits, rtol=0, atol=0,
                                   msg=f"{cache_dtype} scale {scale}: stored bits")


def test_bf16_outputs_round_to_nearest_even():
    """q in bf16 is the fp32 result rounded to nearest (the interpreter's own cast would truncate)."""
    D, T = 16, 256
    gen = torch.Generator().manual_seed(0)
    qkv = (torch.randn(T, 3 * D, generator=gen) * 3).to(torch.bfloat16)
    ang = torch.rand(T, D // 2, generator=gen) * 6
    cos, sin = ang.cos(), ang.sin()
    kc = torch.zeros(1, T, 1, D, dtype=torch.bfloat16, device=DEVICE)
    vc = torch.zeros_like(kc)
    out = op(qkv.to(DEVICE), None, None, cos.to(DEVICE), sin.to(DEVICE), torch.arange(T, device=DEVICE), kc, vc,
             torch.arange(T, device=DEVICE), num_q_heads=1, num_kv_heads=1, head_dim=D)
    x, c, s = qkv[:, :D].double(), cos.double(), sin.double()
    exact = torch.cat([x[:, :8] * c - x[:, 8:] * s, x[:, 8:] * c + x[:, :8] * s], 1).numpy()
    got = out.q[:, 0].cpu().double().numpy()
    nearest = round_to_format(exact, "bfloat16")
    q = format_quantum(exact, "bfloat16")
    frac = np.abs(exact) / q - np.floor(np.abs(exact) / q)
    near_tie = np.abs(frac - 0.5) * q < 2.0**-20 * np.abs(exact)  # fp32 noise may decide these
    assert (got == nearest)[~near_tie].all()
    truncated = np.sign(exact) * np.floor(np.abs(exact) / q) * q
    assert (truncated != nearest).mean() > 0.3  # the check has teeth: truncation would fail it
