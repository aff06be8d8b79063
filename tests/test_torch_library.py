"""torch.library integration: opcheck, fake tensors, torch.compile(fullgraph=True)."""

import pytest
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
            kwargs["return_kv"], layer, kwargs.get("mrope_section"), kwargs.get("mrope_interleaved", False),
            kwargs.get("v_norm", False), kwargs.get("k_eq_v", False))


def test_opcheck():
    # opcheck compares values with torch ops that have no fp8 CPU kernels: fp8 numerics are tested elsewhere
    for case in (Case(), Case(gate="blocked", scale="head", return_kv=False, dtype="float16"),
                 Case(layers=2, layout="HND"), Case(mrope="interleaved", with_offsets=True, index_dtype="int32"),
                 Case(nope=True, k_eq_v=True, v_norm=True), Case(mrope="contiguous", v_norm=True, layers=2)):
        args, kwargs = make_inputs(case, DEVICE)
        torch.library.opcheck(OP, _positional(args, kwargs))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args, kwargs = make_inputs(Case(gate="interleaved", return_kv=False), DEVICE)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fargs = {k: mode.from_tensor(v) if v is not None else None for k, v in args.items()}
        q, gate, k, v = OP(*_positional(fargs, kwargs))
    assert q.shape == (7, 4, 64) and gate.shape == (7, 4, 64) and k.numel() == 0 and v.numel() == 0


@pytest.mark.parametrize("case", [Case(T=5, gate="interleaved", cache_dtype="float8_e4m3fn", scale="tensor"),
                                  Case(T=5, gate="blocked", mrope="interleaved", v_norm=True),
                                  Case(T=5, gate="interleaved", nope=True, k_eq_v=True, v_norm=True)],
                         ids=lambda c: c.id())
def test_torch_compile_fullgraph_matches_eager(case):
    """A small attention-prologue block compiled with fullgraph=True: no graph break, same outputs and caches
    (mRoPE with ``mrope_section`` as a list, and a NoPE layer with K = V, among them)."""
    from fused_qkv.torch_api import FusedQKVOutput

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


def test_compiled_attention_block_reads_the_paged_cache():
    """A small attention layer under torch.compile(fullgraph=True): projection, the op, attention over K/V read
    back from the paged cache, output projection. Matches eager, and attention on the oracle's q/k/v."""
    import torch.nn.functional as F
    from helpers import np64, oracle_for

    case = Case(T=6, QH=4, KVH=2, D=64, num_blocks=4, block_size=4)
    args, kwargs = make_inputs(case, DEVICE)
    gen = torch.Generator().manual_seed(1)
    hidden = 96
    x = torch.randn(case.T, hidden, generator=gen).to(torch.bfloat16).to(DEVICE)
    w_qkv = (torch.randn(hidden, case.width, generator=gen) / hidden**0.5).to(torch.bfloat16).to(DEVICE)
    w_o = (torch.randn(case.QH * case.D, hidden, generator=gen) / 16).to(torch.bfloat16).to(DEVICE)

    def layer(x, key_cache, value_cache):
        qkv = x @ w_qkv
        out = op(qkv, args["q_weight"], args["k_weight"], args["cos"], args["sin"], args["positions"], key_cache,
                 value_cache, args["slot_mapping"], **kwargs)
        k = key_cache.flatten(0, 1)[args["slot_mapping"]]  # [T, KVH, D] read back from the pages
        v = value_cache.flatten(0, 1)[args["slot_mapping"]]
        rep = case.QH // case.KVH
        attn = F.scaled_dot_product_attention(out.q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1),
                                              v.repeat_interleave(rep, 1).transpose(0, 1), is_causal=True)
        return attn.transpose(0, 1).reshape(case.T, -1) @ w_o, qkv

    kc_e, vc_e = args["key_cache"].clone(), args["value_cache"].clone()
    kc_c, vc_c = args["key_cache"].clone(), args["value_cache"].clone()
    eager, qkv = layer(x, kc_e, vc_e)
    compiled, _ = torch.compile(layer, fullgraph=True, dynamic=False)(x, kc_c, vc_c)
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(kc_c.view(torch.int16), kc_e.view(torch.int16))
    assert torch.equal(vc_c.view(torch.int16), vc_e.view(torch.int16))
    # reference: float64 attention on the oracle's q, k, v
    ref = oracle_for(case, dict(args, qkv=qkv), kwargs)
    q, k, v = (torch.from_numpy(a).transpose(0, 1) for a in (ref.q, ref.k, ref.v))
    rep = case.QH // case.KVH
    att = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0), is_causal=True)
    want = att.transpose(0, 1).reshape(case.T, -1) @ torch.from_numpy(np64(w_o))
    torch.testing.assert_close(np64(compiled), want.numpy(), rtol=3e-2, atol=3e-2)


