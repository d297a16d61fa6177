"""Held-out loss: token cross-entropy on the targets of a fixed set of examples from tasks no
finetuning mixture contains (`trainers.data.heldout.loss_set`).

The set depends only on `EvalConfig.loss_examples`, the tokenizer and the cell's input and
target lengths, never on the task count, formats, model size or seed, so every cell of a
sweep measures `eval/loss` on exactly the same tokens; base-model cells included. That makes
it the loss to compare across cells: `train/loss` is measured on each cell's own mixture.

Examples are tokenized as training examples are (each side ending with EOS), packed with the
training packer (the per-example attention masks make packing exact) and run through the
model in eval mode. The loss is the cross-entropy summed over all target tokens divided by
their number (no z-loss), overall and per group (`mc`, `reasoning`, `qa`, `arith`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainers.data.packing import build_batch, pack_best_fit, truncate
from trainers.data.tokenizer import EOS_ID

ROWS_PER_BATCH = 8


def loss_batches(tokenizer: Any, family: str, input_length: int, target_length: int,
                 per_group: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """group -> packed batches of the held-out loss set, each of ROWS_PER_BATCH rows (the
    last one padded with empty rows, whose loss weights are 0)."""
    from trainers.data.heldout import loss_set

    encoded: dict[str, list] = {}
    for group, inputs, targets in loss_set(per_group):
        ex = (tokenizer.encode(inputs) + [EOS_ID], tokenizer.encode(targets) + [EOS_ID])
        encoded.setdefault(group, []).append(truncate(ex, family, input_length, target_length))
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for group, examples in encoded.items():
        rows = [[examples[k] for k in row] for row in pack_best_fit(examples, family, input_length, target_length)]
        rows += [[] for _ in range(-len(rows) % ROWS_PER_BATCH)]
        out[group] = [build_batch(rows[i: i + ROWS_PER_BATCH], family, input_length, target_length)
                      for i in range(0, len(rows), ROWS_PER_BATCH)]
    return out


@functools.partial(jax.jit, static_argnums=(0,))
def _summed_ce(model_cfg, params, batch):
    from trainers import models

    logits = models.build(model_cfg).apply({"params": params}, batch, deterministic=True).astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    w = batch["decoder_loss_weights"].astype(jnp.float32)
    return jnp.sum((log_z - target) * w), jnp.sum(w)


class HeldoutLoss:
    """params -> {"eval/loss": ..., "eval/loss/<group>": ...} for one model and tokenizer."""

    def __init__(self, model_cfg: Any, tokenizer: Any, input_length: int, target_length: int, per_group: int):
        self.model_cfg = model_cfg
        self.batches = loss_batches(tokenizer, model_cfg.family, input_length, target_length, per_group)

    def __call__(self, params: Any) -> dict[str, float]:
        total_ce = total_n = 0.0
        out: dict[str, float] = {}
        for group, batches in self.batches.items():
            ce = n = 0.0
            for batch in batches:
                c, k = _summed_ce(self.model_cfg, params, {k: jnp.asarray(v) for k, v in batch.items()})
                ce, n = ce + float(c), n + float(k)
            out[f"eval/loss/{group}"] = ce / n
            total_ce, total_n = total_ce + ce, total_n + n
        out["eval/loss"] = total_ce / total_n
        return out
