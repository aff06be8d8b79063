"""torch.library integration: opcheck, fake tensors, torch.compile(fullgraph=True)."""

import torch
from conftest import DEVICE
from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache as op
from helpers import Case, check_against_oracle, make_inputs

OP = torch.ops.fused_qkv.split_qk_norm_rope_cache.default


def _positional(args, kwargs):
    layer = kwargs.get("layer")
    return (args["qkv"], args["q_weight"], args["k_weight"], args["cos"], args["sin"], args["positions"],
            args["key_cache"], args["value_cache"], args["slot_mapping"], kwargs["num_q_heads"],
            kwargs["num_kv_heads"], kwargs["head_dim"], kwargs["eps"], kwargs["norm_weight_offset"],
            kwargs["is_neox"], kwargs["rotary_dim"], kwargs["offsets"], kwargs["attn_output_gate"],
            kwargs["gated_qkv_layout"], kwargs["k_scale"], kwargs["v_scale"], kwargs["kv_cache_layout"],
            kwargs["return_kv"], layer)


def test_opcheck():
    # opcheck compares values with torch ops that have no fp8 CPU kernels: fp8 numerics are tested elsewhere
    for case in (Case(), Case(gate="blocked", scale="head", return_kv=False, dtype="float16"),
                 Case(layers=2, layout="HND")):
        args, kwargs = make_inputs(case, DEVICE)
        torch.library.opcheck(OP, _positional(args, kwargs))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args, kwargs = make_inputs(Case(gate="interleaved", return_kv=False), DEVICE)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fargs = {k: mode.from_tensor(v) if v is not None else None for k, v in args.items()}
        q, gate, k, v = OP(*_positional(fargs, kwargs))
    assert q.shape == (7, 4, 64) and gate.shape == (7, 4, 64) and k.numel() == 0 and v.numel() == 0


def test_torch_compile_fullgraph_matches_eager():
    """A small attention-prologue block compiled with fullgraph=True: no graph break, same outputs and caches."""
    from fused_qkv.torch_api import FusedQKVOutput

    case = Case(T=5, gate="interleaved", cache_dtype="float8_e4m3fn", scale="tensor")

    def block(args, kwargs):
        out = op(**args, **kwargs)
        return out.q, out.gate, out.k, out.v, out.q * out.gate.sigmoid() + 1.0

    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    a1, k1 = make_inputs(case, DEVICE)
    a2, k2 = make_inputs(case, DEVICE)
    kc0, vc0 = a2["key_cache"].cpu().clone(), a2["value_cache"].cpu().clone()
    eager = block(a1, k1)
    got = compiled(a2, k2)
    for e, g in zip(eager[:4], got[:4], strict=True):
        assert torch.equal(e, g)
    torch.testing.assert_close(eager[4], got[4], rtol=1e-2, atol=1e-2)  # inductor fuses the epilogue in fp32
    assert torch.equal(a1["key_cache"].view(torch.uint8), a2["key_cache"].view(torch.uint8))
    assert torch.equal(a1["value_cache"].view(torch.uint8), a2["value_cache"].view(torch.uint8))
    check_against_oracle(case, a2, k2, FusedQKVOutput(*got[:4]), kc0, vc0, a2["key_cache"], a2["value_cache"])
