"""T5 v1.1 encoder-decoder (the Flan-T5 base models).

Untied input/output embeddings (one input table `shared` by encoder and decoder, a separate
`lm_head`), scale-only RMS norm (eps 1e-6), the family's feed-forward form (gated-GELU for
T5 v1.1), bucketed relative position bias (one table per stack, shared by its layers), no biases, no 1/sqrt(d_kv) on
attention logits (folded into the query init), dropout where T5 applies it. Relative
positions come from per-example positions, so packed examples each start at 0.
HF checkpoint import lives in hf_import.py and is re-exported here.

Decoding state (`prefill` / `decode_step`): "cross" and "cache" hold {"k", "v"} of every
decoder layer, [layers, batch, length, kv heads, d_kv] (the encoder outputs' cross-attention
keys/values, and the self-attention cache of `max_decode_len` positions); "encoder_segments"
[batch, input length] and "pos" [batch] are per row. `decode_state_axes` names those axes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from trainers.models import masks
from trainers.models.layers import (ACT_EMBED, ACT_VOCAB, Attention, Embed, LMHead, Norm, cache_axes,
                                    constrain_cache, dtype_of, layer_stack, mlp, run_stack)
from trainers.spec import ModelConfig

EPS = 1e-6


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """T5's bucketing of (key position - query position), exactly as HF / Mesh TF compute it."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        rel = jnp.abs(relative_position)
    else:
        rel = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # max(rel, 1) keeps log finite where the small branch is taken anyway.
    scaled = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, rel, large)


