"""PaLM-style decoder-only language model (the Flan-PaLM base models).

SwiGLU feed-forward, multi-query attention (any number of K/V heads), optionally the
parallel attention + feed-forward block, rotary position embeddings at per-example
positions, no biases, scale-only layer norm, and input/output embeddings shared with the
logits scaled by d_model**-0.5 (as PaLM does) when tied.
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from trainers.models import masks
from trainers.models.layers import ACT_VOCAB, Attention, Embed, GatedMLP, LMHead, Norm, dtype_of
from trainers.spec import ModelConfig

EPS = 1e-6


class DecoderOnlyLayer(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.pre_attention_norm = Norm(EPS, center=True, dtype=dt, param_dtype=pdt)
        self.attention = Attention(
            features=cfg.d_model, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads or cfg.num_heads,
            head_dim=cfg.d_kv, dropout_rate=cfg.dropout_rate, scale_logits=True, use_rotary=True,
            dtype=dt, param_dtype=pdt,
        )
        if not cfg.parallel_block:
            self.pre_mlp_norm = Norm(EPS, center=True, dtype=dt, param_dtype=pdt)
        self.mlp = GatedMLP(cfg.d_ff, "silu", cfg.dropout_rate, dt, pdt)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, bias, positions, deterministic, cache=None, write_pos=None):
        h = self.pre_attention_norm(x)
        a, kv, new_cache = self.attention(h, h, bias, deterministic, positions, positions, cache=cache, write_pos=write_pos)
        if self.cfg.parallel_block:
            # PaLM: attention and MLP read the same normed input; their outputs are summed.
            m = self.mlp(h, deterministic)
            x = x + self.dropout(a, deterministic=deterministic) + self.dropout(m, deterministic=deterministic)
        else:
            x = x + self.dropout(a, deterministic=deterministic)
            m = self.mlp(self.pre_mlp_norm(x), deterministic)
            x = x + self.dropout(m, deterministic=deterministic)
        return x, kv, new_cache


class DecoderOnly(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        # `deterministic` is positional argument 4 counting `self`, static for nn.remat.
        cls = nn.remat(DecoderOnlyLayer, static_argnums=(4,)) if cfg.remat else DecoderOnlyLayer
        self.token_embed = Embed(cfg.vocab_size, cfg.d_model, dt, pdt)
        self.layers = [cls(cfg, name=f"layers_{i}") for i in range(cfg.num_decoder_layers)]
        self.final_norm = Norm(EPS, center=True, dtype=dt, param_dtype=pdt)
        if not cfg.tie_embeddings:
            self.lm_head = LMHead(cfg.vocab_size, dt, pdt)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _logits(self, x):
        if self.cfg.tie_embeddings:
            logits = self.token_embed.attend(x) * (self.cfg.d_model ** -0.5)
        else:
            logits = self.lm_head(x)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ACT_VOCAB)

    def _run(self, tokens, segments, positions, deterministic):
        bias = masks.mask_to_bias(masks.decoder_mask(segments))
        x = self.dropout(self.token_embed(tokens), deterministic=deterministic)
        kvs = []
        for layer in self.layers:
            x, kv, _ = layer(x, bias, positions, deterministic)
            kvs.append(kv)
        x = self.dropout(self.final_norm(x), deterministic=deterministic)
        return x, kvs

    def __call__(self, batch, deterministic=True):
        tokens = jnp.asarray(batch["decoder_input_tokens"])
        segments = jnp.asarray(batch["decoder_segment_ids"]) if "decoder_segment_ids" in batch else (tokens != 0).astype(jnp.int32)
        if "decoder_positions" in batch:
            positions = jnp.asarray(batch["decoder_positions"])
        else:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)
        x, _ = self._run(tokens, segments, positions, deterministic)
        return self._logits(x)

    def prefill(self, tokens, max_decode_len: int):
        """Run the right-padded prompt, keep its keys/values in a cache of L + max_decode_len.

        The last real prompt token is held back as `pending`: the first decode_step feeds it
        (whatever token the caller passes, conventionally 0, as for T5) and so returns the
        logits of the first new token; it rewrites that token's cache slot with equal values.
        """
        B, L = tokens.shape
        segments = (tokens != 0).astype(jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None, :], tokens.shape)
        _, kvs = self._run(tokens, segments, positions, True)
        T = L + max_decode_len
        dt = dtype_of(self.cfg.dtype)
        pad = ((0, 0), (0, T - L), (0, 0), (0, 0))
        cache = [{"k": jnp.pad(k.astype(dt), pad), "v": jnp.pad(v.astype(dt), pad)} for k, v in kvs]
        length = jnp.sum(segments, axis=1)
        last = jnp.maximum(length - 1, 0)
        return {
            "cache": cache,
            "pos": last.astype(jnp.int32),
            "pending": jnp.take_along_axis(tokens, last[:, None], axis=1)[:, 0].astype(jnp.int32),
            "fresh": length > 0,
        }

    def decode_step(self, state, tokens):
        tokens = jnp.where(state["fresh"], state["pending"], tokens.astype(jnp.int32))
        pos = state["pos"]
        T = state["cache"][0]["k"].shape[1]
        visible = (jnp.arange(T)[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, T]
        bias = masks.mask_to_bias(visible)
        x = self.token_embed(tokens[:, None])
        caches = []
        for layer, cache in zip(self.layers, state["cache"]):
            x, _, cache = layer(x, bias, pos[:, None], True, cache, pos)
            caches.append(cache)
        logits = self._logits(self.final_norm(x))[:, 0]
        return logits, {**state, "cache": caches, "pos": pos + 1, "fresh": jnp.zeros_like(state["fresh"])}
