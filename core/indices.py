"""Opt-in index checking for development: positions against the rotary table, slots against the cache.

The kernel never reads or writes out of bounds whatever the index data is: positions outside the table are clamped
to its first/last row and slots outside the cache are skipped. That is safe, and silent. With checking on
(``check_indices=True`` on either frontend's call, or ``FUSED_QKV_CHECK_INDICES=1`` in the environment of the
process, read when ``fused_qkv`` is imported), the
frontends copy the index arrays to the host and call :func:`check_indices` before the results are returned; a bad
index raises ``ValueError`` naming the argument, the first bad entry and its value. The copy synchronises the host
with the device, so checking is off by default and the default path stays capture-safe.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

ENV_VAR = "FUSED_QKV_CHECK_INDICES"
PAD_SLOT = -1  # the padding slot (vLLM's PAD_SLOT_ID): no write, and not an error


def _requested_by_environment() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


# read once, when fused_qkv.core is imported: the eager fast paths cannot afford an environment lookup per call
CHECK_BY_DEFAULT = _requested_by_environment()


def index_checks_requested(check_indices: Optional[bool]) -> bool:
    """The ``check_indices`` argument if given, else :data:`CHECK_BY_DEFAULT` (``FUSED_QKV_CHECK_INDICES`` set to
    1/true/yes/on when ``fused_qkv`` was imported)."""
    if check_indices is None:
        return CHECK_BY_DEFAULT
    if not isinstance(check_indices, bool):
        raise TypeError(f"check_indices must be None or a bool, got {type(check_indices).__name__}")
    return check_indices


def _check_positions(pos, offsets, num_table_rows: int) -> None:
    eff = pos if offsets is None else pos + np.asarray(offsets).astype(np.int64)
    bad = np.argwhere((eff < 0) | (eff >= num_table_rows))  # [3, T] mRoPE positions: first bad (row, token)
    if len(bad):
        at = tuple(int(x) for x in bad[0])
        name = "positions[" + ", ".join(map(str, at)) + "]"
        what = (f"{name} = {pos[at]}" if offsets is None
                else f"{name} + offsets[{at[-1]}] = {pos[at]} + {eff[at] - pos[at]} = {eff[at]}")
        raise ValueError(f"{what} is outside the rotary table's rows [0, {num_table_rows}) (cos/sin have "
                         f"{num_table_rows} rows); unchecked, the kernel would clamp it to row "
                         f"{min(max(int(eff[at]), 0), num_table_rows - 1)} ({len(bad)} such entries)")


def check_indices(positions, offsets, slot_mapping, *, num_table_rows: int, num_cache_slots: int) -> None:
    """Raise ``ValueError`` for the first position (plus offset) outside ``[0, num_table_rows)`` and the first slot
    that is ``>= num_cache_slots`` or negative other than ``-1``.

    Args:
        positions: ``[T]`` or, with mRoPE, ``[3, T]`` integer array (NumPy or anything ``np.asarray`` takes), or
            ``None`` for a layer without RoPE (no tables: nothing to check).
        offsets: ``[T]`` integer array added to ``positions`` (to each row of ``[3, T]``), or ``None``.
        slot_mapping: ``[S]`` integer array.
        num_table_rows: rows of the ``cos``/``sin`` tables.
        num_cache_slots: ``num_blocks * block_size`` of the cache.
    """
    if positions is not None:
        _check_positions(np.asarray(positions).astype(np.int64), offsets, num_table_rows)
    slots = np.asarray(slot_mapping).astype(np.int64)
    bad = np.flatnonzero((slots < PAD_SLOT) | (slots >= num_cache_slots))
    if bad.size:
        i = int(bad[0])
        rule = (f">= num_blocks * block_size = {num_cache_slots}" if slots[i] >= num_cache_slots
                else f"negative (only {PAD_SLOT} is the padding slot)")
        raise ValueError(f"slot_mapping[{i}] = {slots[i]} is {rule}; unchecked, the kernel would skip its cache "
                         f"write ({bad.size} such entries)")