class RelativePositionBias(nn.Module):
    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q_positions, k_positions):
        """[B, Lq], [B, Lk] -> additive bias [B, H, Lq, Lk] (float32)."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("relpos_buckets", "heads")),
            (self.num_buckets, self.num_heads), self.param_dtype,
        )
        rel = k_positions[:, None, :] - q_positions[:, :, None]  # [B, Lq, Lk]
        bucket = relative_position_bucket(rel.astype(jnp.int32), self.bidirectional, self.num_buckets, self.max_distance)
        values = jnp.take(table.astype(jnp.float32), bucket, axis=0)  # [B, Lq, Lk, H]
        return jnp.transpose(values, (0, 3, 1, 2))


def _attention(cfg: ModelConfig, name: str) -> Attention:
    return Attention(
        features=cfg.d_model, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads or cfg.num_heads,
        head_dim=cfg.d_kv, dropout_rate=cfg.dropout_rate, scale_logits=False,
        dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), name=name,
    )


def _norm(cfg: ModelConfig, name: str) -> Norm:
    return Norm(eps=EPS, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), name=name)


def _relpos(cfg: ModelConfig, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        cfg.num_heads, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        bidirectional, dtype_of(cfg.param_dtype), name="relpos_bias",
    )


class EncoderLayer(nn.Module):
    cfg: ModelConfig

    def setup(self):
        self.pre_attention_norm = _norm(self.cfg, "pre_attention_norm")
        self.attention = _attention(self.cfg, "attention")
        self.pre_mlp_norm = _norm(self.cfg, "pre_mlp_norm")
        self.mlp = mlp(self.cfg)
        self.dropout = nn.Dropout(self.cfg.dropout_rate)

    def __call__(self, x, xs, ctx, mode: str):
        """One layer of a stack (see layers.layer_stack); ctx: {"bias"}; no per-layer inputs."""
        deterministic = mode != "train"
        h = self.pre_attention_norm(x)
        h, _, _ = self.attention(h, h, ctx["bias"], deterministic)
        x = x + self.dropout(h, deterministic=deterministic)
        h = self.mlp(self.pre_mlp_norm(x), deterministic)
        return x + self.dropout(h, deterministic=deterministic), None


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    def setup(self):
        self.pre_self_attention_norm = _norm(self.cfg, "pre_self_attention_norm")
        self.self_attention = _attention(self.cfg, "self_attention")
        self.pre_cross_attention_norm = _norm(self.cfg, "pre_cross_attention_norm")
        self.cross_attention = _attention(self.cfg, "cross_attention")
        self.pre_mlp_norm = _norm(self.cfg, "pre_mlp_norm")
        self.mlp = mlp(self.cfg)
        self.dropout = nn.Dropout(self.cfg.dropout_rate)

    def __call__(self, x, xs, ctx, mode: str):
        """One layer of a stack (see layers.layer_stack).

        mode "train" / "eval": ctx {"encoded", "self_bias", "cross_bias"}; xs None, or
        {"cross": {"k", "v"}} projected beforehand (then ctx's "encoded" is unused).
        mode "cross_kv": x is the encoder output, passed through; ys are its cross-attention
        {"k", "v"}. mode "decode": one token per row; xs {"cache", "cross"}, ctx adds "pos"
        (where each row writes its key/value); ys the updated cache.
        """
        if mode == "cross_kv":
            k, v = self.cross_attention.project_kv(x)
            return x, {"k": k, "v": v}
        deterministic = mode != "train"
        xs = xs or {}
        cache, cross = xs.get("cache"), xs.get("cross")
        h = self.pre_self_attention_norm(x)
        h, _, new_cache = self.self_attention(h, h, ctx["self_bias"], deterministic, cache=cache, write_pos=ctx.get("pos"))
        x = x + self.dropout(h, deterministic=deterministic)
        h = self.pre_cross_attention_norm(x)
        kv = None if cross is None else (cross["k"], cross["v"])
        h, _, _ = self.cross_attention(h, ctx.get("encoded"), ctx["cross_bias"], deterministic, kv=kv)
        x = x + self.dropout(h, deterministic=deterministic)
        h = self.mlp(self.pre_mlp_norm(x), deterministic)
        return x + self.dropout(h, deterministic=deterministic), new_cache


def _mode(deterministic: bool) -> str:
    return "eval" if deterministic else "train"


class Encoder(nn.Module):
    cfg: ModelConfig

    def setup(self):
        self.relpos_bias = _relpos(self.cfg, bidirectional=True)
        self.layers = layer_stack(self.cfg, EncoderLayer, self.cfg.num_encoder_layers)
        self.final_norm = _norm(self.cfg, "final_norm")
        self.dropout = nn.Dropout(self.cfg.dropout_rate)

    def __call__(self, x, segments, positions, deterministic):
        # The bias (mask + relative positions) is computed once and shared by every layer.
        bias = self.relpos_bias(positions, positions) + masks.mask_to_bias(masks.encoder_mask(segments))
        x = self.dropout(x, deterministic=deterministic)
        x, _ = run_stack(self.layers, x, None, {"bias": bias}, _mode(deterministic))
        return self.dropout(self.final_norm(x), deterministic=deterministic)


class Decoder(nn.Module):
    cfg: ModelConfig

    def setup(self):
        self.relpos_bias = _relpos(self.cfg, bidirectional=False)
        self.layers = layer_stack(self.cfg, DecoderLayer, self.cfg.num_decoder_layers)
        self.final_norm = _norm(self.cfg, "final_norm")
        self.dropout = nn.Dropout(self.cfg.dropout_rate)

    def __call__(self, x, encoded, segments, positions, encoder_segments, deterministic, cross=None):
        """`cross` ({"k", "v"} [layers, B, Li, G, D]) replaces `encoded` when the rows'
        cross-attention keys/values were projected once for several rows."""
        self_bias = self.relpos_bias(positions, positions) + masks.mask_to_bias(masks.decoder_mask(segments))
        cross_bias = masks.mask_to_bias(masks.cross_mask(segments, encoder_segments))
        x = self.dropout(x, deterministic=deterministic)
        ctx = {"encoded": encoded, "self_bias": self_bias, "cross_bias": cross_bias}
        x, _ = run_stack(self.layers, x, None if cross is None else {"cross": cross}, ctx, _mode(deterministic))
        return self.dropout(self.final_norm(x), deterministic=deterministic)

    def cross_kvs(self, encoded):
        """Every layer's cross-attention keys/values of `encoded`: {"k", "v"} [layers, B, Li, G, D]."""
        return run_stack(self.layers, encoded, None, {}, "cross_kv")[1]

    def step(self, x, cross, encoder_segments, cache, pos):
        """One token per row: x [B, 1, E] at decoder position pos [B]; cache {"k", "v"} [layers, B, T, G, D]."""
        T = cache["k"].shape[2]
        keys = jnp.broadcast_to(jnp.arange(T)[None, :], (x.shape[0], T))
        visible = (keys <= pos[:, None])[:, None, None, :]  # [B, 1, 1, T]
        self_bias = self.relpos_bias(pos[:, None], keys) + masks.mask_to_bias(visible)
        ones = jnp.ones((x.shape[0], 1), jnp.int32)
        cross_bias = masks.mask_to_bias(masks.cross_mask(ones, encoder_segments))
        ctx = {"self_bias": self_bias, "cross_bias": cross_bias, "pos": pos}
        x, cache = run_stack(self.layers, x, {"cache": cache, "cross": cross}, ctx, "decode")
        return self.final_norm(x), cache


class T5(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.shared = Embed(cfg.vocab_size, cfg.d_model, dt, pdt, name="shared")
        self.encoder = Encoder(cfg, name="encoder")
        self.decoder = Decoder(cfg, name="decoder")
        # v1.1 unties the output layer and, unlike T5 1.0, does not rescale by d_model**-0.5.
        self.lm_head = LMHead(cfg.vocab_size, dt, pdt, name="lm_head")

    def encode(self, tokens, segments, positions, deterministic=True):
        return self.encoder(self.shared(tokens), segments, positions, deterministic)

    def decode(self, tokens, encoded, segments, positions, encoder_segments, deterministic=True):
        x = self.decoder(self.shared(tokens), encoded, segments, positions, encoder_segments, deterministic)
        logits = self.lm_head(x).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ACT_VOCAB)

    def __call__(self, batch, deterministic=True):
        enc_tokens = jnp.asarray(batch["encoder_input_tokens"])
        dec_tokens = jnp.asarray(batch["decoder_input_tokens"])
        enc_seg = _get(batch, "encoder_segment_ids", lambda: (enc_tokens != 0).astype(jnp.int32))
        # The decoder input starts with 0 (start = pad id), so without segment ids every
        # decoder position is real; right padding is harmless under the causal mask.
        dec_seg = _get(batch, "decoder_segment_ids", lambda: jnp.ones_like(dec_tokens))
        enc_pos = _get(batch, "encoder_positions", lambda: _arange_like(enc_tokens))
        dec_pos = _get(batch, "decoder_positions", lambda: _arange_like(dec_tokens))
        encoded = self.encode(enc_tokens, enc_seg, enc_pos, deterministic)
        encoded = nn.with_logical_constraint(encoded, ACT_EMBED)
        return self.decode(dec_tokens, encoded, dec_seg, dec_pos, enc_seg, deterministic)

    def option_logits(self, prompts, prompt_index, tokens):
        """Teacher-forced logits of N target rows that continue P prompts, each prompt encoded once.

        prompts [P, Li] right-padded (pad 0); prompt_index [N] the prompt each row continues;
        tokens [N, Lt] the decoder inputs (0, then the target shifted right), right-padded.
        The encoder runs once per prompt and the cross-attention keys/values are projected
        once per prompt and gathered per row. -> logits [N, Lt, V] float32.
        """
        segments = (prompts != 0).astype(jnp.int32)
        encoded = nn.with_logical_constraint(self.encode(prompts, segments, _arange_like(prompts), True), ACT_EMBED)
        rows = lambda a, axis=0: jnp.take(a, prompt_index, axis=axis)  # noqa: E731  P -> N rows
        cross = jax.tree.map(lambda a: rows(a, 1), self.decoder.cross_kvs(encoded))  # [layers, N, Li, G, D]
        x = self.decoder(self.shared(tokens), None, jnp.ones_like(tokens), _arange_like(tokens), rows(segments),
                         True, cross=cross)
        return nn.with_logical_constraint(self.lm_head(x).astype(jnp.float32), ACT_VOCAB)

    def prefill(self, tokens, max_decode_len: int):
        segments = (tokens != 0).astype(jnp.int32)
        encoded = self.encode(tokens, segments, _arange_like(tokens), True)
        cfg, B = self.cfg, tokens.shape[0]
        shape = (cfg.num_decoder_layers, B, max_decode_len, cfg.num_kv_heads or cfg.num_heads, cfg.d_kv)
        zeros = jnp.zeros(shape, dtype_of(cfg.dtype))
        return {
            "cross": constrain_cache(cfg, self.decoder.cross_kvs(encoded)),
            "cache": constrain_cache(cfg, {"k": zeros, "v": zeros}),
            "encoder_segments": segments,
            "pos": jnp.zeros((B,), jnp.int32),
        }

    def decode_step(self, state, tokens):
        x = self.shared(tokens[:, None])
        x, cache = self.decoder.step(x, state["cross"], state["encoder_segments"], state["cache"], state["pos"])
        logits = self.lm_head(x)[:, 0].astype(jnp.float32)
        return logits, {**state, "cache": constrain_cache(self.cfg, cache), "pos": state["pos"] + 1}

    @staticmethod
    def decode_state_axes(cfg: ModelConfig) -> dict:
        """Logical axis names of every leaf of the decoding state (see the module doc)."""
        kv = cache_axes(cfg)
        return {"cross": {"k": kv, "v": kv}, "cache": {"k": kv, "v": kv},
                "encoder_segments": ("batch", "length"), "pos": ("batch",)}


def _get(batch, key, default):
    return jnp.asarray(batch[key]) if key in batch else default()


def _arange_like(tokens):
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)


