"""PaLM-style decoder-only language model (the Flan-PaLM base models).

the family's feed-forward (SwiGLU), multi-query attention (any number of K/V heads), optionally the
parallel attention + feed-forward block, rotary position embeddings at per-example
positions, no biases, scale-only layer norm, and input/output embeddings shared with the
logits scaled by d_model**-0.5 (as PaLM does) when tied.

Decoding state (`prefill` / `decode_step`): "cache" holds {"k", "v"} of every layer,
[layers, batch, prompt length + max_decode_len, kv heads, d_kv]; "pos", "pending" and
"fresh" are per row [batch]. `decode_state_axes` names those axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from trainers.models import masks
from trainers.models.layers import (ACT_VOCAB, Attention, Embed, LMHead, Norm, cache_axes, constrain_cache,
                                    dtype_of, layer_stack, mlp, run_stack)
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
        self.mlp = mlp(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, xs, ctx, mode: str):
        """One layer of a stack (see layers.layer_stack); ctx {"bias", "positions"}.

        mode "train" / "eval": no per-layer inputs or outputs. "prefill": ys are the layer's
        keys/values {"k", "v"} [B, L, G, D]. "prefix": xs {"k", "v"} [B, Lp, G, D] of a prefix
        computed once go before the row's own keys (the bias spans Lp + L keys). "decode": one
        token per row, xs the layer's cache, ctx adds "pos" (where each row writes); ys the
        updated cache.
        """
        deterministic = mode != "train"
        positions = ctx["positions"]
        h = self.pre_attention_norm(x)
        kv = cache = None
        if mode == "prefix":
            k, v = self.attention.project_kv(h, positions)
            kv = (jnp.concatenate([xs["k"], k], axis=1), jnp.concatenate([xs["v"], v], axis=1))
        elif mode == "decode":
            cache = xs
        a, kv, new_cache = self.attention(h, h, ctx["bias"], deterministic, positions, positions, cache=cache,
                                          write_pos=ctx.get("pos"), kv=kv)
        if self.cfg.parallel_block:
            # PaLM: attention and MLP read the same normed input; their outputs are summed.
            m = self.mlp(h, deterministic)
            x = x + self.dropout(a, deterministic=deterministic) + self.dropout(m, deterministic=deterministic)
        else:
            x = x + self.dropout(a, deterministic=deterministic)
            m = self.mlp(self.pre_mlp_norm(x), deterministic)
            x = x + self.dropout(m, deterministic=deterministic)
        return x, ({"k": kv[0], "v": kv[1]} if mode == "prefill" else new_cache)


class DecoderOnly(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.token_embed = Embed(cfg.vocab_size, cfg.d_model, dt, pdt)
        self.layers = layer_stack(cfg, DecoderOnlyLayer, cfg.num_decoder_layers)
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

    def _run(self, tokens, segments, positions, mode: str):
        """-> final hidden states, and with mode "prefill" every layer's {"k", "v"} [layers, B, L, G, D]."""
        deterministic = mode != "train"
        bias = masks.mask_to_bias(masks.decoder_mask(segments))
        x = self.dropout(self.token_embed(tokens), deterministic=deterministic)
        x, kvs = run_stack(self.layers, x, None, {"bias": bias, "positions": positions}, mode)
        x = self.dropout(self.final_norm(x), deterministic=deterministic)
        return x, kvs

    def __call__(self, batch, deterministic=True):
        tokens = jnp.asarray(batch["decoder_input_tokens"])
        segments = jnp.asarray(batch["decoder_segment_ids"]) if "decoder_segment_ids" in batch else (tokens != 0).astype(jnp.int32)
        positions = jnp.asarray(batch["decoder_positions"]) if "decoder_positions" in batch else _arange_like(tokens)
        x, _ = self._run(tokens, segments, positions, "eval" if deterministic else "train")
        return self._logits(x)

    def option_logits(self, prompts, prompt_index, tokens):
        """Teacher-forced logits of N target rows that continue P prompts, each prompt run once.

        The layout is training's: [0, prompt, target]. prompts [P, Li] right-padded (pad 0);
        prompt_index [N] the prompt each row continues; tokens [N, Lt] as for T5's decoder (0,
        then the target shifted right), right-padded. Each prompt but its last token runs
        once as a prefix; every row attends to its prompt's cached keys/values and then its
        own tokens, whose first (fed 0, as in decode_step) becomes the prompt's last token,
        so row position t predicts target token t. -> logits [N, Lt, V] float32.
        """
        P, L = prompts.shape
        length = jnp.sum(prompts != 0, axis=1)  # [P]
        prefix = jnp.concatenate([jnp.zeros((P, 1), prompts.dtype), prompts[:, :-1]], axis=1)  # [P, L]
        in_prefix = (jnp.arange(L)[None, :] < length[:, None]).astype(jnp.int32)  # 0 and prompt[:-1]
        _, kvs = self._run(prefix, in_prefix, _arange_like(prefix), "prefill")
        rows = lambda a: jnp.take(a, prompt_index, axis=0)  # noqa: E731  [P, ...] -> [N, ...]
        last = jnp.take_along_axis(prompts, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
        tokens = tokens.astype(jnp.int32).at[:, 0].set(rows(last))
        N, T = tokens.shape
        positions = rows(length)[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]  # [N, T]
        sees_prefix = jnp.broadcast_to(rows(in_prefix)[:, None, None, :] > 0, (N, 1, T, L))
        sees_own = jnp.broadcast_to(masks.causal_mask(T), (N, 1, T, T))
        bias = masks.mask_to_bias(jnp.concatenate([sees_prefix, sees_own], axis=-1))  # [N, 1, T, L + T]
        prefix_kv = jax.tree.map(lambda a: jnp.take(a, prompt_index, axis=1), kvs)  # [layers, N, L, G, D]
        x, _ = run_stack(self.layers, self.token_embed(tokens), prefix_kv, {"bias": bias, "positions": positions},
                         "prefix")
        return self._logits(self.final_norm(x))

    def prefill(self, tokens, max_decode_len: int):
        """Run the right-padded prompt, keep its keys/values in a cache of L + max_decode_len.

        The layout is training's, [0, prompt, ...] (inputs shifted right behind a 0): the
        prefix run here is 0 and the prompt but its last token, which is held back as
        `pending`; the first decode_step feeds it (whatever token the caller passes,
        conventionally 0, as for T5) and so returns the logits of the first new token.
        """
        B, L = tokens.shape
        length = jnp.sum(tokens != 0, axis=1)  # [B]
        prefix = jnp.concatenate([jnp.zeros((B, 1), tokens.dtype), tokens[:, :-1]], axis=1)  # [B, L]
        segments = (jnp.arange(L)[None, :] < length[:, None]).astype(jnp.int32)
        _, kvs = self._run(prefix, segments, _arange_like(prefix), "prefill")
        dt = dtype_of(self.cfg.dtype)
        pad = ((0, 0), (0, 0), (0, max_decode_len), (0, 0), (0, 0))  # [layers, B, L + max_decode_len, G, D]
        cache = jax.tree.map(lambda a: jnp.pad(a.astype(dt), pad), kvs)
        last = jnp.maximum(length - 1, 0)
        return {
            "cache": constrain_cache(self.cfg, cache),
            "pos": length.astype(jnp.int32),  # the held-back token sits behind the leading 0
            "pending": jnp.take_along_axis(tokens, last[:, None], axis=1)[:, 0].astype(jnp.int32),
            "fresh": length > 0,
        }

    def decode_step(self, state, tokens):
        tokens = jnp.where(state["fresh"], state["pending"], tokens.astype(jnp.int32))
        pos = state["pos"]
        T = state["cache"]["k"].shape[2]
        visible = (jnp.arange(T)[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, T]
        ctx = {"bias": masks.mask_to_bias(visible), "positions": pos[:, None], "pos": pos}
        x, cache = run_stack(self.layers, self.token_embed(tokens[:, None]), state["cache"], ctx, "decode")
        logits = self._logits(self.final_norm(x))[:, 0]
        return logits, {**state, "cache": constrain_cache(self.cfg, cache), "pos": pos + 1,
                        "fresh": jnp.zeros_like(state["fresh"])}

    @staticmethod
    def decode_state_axes(cfg: ModelConfig) -> dict:
        """Logical axis names of every leaf of the decoding state (see the module doc)."""
        kv = cache_axes(cfg)
        return {"cache": {"k": kv, "v": kv}, "pos": ("batch",), "pending": ("batch",), "fresh": ("batch",)}


def _arange_like(tokens):
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)
