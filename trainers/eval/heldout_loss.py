"""Held-out loss: token cross-entropy on the targets of a fixed set of examples from tasks no
finetuning mixture contains (`trainers.data.heldout.loss_set`).

The set depends only on `EvalConfig.loss_examples`, the tokenizer and the cell's input and
target lengths, never on the task count, formats, model size or seed, so every cell of a
sweep measures `eval/loss` on exactly the same tokens; base-model cells included. That makes
it the loss to compare across cells: `train/loss` is measured on each cell's own mixture.

Examples are tokenized as training examples are (each side ending with EOS), packed with the
training packer (the per-example attention masks make packing exact) and run through the
model in eval mode, on the evaluation mesh (trainers/eval/placement.py: parameters in their
training shardings, rows split over the data axes; only the two sums per batch come back).
The loss is the cross-entropy summed over all target tokens divided by
their number (no z-loss), overall and per group (`mc`, `reasoning`, `qa`, `arith`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainers.data.packing import build_batch, pack_best_fit, truncate
from trainers.data.tokenizer import EOS_ID
from trainers.eval.placement import EvalMesh

ROWS_PER_BATCH = 8


def loss_batches(tokenizer: Any, family: str, input_length: int, target_length: int,
                 per_group: int, rows_per_batch: int = ROWS_PER_BATCH) -> dict[str, list[dict[str, np.ndarray]]]:
    """group -> packed batches of the held-out loss set, each of `rows_per_batch` rows (the
    last one padded with empty rows, whose loss weights are 0)."""
    from trainers.data.heldout import loss_set

    encoded: dict[str, list] = {}
    for group, inputs, targets in loss_set(per_group):
        ex = (tokenizer.encode(inputs) + [EOS_ID], tokenizer.encode(targets) + [EOS_ID])
        encoded.setdefault(group, []).append(truncate(ex, family, input_length, target_length))
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for group, examples in encoded.items():
        rows = [[examples[k] for k in row] for row in pack_best_fit(examples, family, input_length, target_length)]
        rows += [[] for _ in range(-len(rows) % rows_per_batch)]
        out[group] = [build_batch(rows[i: i + rows_per_batch], family, input_length, target_length)
                      for i in range(0, len(rows), rows_per_batch)]
    return out


def _summed_ce_program(model_cfg):
    from trainers import models

    def program(params, rows, _):
        (batch,) = rows
        logits = models.build(model_cfg).apply({"params": params}, batch, deterministic=True)
        ce, _, n = models.loss_fn(model_cfg)(logits, batch, 0.0)
        return ce, n

    return program


class HeldoutLoss:
    """params -> {"eval/loss": ..., "eval/loss/<group>": ...} for one model and tokenizer,
    computed on `placement`'s mesh (default: one local device)."""

    def __init__(self, model_cfg: Any, tokenizer: Any, input_length: int, target_length: int, per_group: int,
                 placement: EvalMesh | None = None):
        self.model_cfg = model_cfg
        self.placement = placement or EvalMesh.local()
        self.batches = loss_batches(tokenizer, model_cfg.family, input_length, target_length, per_group,
                                    self.placement.rows(ROWS_PER_BATCH))

    def __call__(self, params: Any) -> dict[str, float]:
        params = self.placement.put_params(self.model_cfg, params)
        total_ce = total_n = 0.0
        out: dict[str, float] = {}
        for group, batches in self.batches.items():
            ce = n = 0.0
            for batch in batches:
                c, k = self.placement.run(("heldout_loss", self.model_cfg), lambda: _summed_ce_program(self.model_cfg),
                                          params, rows=(batch,))
                ce, n = ce + float(c), n + float(k)
            out[f"eval/loss/{group}"] = ce / n
            total_ce, total_n = total_ce + ce, total_n + n
        out["eval/loss"] = total_ce / total_n
        return out
