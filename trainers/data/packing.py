"""Packing tokenized examples into fixed-length rows (the packed batch format of CONTRACTS).

Encoder-decoder rows have two budgets (input length Li, target length Lt); decoder-only
rows have one (L = Li + Lt, each example's input then its target). Three packers share one
signature -- lengths in, rows of example indices out:

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

from trainers.data.tokenizer import EOS_ID
from trainers.spec import UserError

FAMILIES = ("t5", "decoder")
Encoded = tuple[list[int], list[int]]  # (input ids, target ids), each ending with EOS
_SCAN = 32  # candidate rows examined per placement in the two-budget case


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UserError(f"model.family: {family!r} unknown; allowed: {', '.join(FAMILIES)}")


def _clip(ids: list[int], n: int) -> list[int]:
    """At most n ids, still ending with EOS."""
    return ids if len(ids) <= n else ids[: n - 1] + [EOS_ID]


def truncate(ex: Encoded, family: str, input_length: int, target_length: int) -> Encoded:
    inp, tgt = ex
    if family == "t5":
        return _clip(inp, input_length), _clip(tgt, target_length)
    total = input_length + target_length
    if len(inp) + len(tgt) <= total:
        return inp, tgt
    tgt = _clip(tgt, target_length)  # the target is what is learned from: keep it, cut the input
    return _clip(inp, total - len(tgt)), tgt


def _sizes(examples: Sequence[Encoded], family: str) -> list[tuple[int, int]]:
    if family == "t5":
        return [(len(i), len(t)) for i, t in examples]
    return [(len(i) + len(t), 0) for i, t in examples]


def _capacity(family: str, input_length: int, target_length: int) -> tuple[int, int]:
    return (input_length, target_length) if family == "t5" else (input_length + target_length, 0)


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


def _place(tokens, segs, pos, row: int, start: int, ids: list[int], seg: int) -> int:
    n = len(ids)
    tokens[row, start : start + n] = ids
    segs[row, start : start + n] = seg
    pos[row, start : start + n] = np.arange(n)
    return start + n


def build_batch(rows: Sequence[Sequence[Encoded]], family: str, input_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Rows of (already truncated) examples -> the packed batch dict of CONTRACTS."""
    b = len(rows)
    if family == "t5":
        z_in = lambda: np.zeros((b, input_length), np.int32)  # noqa: E731
        z_t = lambda: np.zeros((b, target_length), np.int32)  # noqa: E731
        enc, enc_seg, enc_pos = z_in(), z_in(), z_in()
        dec_in, dec_tgt, dec_seg, dec_pos = z_t(), z_t(), z_t(), z_t()
        for r, row in enumerate(rows):
            ei = ti = 0
            for s, (inp, tgt) in enumerate(row, 1):
                ei = _place(enc, enc_seg, enc_pos, r, ei, inp, s)
                dec_in[r, ti : ti + len(tgt)] = [0] + tgt[:-1]  # shifted right within the example
                ti = _place(dec_tgt, dec_seg, dec_pos, r, ti, tgt, s)
        return {
            "encoder_input_tokens": enc, "encoder_segment_ids": enc_seg, "encoder_positions": enc_pos,
            "decoder_input_tokens": dec_in, "decoder_target_tokens": dec_tgt, "decoder_segment_ids": dec_seg,
            "decoder_positions": dec_pos, "decoder_loss_weights": (dec_seg > 0).astype(np.float32),
        }
    check_family(family)
    length = input_length + target_length
    z = lambda: np.zeros((b, length), np.int32)  # noqa: E731
    dec_in, dec_tgt, seg, pos = z(), z(), z(), z()
    weights = np.zeros((b, length), np.float32)
    for r, row in enumerate(rows):
        i = 0
        for s, (inp, tgt) in enumerate(row, 1):
            seq = inp + tgt
            dec_in[r, i : i + len(seq)] = [0] + seq[:-1]
            weights[r, i + len(inp) : i + len(seq)] = 1.0  # the predicted token is a target token
            i = _place(dec_tgt, seg, pos, r, i, seq, s)
    return {"decoder_input_tokens": dec_in, "decoder_target_tokens": dec_tgt, "decoder_segment_ids": seg,
            "decoder_positions": pos, "decoder_loss_weights": weights}


def packing_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Fraction of token slots that hold a real (non-padding) token."""
    segs = [v for k, v in batch.items() if k.endswith("segment_ids")]
    used = sum(int((np.asarray(s) > 0).sum()) for s in segs)
    return used / sum(np.asarray(s).size for s in segs)
