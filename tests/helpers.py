"""Shared test machinery: build a case, run a frontend, check it against the float64 oracle.

Checks (``check_against_oracle``):
- every element of q, k (and of every addressed cache entry, dequantised) is the float64
  oracle value correctly rounded to its storage dtype: ``|x - exact| <= ulp(exact)/2 + delta``,
  ``delta = 2**-16 * max|exact|`` covering the kernel's fp32 arithmetic (orders of magnitude
  below half an ulp of bf16/fp16/fp8). For fp8 the exact value is first saturated.
- gate and v are bit-exact copies of their qkv columns (v with ``v_norm``: correctly rounded like q and k);
- every cache slot that no token addresses is bit-identical to the poison written before.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
from fused_qkv.core import reference, rounding_error

TORCH_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
}


@dataclasses.dataclass(frozen=True)
class Case:
    T: int = 7
    QH: int = 4
    KVH: int = 2
    D: int = 64
    dtype: str = "bfloat16"
    eps: float = 1e-6
    offset: float = 0.0  # norm_weight_offset
    is_neox: bool = True
    rotary_dim: Optional[int] = None
    table: str = "half"  # half | full | vllm_view
    table_dtype: str = "float32"
    with_offsets: bool = False
    gate: Optional[str] = None  # None | interleaved | blocked
    layout: str = "NHD"
    cache_dtype: Optional[str] = None  # None: the input dtype
    scale: str = "none"  # none | tensor | head
    slots: str = "random"  # random | negative | out_of_range | short | boundary
    index_dtype: str = "int64"
    row_pad: int = 0  # extra columns per qkv row (strided rows)
    block_size: int = 4
    num_blocks: int = 6
    q_norm: bool = True
    k_norm: bool = True
    return_kv: bool = True
    layers: Optional[int] = None  # caches [L, ...] with layer=L-1
    cache_view: bool = False  # caches are views into one [num_blocks, 2, ...] allocation
    qkv_scale: float = 1.0  # magnitude of qkv values
    pos_out_of_range: bool = False
    max_positions: int = 40
    nope: bool = False  # cos = sin = positions = None: no rotation
    mrope: Optional[str] = None  # None | contiguous | interleaved: positions [3, T]
    section: Optional[tuple] = None  # mrope_section; default: see mrope_section below
    mrope_rows: str = "random"  # random | equal (all three rows the same) | view (a transposed [T, 3] array)
    v_norm: bool = False
    k_eq_v: bool = False
    # fp8 attention (the ``..._fp8`` entry points): q_fp8 None | static | dynamic; scale_cache none | k | v | kv
    q_fp8: Optional[str] = None
    q_dtype: str = "float8_e4m3fn"
    scale_cache: str = "none"
    zero_heads: bool = False  # token 1's first Q head, token 2's first K head, token 3's last V head are all zero
    seed: int = 0

    @property
    def R(self):
        return self.D if self.rotary_dim is None else self.rotary_dim

    @property
    def width(self):
        return (self.QH * (2 if self.gate else 1) + (1 if self.k_eq_v else 2) * self.KVH) * self.D

    @property
    def fp8_entry(self) -> bool:
        """Whether the case goes through the fp8 entry points."""
        return self.q_fp8 is not None or self.scale_cache != "none"

    @property
    def mrope_section(self):
        """The case's (t, h, w): given, or the proportions of Qwen2.5-VL (16, 24, 24) / Qwen3-VL (24, 20, 20)."""
        if self.mrope is None or self.section is not None:
            return self.section
        half = self.R // 2
        if self.mrope == "contiguous":
            t = half // 4
            return (t, (half - t) // 2, half - t - (half - t) // 2)
        h = 5 * half // 16
        return (half - 2 * h, h, h)

    def id(self):
        default = Case()
        return "-".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != getattr(default, f.name)) or "default"