def test_torch_compile_of_a_configuration_never_seen_eagerly():
    """The first call of a configuration may be a compiled one: validation then runs without the frontend's memo
    (dynamo cannot guard on its keys). A fresh eps and mRoPE section make the configuration new to this process."""
    from fused_qkv.torch_api import FusedQKVOutput

    case = Case(T=5, mrope="contiguous", section=(10, 12, 10), eps=3.25e-6, v_norm=True)
    args, kwargs = make_inputs(case, DEVICE)
    kc0, vc0 = args["key_cache"].cpu().clone(), args["value_cache"].cpu().clone()
    compiled = torch.compile(lambda a, k: tuple(op(**a, **k)), fullgraph=True, dynamic=False)
    got = compiled(args, kwargs)
    check_against_oracle(case, args, kwargs, FusedQKVOutput(*got), kc0, vc0, args["key_cache"], args["value_cache"])


FP8_OP = torch.ops.fused_qkv.split_qk_norm_rope_cache_fp8.default


def _positional_fp8(args, kwargs):
    q_dtype = kwargs.get("q_dtype")
    return _positional(args, kwargs) + (None if q_dtype is None else str(q_dtype).removeprefix("torch."),
                                        kwargs.get("q_scale"), kwargs.get("k_scale_cache"),
                                        kwargs.get("v_scale_cache"))


@pytest.mark.parametrize("case", [Case(q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv"),
                                  Case(q_fp8="static", layers=2, layout="HND", gate="blocked"),
                                  Case(cache_dtype="float8_e4m3fn", scale_cache="v", scale="tensor", nope=True)],
                         ids=lambda c: c.id())
def test_fp8_op_fake_and_registration(case):
    """The fp8 op's fake implementation and autograd registration on fp8 data (opcheck's schema test compares
    values with torch ops that have no fp8 CPU kernels: the values are checked against the oracle elsewhere)."""
    args, kwargs = make_inputs(case, DEVICE)
    torch.library.opcheck(FP8_OP, _positional_fp8(args, kwargs),
                          test_utils=("test_faketensor", "test_autograd_registration"))


def test_fp8_op_schema():
    """The scale caches are declared mutated (with the caches); without fp8 data opcheck's schema test runs."""
    schema = str(FP8_OP._schema)
    for name in ("key_cache", "value_cache"):
        assert "Tensor(a" in schema and f"!) {name}" in schema, schema
    for name in ("k_scale_cache", "v_scale_cache"):
        assert f"!)? {name}" in schema, schema
    args, kwargs = make_inputs(Case(gate="interleaved", scale="head"), DEVICE)
    torch.library.opcheck(FP8_OP, _positional_fp8(args, kwargs))


@pytest.mark.parametrize("case", [Case(T=5, q_fp8="dynamic", cache_dtype="float8_e4m3fn", scale_cache="kv",
                                       gate="interleaved"),
                                  Case(T=5, q_fp8="static", cache_dtype="float8_e4m3fn", scale_cache="k",
                                       mrope="interleaved", layers=2)],
                         ids=lambda c: c.id())
def test_fp8_torch_compile_fullgraph_matches_eager(case):
    """The fp8 entry point under torch.compile(fullgraph=True): one op, the same bits as eager in every output,
    cache and scale cache, and the oracle's values."""
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache_fp8 as op8
    from helpers import as_bytes

    def block(args, kwargs):
        out = op8(**args, **kwargs)
        return out.q, out.gate, out.k, out.v, out.q_scales

    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    a1, k1 = make_inputs(case, DEVICE)
    a2, k2 = make_inputs(case, DEVICE)
    kc0, vc0 = a2["key_cache"].cpu().clone(), a2["value_cache"].cpu().clone()
    scales0 = {n: k2[n].cpu().clone() for n in ("k_scale_cache", "v_scale_cache") if k2.get(n) is not None}
    eager, got = block(a1, k1), compiled(a2, k2)
    for e, g in zip(eager, got, strict=True):
        assert (e is None) == (g is None) and (e is None or torch.equal(as_bytes(e), as_bytes(g)))
    for name in ("key_cache", "value_cache"):
        assert torch.equal(as_bytes(a1[name]), as_bytes(a2[name])), name
    for name in scales0:
        assert torch.equal(as_bytes(k1[name]), as_bytes(k2[name])), name
    from fused_qkv.torch_api import FusedQKVFp8Output

    check_against_oracle(case, a2, k2, FusedQKVFp8Output(*got), kc0, vc0, a2["key_cache"], a2["value_cache"],
                         scales0, {n: k2[n] for n in scales0})
