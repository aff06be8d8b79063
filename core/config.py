"""The op's static options, validated once: :class:`OpConfig`.

Both frontends turn their keyword arguments into an ``OpConfig`` and pass ``(arrays, config)`` inward; only the
public functions (and the torch custom-op schema, which needs flat arguments) spell the options out. A new option is
a field here, its use in the kernel, the plan and the oracle, and its tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

GATE_LAYOUTS = ("interleaved", "blocked")
LAYOUTS = ("NHD", "HND")
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 512
FP8_DTYPE_NAMES = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2")  # plan.FP8_FORMATS' keys


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_int(name, value, lo=1, hi=None):
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _check_float(name, value, *, nonneg=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or (nonneg and value < 0):
        raise ValueError(f"{name} must be a finite{' non-negative' if nonneg else ''} float, got {value}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class OpConfig:
    """The static options of one call. Field order is the order of the public functions' keyword arguments.

    ``rotary_dim=None`` means ``head_dim``; :attr:`rotary` is the effective value. Construction raises
    ``TypeError``/``ValueError`` naming the argument, exactly as the public functions do.
    """

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float = 1e-6
    norm_weight_offset: float = 0.0
    is_neox: bool = True
    rotary_dim: Optional[int] = None
    attn_output_gate: bool = False
    gated_qkv_layout: str = "interleaved"
    kv_cache_layout: str = "NHD"
    return_kv: bool = True
    mrope_section: Optional[tuple] = None
    mrope_interleaved: bool = False
    v_norm: bool = False
    k_eq_v: bool = False
    q_dtype: Optional[str] = None  # an fp8 dtype name: q is quantised (the ``..._fp8`` entry points)

    def __post_init__(self):
        check_int("num_q_heads", self.num_q_heads)
        check_int("num_kv_heads", self.num_kv_heads)
        check_int("head_dim", self.head_dim, MIN_HEAD_DIM, MAX_HEAD_DIM)
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.rotary_dim is not None:
            check_int("rotary_dim", self.rotary_dim, 2, self.head_dim)
            if self.rotary_dim % 2:
                raise ValueError(f"rotary_dim must be even, got {self.rotary_dim}")
        _check_float("eps", self.eps, nonneg=True)
        _check_float("norm_weight_offset", self.norm_weight_offset)
        for name in ("is_neox", "attn_output_gate", "return_kv", "mrope_interleaved", "v_norm", "k_eq_v"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        _check_choice("gated_qkv_layout", self.gated_qkv_layout, GATE_LAYOUTS)
        _check_choice("kv_cache_layout", self.kv_cache_layout, LAYOUTS)
        if self.mrope_section is not None:
            object.__setattr__(self, "mrope_section", _check_mrope_section(self.mrope_section, self.rotary))
        elif self.mrope_interleaved:
            raise ValueError("mrope_interleaved=True needs mrope_section (the (t, h, w) split of the frequencies)")
        if self.q_dtype is not None and self.q_dtype not in FP8_DTYPE_NAMES:
            raise TypeError(f"q_dtype must be None or an fp8 dtype ({list(FP8_DTYPE_NAMES)}), got {self.q_dtype!r}")
        # the kernel takes them as fp32 scalars: ints are accepted and stored as floats
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "norm_weight_offset", float(self.norm_weight_offset))

    @property
    def rotary(self) -> int:
        """The number of rotated channels (``rotary_dim``, or ``head_dim`` when it is None)."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def qkv_width(self) -> int:
        """Channels per token of the packed projection: Q heads (with gates), K heads, V heads (none with k_eq_v)."""
        kv_blocks = 1 if self.k_eq_v else 2
        return (self.num_q_heads * (2 if self.attn_output_gate else 1) + kv_blocks * self.num_kv_heads) * self.head_dim


def mrope_section_tuple(section) -> Optional[tuple]:
    """``mrope_section`` (None, or a list/tuple of three ints, as Hugging Face configs hold it) as a tuple; raises
    TypeError otherwise. Frontends call it first: a tuple of exact ints keys their caches safely ((16.0, 8, 8)
    hashes and compares like (16, 8, 8))."""
    if section is None:
        return None
    if not isinstance(section, (tuple, list)):
        raise TypeError(f"mrope_section must be None or a list/tuple of three ints (t, h, w), got "
                        f"{type(section).__name__}")
    if len(section) != 3 or not all(_is_int(x) for x in section):
        raise TypeError(f"mrope_section must hold three ints (t, h, w), got {section!r}")
    return tuple(int(x) for x in section)


