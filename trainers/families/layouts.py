"""Batch layouts: how a family's examples fill packed rows (the packed batch format every family's model reads).

A layout has one or two token budgets per row. Encoder-decoder rows have two (input length
Li, target length Lt: the inputs feed the encoder, the targets the decoder); decoder-only
rows have one (L = Li + Lt, each example's input then its target). trainers/data/packing.py
packs with a family's layout; numpy is imported only where a batch is built, so the planner
can import a family without it.
"""

from __future__ import annotations

from typing import Sequence

Encoded = tuple[list[int], list[int]]  # (input ids, target ids), each ending with EOS
EOS_ID = 1  # trainers.data.tokenizer's EOS; a packed example always ends with it


def clip(ids: list[int], n: int) -> list[int]:
    """At most n ids, still ending with EOS."""
    return ids if len(ids) <= n else ids[: n - 1] + [EOS_ID]


def _place(tokens, segs, pos, row: int, start: int, ids: list[int], seg: int) -> int:
    import numpy as np

    n = len(ids)
    tokens[row, start : start + n] = ids
    segs[row, start : start + n] = seg
    pos[row, start : start + n] = np.arange(n)
    return start + n


class EncoderDecoderLayout:
    """Inputs to an encoder row of Li tokens, targets to a decoder row of Lt tokens."""

    def budgets(self, input_length: int, target_length: int) -> tuple[int, int]:
        return input_length, target_length

    def sizes(self, examples: Sequence[Encoded]) -> list[tuple[int, int]]:
        return [(len(i), len(t)) for i, t in examples]

    def truncate(self, ex: Encoded, input_length: int, target_length: int) -> Encoded:
        return clip(ex[0], input_length), clip(ex[1], target_length)

    def model_inputs(self, batch_size: int, input_length: int, target_length: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the token arrays the model reads (for init and shape tracing)."""
        return {"encoder_input_tokens": (batch_size, input_length),
                "decoder_input_tokens": (batch_size, target_length)}

    def build(self, rows: Sequence[Sequence[Encoded]], input_length: int, target_length: int) -> dict:
        import numpy as np

        b = len(rows)
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


class DecoderOnlyLayout:
    """Each example's input then its target in one row of Li + Lt tokens; only target
    tokens carry loss weight."""

    def budgets(self, input_length: int, target_length: int) -> tuple[int, int]:
        return input_length + target_length, 0

    def sizes(self, examples: Sequence[Encoded]) -> list[tuple[int, int]]:
        return [(len(i) + len(t), 0) for i, t in examples]

    def truncate(self, ex: Encoded, input_length: int, target_length: int) -> Encoded:
        inp, tgt = ex
        total = input_length + target_length
        if len(inp) + len(tgt) <= total:
            return inp, tgt
        tgt = clip(tgt, target_length)  # the target is what is learned from: keep it, cut the input
        return clip(inp, total - len(tgt)), tgt

    def model_inputs(self, batch_size: int, input_length: int, target_length: int) -> dict[str, tuple[int, ...]]:
        return {"decoder_input_tokens": (batch_size, input_length + target_length)}

    def build(self, rows: Sequence[Sequence[Encoded]], input_length: int, target_length: int) -> dict:
        import numpy as np

        b, length = len(rows), input_length + target_length
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
