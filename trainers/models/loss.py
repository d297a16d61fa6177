"""Training losses a model family names (`Family.loss`, "module:function"), each
(logits [B, L, V], batch, z_loss) -> (cross-entropy sum, z-loss sum, target tokens).

Sums, not means, let micro-batches add up exactly to the full batch; the train step divides
once by the target tokens of the whole optimizer step. The held-out loss is the family's
cross-entropy sum over its target tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_loss(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray, z_loss: float):
    """Summed (not averaged) weighted cross-entropy and z-loss over a batch.

    Sums let micro-batches add up exactly to the full batch; the caller divides once by
    the number of target tokens of the whole optimizer step. The z-loss term z * log(Z)^2
    keeps the softmax normaliser near 1 (PaLM / T5X), which stabilises bf16 training.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, L]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    ce_sum = jnp.sum((log_z - target_logit) * weights)
    z_sum = z_loss * jnp.sum(jnp.square(log_z) * weights)
    return ce_sum, z_sum, jnp.sum(weights)


def next_token_loss(logits: jnp.ndarray, batch: dict, z_loss: float):
    """Both built-in families: each weighted position predicts its `decoder_target_tokens`."""
    return token_loss(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss)
