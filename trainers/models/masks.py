"""Attention masks for packed sequences.

A packed row holds several examples, told apart by segment ids (1..n; 0 is padding). A
query may attend to a key only when both carry the same non-zero segment id, and in a
decoder only to keys at or before its own position. Masks are boolean [B, 1, Lq, Lk]
(the 1 broadcasts over heads); models turn them into additive biases.
"""

from __future__ import annotations

import jax.numpy as jnp


def segment_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
    """[B, Lq], [B, Lk] -> [B, 1, Lq, Lk]: same example, and neither side padding."""
    same = query_segments[:, :, None] == key_segments[:, None, :]
    real = (query_segments[:, :, None] > 0) & (key_segments[:, None, :] > 0)
    return (same & real)[:, None, :, :]


def causal_mask(length: int) -> jnp.ndarray:
    """[1, 1, L, L]: query i sees keys 0..i."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None, :, :]


def encoder_mask(segments: jnp.ndarray) -> jnp.ndarray:
    """Bidirectional self-attention within each example."""
    return segment_mask(segments, segments)


def decoder_mask(segments: jnp.ndarray) -> jnp.ndarray:
    """Causal self-attention within each example."""
    return segment_mask(segments, segments) & causal_mask(segments.shape[1])


def cross_mask(decoder_segments: jnp.ndarray, encoder_segments: jnp.ndarray) -> jnp.ndarray:
    """Each target token sees only the inputs of its own example."""
    return segment_mask(decoder_segments, encoder_segments)


def mask_to_bias(mask: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """Boolean mask -> additive bias (0 where allowed, a large negative number elsewhere)."""
    return jnp.where(mask, 0.0, jnp.finfo(dtype).min / 2).astype(dtype)