def _check_mrope_section(section, rotary: int) -> tuple:
    """``mrope_section`` as a tuple of three non-negative ints summing to ``rotary_dim // 2``."""
    section = mrope_section_tuple(section)
    if any(x < 0 for x in section) or sum(section) != rotary // 2:
        raise ValueError(f"mrope_section must be three non-negative ints with t + h + w == rotary_dim // 2 = "
                         f"{rotary // 2}, got {tuple(section)} (sum {sum(section)})")
    return tuple(section)


FIELDS = tuple(f.name for f in dataclasses.fields(OpConfig))
_BY_VALUES: dict = {}


def config_from_values(values: tuple) -> OpConfig:
    """``OpConfig(*values)``, memoised on the values and their types (``True`` and ``1`` hash alike, but only one
    of them is valid), so a frontend validates each distinct configuration once."""
    try:
        key = (values, tuple(map(type, values)))
        hit = _BY_VALUES.get(key)
    except TypeError:  # an unhashable value: construction names the argument
        return OpConfig(*values)
    if hit is None:
        hit = OpConfig(*values)
        if len(_BY_VALUES) >= 1024:
            _BY_VALUES.clear()
        _BY_VALUES[key] = hit
    return hit


def tensor_parallel_columns(num_shards: int, *, num_q_heads: int, num_kv_heads: int, head_dim: int,
                            attn_output_gate: bool = False, gated_qkv_layout: str = "interleaved",
                            k_eq_v: bool = False):
    """Column order that makes each of ``num_shards`` equal column blocks a packed qkv of its own heads.

    Returns a list ``perm`` of qkv column indices: ``qkv[:, perm]`` (or, once and offline, the QKV
    projection weight's output columns permuted the same way) is ``[shard 0 | shard 1 | ...]`` where
    shard ``r`` holds Q heads ``r*QH/n ...`` (with their gates, in the same gate layout), then its K heads,
    then its V heads (none with ``k_eq_v``): exactly the packed layout the op expects with ``num_q_heads=QH/n``,
    ``num_kv_heads=KVH/n``. Split that array's last axis across the mesh axis (``PartitionSpec(None, axis)``)
    and the caches' KV-head axis the same way.
    """
    check_int("num_shards", num_shards)
    OpConfig(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
             attn_output_gate=attn_output_gate, gated_qkv_layout=gated_qkv_layout, k_eq_v=k_eq_v)
    if num_q_heads % num_shards or num_kv_heads % num_shards:
        raise ValueError(f"num_shards ({num_shards}) must divide num_q_heads ({num_q_heads}) and num_kv_heads "
                         f"({num_kv_heads})")
    D, QH, KVH = head_dim, num_q_heads, num_kv_heads
    qs, ks = QH // num_shards, KVH // num_shards
    q_cols = QH * D * (2 if attn_output_gate else 1)

    def head(col0, h):
        return list(range(col0 + h * D, col0 + (h + 1) * D))

    perm = []
    for r in range(num_shards):
        q_heads = range(r * qs, (r + 1) * qs)
        if attn_output_gate and gated_qkv_layout == "interleaved":  # [q_h | g_h] pairs stay together
            for h in q_heads:
                perm += list(range(2 * h * D, 2 * (h + 1) * D))
        elif attn_output_gate:  # blocked: this shard's Q heads, then its gate heads
            perm += [c for h in q_heads for c in head(0, h)] + [c for h in q_heads for c in head(QH * D, h)]
        else:
            perm += [c for h in q_heads for c in head(0, h)]
        kv_heads = range(r * ks, (r + 1) * ks)
        perm += [c for h in kv_heads for c in head(q_cols, h)]
        if not k_eq_v:
            perm += [c for h in kv_heads for c in head(q_cols + KVH * D, h)]
    return perm
