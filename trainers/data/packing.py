"""Packing tokenized examples into fixed-length rows (the packed batch format: trainers/families/layouts.py).

The model family decides the row layout (trainers/families/layouts.py): encoder-decoder rows
have two budgets (input length Li, target length Lt); decoder-only rows have one (L = Li +
Lt, each example's input then its target). Three packers share one signature -- lengths in,
rows of example indices out:

- `pack_best_fit`: best-fit decreasing over a window of examples. Examples are placed
  largest first, each into the open row that it leaves the least room in (for two budgets:
  the tightest input fit among rows whose target room also suffices). Far fewer rows than
  greedy on long-tailed length distributions.
- `pack_greedy`: sequential first-come packing into one open row (the usual baseline).
- `pack_padded`: one example per row (no packing).
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

from trainers.families import get_family
from trainers.families.layouts import Encoded

_SCAN = 32  # candidate rows examined per placement in the two-budget case


def check_family(family: str) -> None:
    get_family(family)


def truncate(ex: Encoded, family: str, input_length: int, target_length: int) -> Encoded:
    return get_family(family).batch_layout.truncate(ex, input_length, target_length)


def _sizes(examples: Sequence[Encoded], family: str) -> list[tuple[int, int]]:
    return get_family(family).batch_layout.sizes(examples)


def _capacity(family: str, input_length: int, target_length: int) -> tuple[int, int]:
    return get_family(family).batch_layout.budgets(input_length, target_length)


def pack_best_fit(examples: Sequence[Encoded], family: str, input_length: int, target_length: int) -> list[list[int]]:
    cap_a, cap_b = _capacity(family, input_length, target_length)
    sizes = _sizes(examples, family)
    order = sorted(range(len(sizes)), key=lambda k: -(sizes[k][0] / cap_a + (sizes[k][1] / cap_b if cap_b else 0)))
    rows: list[list[int]] = []
    # Open rows sorted by remaining first budget: (room_a, room_b, row index).
    open_rows: list[tuple[int, int, int]] = []
    for k in order:
        a, b = sizes[k]
        lo = bisect.bisect_left(open_rows, (a, -1, -1))
        best = None
        for pos in range(lo, min(lo + _SCAN, len(open_rows))):
            room_a, room_b, _ = open_rows[pos]
            if room_b >= b:
                slack = (room_a - a) / cap_a + ((room_b - b) / cap_b if cap_b else 0)
                if best is None or slack < best[0]:
                    best = (slack, pos)
                if not cap_b:
                    break  # one budget: the first row that fits is the tightest
        if best is None:
            rows.append([k])
            bisect.insort(open_rows, (cap_a - a, cap_b - b, len(rows) - 1))
        else:
            room_a, room_b, r = open_rows.pop(best[1])
            rows[r].append(k)
            bisect.insort(open_rows, (room_a - a, room_b - b, r))
    return rows


def pack_greedy(examples: Sequence[Encoded], family: str, input_length: int, target_length: int) -> list[list[int]]:
    cap_a, cap_b = _capacity(family, input_length, target_length)
    rows: list[list[int]] = []
    room_a = room_b = -1
    for k, (a, b) in enumerate(_sizes(examples, family)):
        if a <= room_a and b <= room_b:
            rows[-1].append(k)
            room_a, room_b = room_a - a, room_b - b
        else:
            rows.append([k])
            room_a, room_b = cap_a - a, cap_b - b
    return rows


def pack_padded(examples: Sequence[Encoded], family: str, input_length: int, target_length: int) -> list[list[int]]:
    return [[k] for k in range(len(examples))]


PACKERS = {"best_fit": pack_best_fit, "greedy": pack_greedy, "padded": pack_padded}


def build_batch(rows: Sequence[Sequence[Encoded]], family: str, input_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Rows of (already truncated) examples -> the packed batch dict (trainers/families/layouts.py)."""
    return get_family(family).batch_layout.build(rows, input_length, target_length)


def packing_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Fraction of token slots that hold a real (non-padding) token."""
    segs = [v for k, v in batch.items() if k.endswith("segment_ids")]
    used = sum(int((np.asarray(s) > 0).sum()) for s in segs)
    return used / sum(np.asarray(s).size for s in segs)