def rope_tables(case: Case, gen: torch.Generator):
    """cos/sin tables in the case's format, from random-ish frequencies (never all zero)."""
    half = case.R // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) * 2 / case.R))
    ang = torch.arange(case.max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    ang = ang + torch.rand(ang.shape, generator=gen, dtype=torch.float64) * 0.1  # break symmetry
    cos, sin = ang.cos(), ang.sin()
    tdt = TORCH_DTYPES[case.table_dtype]
    if case.table == "half":
        return cos.to(tdt), sin.to(tdt)
    if case.table == "full":
        if case.is_neox:
            return torch.cat([cos, cos], -1).to(tdt), torch.cat([sin, sin], -1).to(tdt)
        return cos.repeat_interleave(2, -1).to(tdt), sin.repeat_interleave(2, -1).to(tdt)
    if case.table == "vllm_view":  # one [P, R] cache: cos in the first half, sin in the second
        cache = torch.cat([cos, sin], -1).to(tdt)
        return cache[:, :half], cache[:, half:]
    raise ValueError(case.table)


def poison(shape, dtype, gen):
    """Random bytes (NaNs included for fp8): untouched slots are compared bit for bit."""
    nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (nbytes,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def make_inputs(case: Case, device="cpu"):
    gen = torch.Generator().manual_seed(case.seed)
    dt = TORCH_DTYPES[case.dtype]
    T, QH, KVH, D = case.T, case.QH, case.KVH, case.D
    full = torch.randn(T, case.width + case.row_pad, generator=gen, dtype=torch.float64) * case.qkv_scale
    full = full + 0.25  # nonzero mean: a missing norm or offset shows
    if case.zero_heads:  # heads whose dynamic scale is the floor: each must come out as zeros, not NaN or saturated
        k_col0 = QH * D * (2 if case.gate else 1)
        v_col0 = k_col0 + (0 if case.k_eq_v else KVH * D)
        full[1 % T, :D] = 0.0  # Q head 0 starts at column 0 in every gate layout
        full[2 % T, k_col0:k_col0 + D] = 0.0
        full[3 % T, v_col0 + (KVH - 1) * D:v_col0 + KVH * D] = 0.0
    qkv = full.to(dt)[:, :case.width]
    if case.offset == 1.0:  # zero-centred gamma: small weights around 0
        wq = torch.randn(D, generator=gen, dtype=torch.float64) * 0.3
        wk = torch.randn(D, generator=gen, dtype=torch.float64) * 0.3
    else:
        wq = torch.rand(D, generator=gen, dtype=torch.float64) + 0.5
        wk = torch.rand(D, generator=gen, dtype=torch.float64) + 0.5
    q_weight = wq.to(dt) if case.q_norm else None
    k_weight = wk.to(dt) if case.k_norm else None
    cos, sin = rope_tables(case, gen)
    idt = getattr(torch, case.index_dtype)
    lo, hi = (-15, case.max_positions + 15) if case.pos_out_of_range else (0, case.max_positions)
    if case.with_offsets:
        positions = torch.randint(lo, hi // 2, (T,), generator=gen).to(idt)
        offsets = torch.randint(0, hi // 2, (T,), generator=gen).to(idt)
    else:
        positions = torch.randint(lo, hi, (T,), generator=gen).to(idt)
        offsets = None
    if case.mrope is not None:  # rows: temporal, height, width
        rows = torch.randint(lo, hi // 2 if case.with_offsets else hi, (3, T), generator=gen).to(idt)
        if case.mrope_rows == "equal":
            rows = positions.expand(3, T).clone()
        elif case.mrope_rows == "view":
            rows = rows.T.contiguous().T  # strides (1, 3)
        positions = rows
    if case.nope:
        cos = sin = positions = None

    n_slots = case.num_blocks * case.block_size
    perm = torch.randperm(n_slots, generator=gen)
    if T > n_slots:
        raise ValueError("case has more tokens than cache slots")
    slots = perm[:T].clone()
    if case.slots == "negative":
        slots[::3] = -1
        slots[1:2] = -7
    elif case.slots == "out_of_range":
        slots[::2] = n_slots + torch.arange(len(slots[::2]))  # n_slots, n_slots+1, ...
        slots[-1] = 2**40 if case.index_dtype == "int64" else 2**31 - 1
    elif case.slots == "short":
        slots = slots[: max(1, T // 2)]
    elif case.slots == "boundary":  # first and last slot of blocks
        b = torch.randperm(case.num_blocks, generator=gen)
        cand = torch.stack([b * case.block_size, b * case.block_size + case.block_size - 1], 1).reshape(-1)
        slots = cand[:T].clone()
    slot_mapping = slots.to(idt)

    cdt = TORCH_DTYPES[case.cache_dtype or case.dtype]
    if case.layout == "NHD":
        page = (case.num_blocks, case.block_size, KVH, D)
    else:
        page = (case.num_blocks, KVH, case.block_size, D)
    if case.cache_view:
        both = poison((case.num_blocks, 2) + page[1:], cdt, gen)
        key_cache, value_cache = both[:, 0], both[:, 1]
    elif case.layers:
        key_cache = poison((case.layers,) + page, cdt, gen)
        value_cache = poison((case.layers,) + page, cdt, gen)
    else:
        key_cache, value_cache = poison(page, cdt, gen), poison(page, cdt, gen)

    k_scale = v_scale = None
    if case.scale == "tensor":
        k_scale = torch.tensor([0.37], dtype=torch.float32)
        v_scale = torch.tensor([1.9], dtype=torch.float32)
    elif case.scale == "head":
        k_scale = (torch.rand(KVH, generator=gen) + 0.2).float()
        v_scale = (torch.rand(KVH, generator=gen) * 2 + 0.2).float()

    args = dict(qkv=qkv, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, positions=positions,
                key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)
    kwargs = dict(num_q_heads=QH, num_kv_heads=KVH, head_dim=D, eps=case.eps, norm_weight_offset=case.offset,
                  is_neox=case.is_neox, rotary_dim=case.rotary_dim, offsets=offsets,
                  attn_output_gate=case.gate is not None, gated_qkv_layout=case.gate or "interleaved",
                  k_scale=k_scale, v_scale=v_scale, kv_cache_layout=case.layout, return_kv=case.return_kv)
    for name, value in (("mrope_section", case.mrope_section), ("mrope_interleaved", case.mrope == "interleaved"),
                        ("v_norm", case.v_norm), ("k_eq_v", case.k_eq_v)):
        if value:  # only options a case uses are passed (keeps the signature's defaults under test too)
            kwargs[name] = list(value) if name == "mrope_section" else value
    if case.q_fp8 is not None:
        kwargs["q_dtype"] = TORCH_DTYPES[case.q_dtype]
        if case.q_fp8 == "static":
            kwargs["q_scale"] = torch.tensor([0.013], dtype=torch.float32)
    for letter, name, cache in (("k", "k_scale_cache", key_cache), ("v", "v_scale_cache", value_cache)):
        if letter in case.scale_cache:
            kwargs[name] = poison(cache.shape[:-1], torch.float32, gen)
            kwargs["k_scale" if letter == "k" else "v_scale"] = None
    if case.layers:
        kwargs["layer"] = case.layers - 1
    if device != "cpu":
        args = {k: (v.to(device) if v is not None else None) for k, v in args.items()}
        kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        if case.cache_view:  # keep the two caches views of one allocation on the device too
            both = torch.stack([args["key_cache"], args["value_cache"]], 1)
            args["key_cache"], args["value_cache"] = both[:, 0], both[:, 1]
    return args, kwargs


def split_kwargs(kwargs: dict):
    """(OpConfig, array keyword arguments, layer) of a case's keyword arguments."""
    from fused_qkv.core import OpConfig
    from fused_qkv.core.config import FIELDS

    if "q_dtype" in kwargs:
        kwargs = dict(kwargs, q_dtype=str(kwargs["q_dtype"]).removeprefix("torch."))
    config = OpConfig(**{k: v for k, v in kwargs.items() if k in FIELDS})
    arrays = {k: kwargs.get(k) for k in ("offsets", "k_scale", "v_scale", "q_scale", "k_scale_cache",
                                          "v_scale_cache")}
    return config, arrays, kwargs.get("layer")


def plan_for(case: Case, target: str = "cuda"):
    """The launch plan the torch frontend makes for this case on ``target`` (white-box: ``op.plan_call``, for
    ahead-of-time compiles of exactly what the frontend launches)."""
    from fused_qkv.torch_api.op import _layer_selected, plan_call

    args, kw = make_inputs(case)
    config, optional, layer = split_kwargs(kw)
    tensors = _layer_selected(dict(args, **optional), layer)
    plan, _ = plan_call(tensors, config, target=target)
    return plan


def np64(t):
    return None if t is None else t.detach().cpu().to(torch.float64).numpy()


def oracle_for(case: Case, args, kwargs):
    kc = args["key_cache"]
    n_slots = case.num_blocks * case.block_size
    return reference(
        np64(args["qkv"]), np64(args["q_weight"]), np64(args["k_weight"]), np64(args["cos"]), np64(args["sin"]),
        None if args["positions"] is None else args["positions"].cpu().numpy(), args["slot_mapping"].cpu().numpy(),
        num_q_heads=case.QH, num_kv_heads=case.KVH, head_dim=case.D, num_cache_slots=n_slots,
        key_cache_dtype=str(kc.dtype).removeprefix("torch."),
        value_cache_dtype=str(args["value_cache"].dtype).removeprefix("torch."),
        eps=case.eps, norm_weight_offset=case.offset, is_neox=case.is_neox, rotary_dim=case.rotary_dim,
        offsets=None if kwargs["offsets"] is None else kwargs["offsets"].cpu().numpy(),
        attn_output_gate=case.gate is not None, gated_qkv_layout=case.gate or "interleaved",
        k_scale=np64(kwargs["k_scale"]), v_scale=np64(kwargs["v_scale"]), mrope_section=case.mrope_section,
        mrope_interleaved=case.mrope == "interleaved", v_norm=case.v_norm, k_eq_v=case.k_eq_v,
        q_dtype=case.q_dtype if case.q_fp8 else None, q_scale=np64(kwargs.get("q_scale")),
        k_scale_cache="k" in case.scale_cache, v_scale_cache="v" in case.scale_cache,
    )


def assert_rounded(actual, exact, dtype: str, what: str):
    """``actual`` is ``exact`` correctly rounded to ``dtype``, up to fp32 arithmetic noise (see module doc)."""
    actual = np.asarray(actual, np.float64)
    exact = np.asarray(exact, np.float64)
    assert actual.shape == exact.shape, f"{what}: shape {actual.shape} != {exact.shape}"
    score, where = rounding_error(actual, exact, dtype)
    assert score <= 1.0, (
        f"{what}: off by {score:.3g}x the allowed error (half an ulp of {dtype}) at {where}: "
        f"got {actual[where]!r}, exact {exact[where]!r}")


def cache_entries(cache, slot, case: Case):
    """[KVH, D] entry of ``slot`` in a (possibly layered) cache."""
    if case.layers:
        cache = cache[case.layers - 1]
    b, o = slot // case.block_size, slot % case.block_size
    return cache[b, o] if case.layout == "NHD" else cache[b, :, o]


def written_mask(cache, slots, case: Case):
    """Boolean mask over the cache's elements: True where some token writes."""
    mask = torch.zeros(cache.shape, dtype=torch.bool)
    target = mask[case.layers - 1] if case.layers else mask
    for s in slots:
        if s >= 0:
            b, o = s // case.block_size, s % case.block_size
            if case.layout == "NHD":
                target[b, o] = True
            else:
                target[b, :, o] = True
    return mask


def as_bytes(t):
    t = t.detach().cpu()
    return t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous().view(torch.int16 if
                                                                                            t.element_size() == 2
                                                                                            else torch.int32)


def assert_scales(actual, exact, what: str):
    """float32 scales computed in fp32 from fp32 values: within 2**-16 (relative) of the float64 ones."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == exact.shape, f"{what}: shape {actual.shape} != {exact.shape}"
    err = np.abs(actual - exact) / exact
    worst = np.unravel_index(err.argmax(), err.shape)
    assert np.all(err <= 2.0**-16), f"{what}: relative error {err.max():.3g} at {worst}"


def check_against_oracle(case: Case, args, kwargs, out, kc_before, vc_before, kc_after, vc_after,
                         scales_before=None, scales_after=None):
    """``scales_before`` / ``scales_after``: the scale caches (``k_scale_cache``, ``v_scale_cache``) of an fp8 case
    before and after the call."""
    ref = oracle_for(case, args, kwargs)
    in_dtype = case.dtype
    assert tuple(out.q.shape) == (case.T, case.QH, case.D)
    if case.q_fp8:
        assert out.q.dtype == TORCH_DTYPES[case.q_dtype], out.q.dtype
        assert_rounded(np64(out.q), ref.exact_q, case.q_dtype, "q (fp8)")
        if case.q_fp8 == "dynamic":
            assert out.q_scales.dtype == torch.float32
            assert_scales(np64(out.q_scales), ref.q_scales, "q_scales")
        else:
            assert out.q_scales is None
    else:
        assert out.q.dtype == TORCH_DTYPES[in_dtype]
        assert_rounded(np64(out.q), ref.q, in_dtype, "q")
        assert getattr(out, "q_scales", None) is None
    for letter, name, exact in (("k", "k_scale_cache", ref.key_scales), ("v", "v_scale_cache", ref.value_scales)):
        if letter not in case.scale_cache:
            continue
        before, after = scales_before[name], scales_after[name].detach().cpu()
        idx = [t for t in range(case.T) if ref.slots[t] >= 0]
        if idx:
            got = np.stack([np64(cache_entries(after, int(ref.slots[t]), case)) for t in idx])
            assert_scales(got, exact[idx], f"{name}[written slots]")
        mask = written_mask(before, ref.slots, case)
        assert torch.equal(as_bytes(before)[~mask], as_bytes(after)[~mask]), f"{name}: an unaddressed slot changed"

    qkv = args["qkv"].detach().cpu()
    if case.gate:
        assert out.gate is not None and tuple(out.gate.shape) == (case.T, case.QH, case.D)
        assert torch.equal(as_bytes(out.gate), as_bytes(torch.from_numpy(ref.gate).to(qkv.dtype))), "gate"
    else:
        assert out.gate is None
    if case.return_kv:
        assert tuple(out.k.shape) == (case.T, case.KVH, case.D) and out.k.dtype == TORCH_DTYPES[in_dtype]
        assert_rounded(np64(out.k), ref.k, in_dtype, "k")
        if case.v_norm:
            assert_rounded(np64(out.v), ref.v, in_dtype, "v")
        else:
            assert torch.equal(as_bytes(out.v), as_bytes(torch.from_numpy(ref.v).to(qkv.dtype))), "v is not a copy"
    else:
        assert out.k is None and out.v is None

    # addressed slots hold the expected values
    for name, cache, exact in (("key_cache", kc_after, ref.exact_key_cache),
                               ("value_cache", vc_after, ref.exact_value_cache)):
        cdt = str(cache.dtype).removeprefix("torch.")
        idx = [t for t in range(case.T) if ref.slots[t] >= 0]
        if idx:
            got = np.stack([np64(cache_entries(cache.cpu(), int(ref.slots[t]), case)) for t in idx])
            assert_rounded(got, exact[idx], cdt, f"{name}[written slots]")
    # every other slot is bit-identical to the poison
    for name, before, after in (("key_cache", kc_before, kc_after), ("value_cache", vc_before, vc_after)):
        mask = written_mask(before, ref.slots, case)
        b, a = as_bytes(before), as_bytes(after.cpu())
        assert torch.equal(b[~mask], a[~mask]), f"{name}: a slot no token addresses was modified"
    return ref


SCALE_CACHES = ("k_scale_cache", "v_scale_cache")


def run_torch(case: Case, device="cpu", with_scales=False):
    """The case through the torch frontend (the fp8 entry point for fp8 cases), checked against the oracle; returns
    (outputs, key_cache, value_cache), and the updated scale caches by name with ``with_scales``."""
    from fused_qkv.torch_api import fused_qkv_split_qk_norm_rope_cache, fused_qkv_split_qk_norm_rope_cache_fp8

    args, kwargs = make_inputs(case, device)
    kc_before, vc_before = args["key_cache"].detach().cpu().clone(), args["value_cache"].detach().cpu().clone()
    scales_before = {n: kwargs[n].detach().cpu().clone() for n in SCALE_CACHES if kwargs.get(n) is not None}
    op = fused_qkv_split_qk_norm_rope_cache_fp8 if case.fp8_entry else fused_qkv_split_qk_norm_rope_cache
    out = op(**args, **kwargs)
    scales_after = {n: kwargs[n] for n in scales_before}
    check_against_oracle(case, args, kwargs, out, kc_before, vc_before, args["key_cache"], args["value_cache"],
                         scales_before, scales_after)
    if with_scales:
        return out, args["key_cache"], args["value_cache"], scales_after
    return out, args["key_cache"], args["value_cache"]


# ---------------------------------------------------------------- JAX bridging (same inputs, both frameworks)
_ML_DTYPES = {"bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
              "float8_e4m3fnuz": "float8_e4m3fnuz"}


def to_numpy(t):
    """torch tensor -> NumPy array with the same dtype (ml_dtypes for bf16/fp8), C-contiguous."""
    import ml_dtypes

    if t is None:
        return None
    t = t.detach().cpu().contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if name in _ML_DTYPES:
        raw = t.view(torch.int16 if t.element_size() == 2 else torch.uint8).numpy()
        return raw.view(getattr(ml_dtypes, _ML_DTYPES[name]))
    return t.numpy()


def from_numpy(a):
    """NumPy (ml_dtypes included) -> torch tensor of the same dtype, bit for bit."""
    a = np.ascontiguousarray(np.asarray(a))
    name = a.dtype.name
    if name in _ML_DTYPES:
        raw = a.view(np.int16 if a.itemsize == 2 else np.uint8)
        return torch.from_numpy(raw.copy()).view(TORCH_DTYPES[name])
    return torch.from_numpy(a.copy())


def run_jax(case: Case, check=True, jit=False, with_scales=False):
    """The case through the JAX frontend (the fp8 entry point for fp8 cases), checked against the oracle; returns
    (outputs as torch tensors, key_cache, value_cache), and the updated scale caches by name with ``with_scales``."""
    import jax
    import jax.numpy as jnp
    from fused_qkv.jax_api import fused_qkv_split_qk_norm_rope_cache, fused_qkv_split_qk_norm_rope_cache_fp8
    from fused_qkv.torch_api import FusedQKVFp8Output

    args, kwargs = make_inputs(case, "cpu")
    kc_before, vc_before = args["key_cache"].clone(), args["value_cache"].clone()
    scales_before = {n: kwargs[n].clone() for n in SCALE_CACHES if kwargs.get(n) is not None}
    jargs = {k: None if v is None else jnp.asarray(to_numpy(v)) for k, v in args.items()}
    jkw = {k: jnp.asarray(to_numpy(v)) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if "q_dtype" in jkw:
        jkw["q_dtype"] = jnp.dtype(case.q_dtype)
    fn = fused_qkv_split_qk_norm_rope_cache_fp8 if case.fp8_entry else fused_qkv_split_qk_norm_rope_cache
    if jit:
        static = {k: v for k, v in jkw.items() if not isinstance(v, jax.Array)}
        arrays = {k: v for k, v in jkw.items() if isinstance(v, jax.Array)}
        out = jax.jit(lambda a, k: fn(**a, **k, **static), donate_argnums=())(jargs, arrays)
    else:
        out = fn(**jargs, **jkw)
    conv = lambda x: None if x is None else from_numpy(x)  # noqa: E731
    tout = FusedQKVFp8Output(conv(out.q), conv(out.gate), conv(out.k), conv(out.v),
                             conv(getattr(out, "q_scales", None)))
    kc_after, vc_after = from_numpy(out.key_cache), from_numpy(out.value_cache)
    scales_after = {n: from_numpy(getattr(out, n)) for n in scales_before}
    if check:
        check_against_oracle(case, args, kwargs, tout, kc_before, vc_before, kc_after, vc_after, scales_before,
                             scales_after)
    return (tout, kc_after, vc_after, scales_after) if with_scales else (tout, kc_after, vc_after)