def from_hf(path, param_dtype: str = "float32", scan_layers: bool = True):
    """Import a Hugging Face T5 v1.1 checkpoint directory -> (ModelConfig, params)."""
    from trainers.models.hf_import import from_hf as _from_hf

    return _from_hf(path, param_dtype, scan_layers)


@functools.partial(jax.jit, static_argnums=0)
def _forward(config: ModelConfig, params, batch):
    return T5(config).apply({"params": params}, batch, True)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: ModelConfig, params, input_ids, mask):
    return T5(config).apply({"params": params}, input_ids, mask, _arange_like(input_ids), True, method=T5.encode)


def _padding_mask(input_ids, attention_mask):
    return jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)


def forward(config: ModelConfig, params, input_ids, decoder_input_ids, attention_mask=None):
    """HF-style call (padding mask, no packing) -> logits [B, Lt, V] float32."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    batch = {"encoder_input_tokens": input_ids, "encoder_segment_ids": _padding_mask(input_ids, attention_mask),
             "decoder_input_tokens": jnp.asarray(decoder_input_ids, jnp.int32)}
    return _forward(config, params, batch)


def encode(config: ModelConfig, params, input_ids, attention_mask=None):
    """Encoder outputs [B, Li, d_model] (after the final norm), HF-style padding mask."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    return _encode(config, params, input_ids, _padding_mask(input_ids, attention_mask))
