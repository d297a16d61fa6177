"""Building blocks shared by the model families.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and large
activations carry logical constraints; trainers/partitioning.py alone maps those names to
mesh axes. Parameters are stored in `param_dtype` and cast to the compute `dtype` where
they are used; norms and softmax run in float32 whatever the compute dtype.

A stack of identical layers is built by `layer_stack` and run by `run_stack`: scanned
(`model.scan_layers`, one `layers` module whose parameters carry a leading `layers` axis, so
the program and its compile time do not grow with depth) or unrolled (`layers_0`,
`layers_1`, ...). Either way per-layer inputs and outputs (KV caches) are stacked on a
leading `layers` axis, so callers see one layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from trainers.families import REMAT_POLICIES, family_of
from trainers.families.mlp import MLPForm
from trainers.spec import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Activation layouts (logical names); the rules drop a mesh axis already used by an
# earlier dimension, so "embed" on activations stays unsharded when "batch" takes fsdp.
ACT_EMBED = ("batch", "length", "embed")
ACT_MLP = ("batch", "length", "mlp")
ACT_HEADS = ("batch", "length", "heads", "kv")
ACT_VOCAB = ("batch", "length", "vocab")


def cache_axes(cfg) -> tuple[str, ...]:
    """Logical axes of a stacked key/value cache [layers, batch, length, kv heads, d_kv]; the
    heads are "kv_heads" (replicated) when fewer than the query heads, as for the kernels."""
    kv = cfg.num_kv_heads or cfg.num_heads
    return ("layers", "batch", "length", "heads" if kv == cfg.num_heads else "kv_heads", "kv")


def constrain_cache(cfg, kv: dict) -> dict:
    """{"k", "v"} stacked caches laid out by their logical axes (a no-op outside a mesh)."""
    return {name: nn.with_logical_constraint(x, cache_axes(cfg)) for name, x in kv.items()}


def dtype_of(name: str):
    if name not in DTYPES:
        raise UserError(f"model.dtype / model.param_dtype: unknown {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def dense_init(in_axes: Sequence[int] = (0,), out_axes: Sequence[int] = (-1,), scale: float = 1.0):
    """Fan-in scaled truncated normal (T5X's default for every kernel)."""
    return nn.initializers.variance_scaling(
        scale, "fan_in", "truncated_normal", in_axis=tuple(in_axes), out_axis=tuple(out_axes)
    )


def param(module: nn.Module, name: str, init, shape: tuple[int, ...], axes: tuple, param_dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, param_dtype)


class Norm(nn.Module):
    """Scale-only normalisation: RMS norm (T5) or mean-subtracting layer norm (PaLM), no bias."""

    eps: float = 1e-6
    center: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",), self.param_dtype)
        x = x.astype(jnp.float32)
        if self.center:
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding; `attend` gives logits against the same table (tied output layer)."""

    vocab_size: int
    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = param(
            self, "embedding", nn.initializers.normal(stddev=1.0),
            (self.vocab_size, self.features), ("vocab", "embed"), self.param_dtype,
        )

    def __call__(self, ids):
        x = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        return nn.with_logical_constraint(x, ACT_EMBED)

    def attend(self, x):
        return jnp.einsum("ble,ve->blv", x, self.embedding.astype(self.dtype), preferred_element_type=jnp.float32)


class LMHead(nn.Module):
    """Untied output projection [embed, vocab]."""

    vocab_size: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = param(self, "kernel", dense_init(), (x.shape[-1], self.vocab_size), ("embed", "vocab"), self.param_dtype)
        return jnp.einsum("ble,ev->blv", x, kernel.astype(self.dtype), preferred_element_type=jnp.float32)


ACTIVATIONS = {"gelu": lambda h: jax.nn.gelu(h, approximate=True), "silu": jax.nn.silu, "relu": jax.nn.relu}


class MLP(nn.Module):
    """The feed-forward layer of a form (trainers/families/mlp.py): act(x wi_0) * (x wi_1)
    (gated: gated-GELU for T5 v1.1, SwiGLU for PaLM) or act(x wi), then dropout, then wo."""

    form: MLPForm
    d_ff: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        d = x.shape[-1]
        w = [param(self, name, dense_init(), (d, self.d_ff), ("embed", "mlp"), self.param_dtype)
             for name in self.form.inputs]
        wo = param(self, "wo", dense_init(), (self.d_ff, d), ("mlp", "embed"), self.param_dtype)
        proj = [jnp.einsum("ble,ef->blf", x, wi.astype(self.dtype)) for wi in w]
        h = ACTIVATIONS[self.form.activation](proj[0])
        if self.form.gated:
            h = h * proj[1]
        h = nn.with_logical_constraint(h, ACT_MLP)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return jnp.einsum("blf,fe->ble", h, wo.astype(self.dtype))


def mlp(cfg, name: str = "mlp") -> nn.Module:
    """The feed-forward layer of cfg's family (its form names the flax module)."""
    form = family_of(cfg).mlp
    module, _, attr = form.module.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls(form=form, d_ff=cfg.d_ff, dropout_rate=cfg.dropout_rate, dtype=dtype_of(cfg.dtype),
               param_dtype=dtype_of(cfg.param_dtype), name=name)


def rotary(x, positions, base: float = 10000.0):
    """Rotary position embedding (rotate-half form) of x [B, L, H, D] at positions [B, L]."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [D/2]
    angle = positions.astype(jnp.float32)[:, :, None, None] * freq  # [B, L, 1, D/2]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with any number of key/value heads (MHA, GQA, MQA).

    `bias` is additive, [B or 1, 1 or H, Lq, Lk] (mask and, for T5, relative positions).
    Decoding passes `cache` ({"k", "v"}: [B, T, G, D]) and `write_pos` [B]: the new key and
    value of the single query token are written at each row's position and the updated
    cache is returned. Cross-attention decoding passes precomputed `kv` instead.
    """

    features: int  # d_model
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    scale_logits: bool = False  # T5 folds 1/sqrt(d_kv) into the query init instead
    use_rotary: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        E, H, G, D = self.features, self.num_heads, self.num_kv_heads, self.head_dim
        if G < 1 or H % G:
            raise UserError(f"model.num_kv_heads: {G} must divide num_heads {H}")
        # With fewer K/V heads than query heads the K/V kernels get their own axis name,
        # replicated over the tensor axis (a single multi-query head cannot be split).
        kv_heads = "heads" if G == H else "kv_heads"
        q_init = dense_init(out_axes=(1, 2))
        if not self.scale_logits:
            # T5 / T5X: the 1/sqrt(d_kv) logit scaling lives in the query initialisation.
            base = q_init
            q_init = lambda key, shape, dtype: base(key, shape, dtype) * (D ** -0.5)
        pd = self.param_dtype
        self.query = param(self, "query", q_init, (E, H, D), ("embed", "heads", "kv"), pd)
        self.key = param(self, "key", dense_init(out_axes=(1, 2)), (E, G, D), ("embed", kv_heads, "kv"), pd)
        self.value = param(self, "value", dense_init(out_axes=(1, 2)), (E, G, D), ("embed", kv_heads, "kv"), pd)
        self.out = param(self, "out", dense_init(in_axes=(0, 1), out_axes=(2,)), (H, D, E), ("heads", "kv", "embed"), pd)
        self.dropout = nn.Dropout(self.dropout_rate)

    def project_kv(self, x_kv, kv_positions=None):
        """[B, Lk, E] -> keys, values [B, Lk, G, D] (rotary applied to keys)."""
        k = jnp.einsum("ble,egd->blgd", x_kv, self.key.astype(self.dtype))
        v = jnp.einsum("ble,egd->blgd", x_kv, self.value.astype(self.dtype))
        if self.use_rotary:
            k = rotary(k, kv_positions)
        return k, v

    def __call__(self, x_q, x_kv, bias, deterministic: bool, q_positions=None, kv_positions=None,
                 cache=None, write_pos=None, kv=None):
        H, G, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = jnp.einsum("ble,ehd->blhd", x_q, self.query.astype(self.dtype))
        q = nn.with_logical_constraint(q, ACT_HEADS)
        if self.use_rotary:
            q = rotary(q, q_positions)
        if kv is not None:
            k, v = kv
        else:
            k, v = self.project_kv(x_kv, kv_positions)
        new_cache = None
        if cache is not None:
            # One query token per row; write its key/value at that row's position.
            rows = jnp.arange(k.shape[0])
            ck = cache["k"].at[rows, write_pos].set(k[:, 0].astype(cache["k"].dtype))
            cv = cache["v"].at[rows, write_pos].set(v[:, 0].astype(cache["v"].dtype))
            new_cache = {"k": ck, "v": cv}
            k, v = ck.astype(self.dtype), cv.astype(self.dtype)
        B, Lq = q.shape[:2]
        qg = q.reshape(B, Lq, G, H // G, D)  # [B, Lq, G, R, D]: R query heads per K/V head
        if self.scale_logits:
            qg = qg * jnp.asarray(D ** -0.5, qg.dtype)
        # Logits and softmax in float32 whatever the compute dtype.
        logits = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k, preferred_element_type=jnp.float32)
        logits = logits.reshape(B, H, Lq, k.shape[1]) + bias.astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = self.dropout(weights, deterministic=deterministic).astype(self.dtype)
        out = jnp.einsum("bgrqk,bkgd->bqgrd", weights.reshape(B, G, H // G, Lq, -1), v).reshape(B, Lq, H, D)
        out = nn.with_logical_constraint(out, ACT_HEADS)
        y = jnp.einsum("blhd,hde->ble", out, self.out.astype(self.dtype))
        return nn.with_logical_constraint(y, ACT_EMBED), (k, v), new_cache


def layer_stack(cfg, cls: type[nn.Module], length: int, name: str = "layers"):
    """`length` layers of `cls(cfg)` for `run_stack`, as the parent's setup attribute.

    A layer's signature is `__call__(self, x, xs, ctx, mode) -> (x, ys)`: `x` the carried
    activations, `xs` its own slice of per-layer inputs (or None), `ctx` arrays shared by
    every layer, `mode` a static string ("train" enables dropout).
    """
    if cfg.remat:
        # Argument 4 counting `self` is `mode`, static. Under scan, CSE cannot merge the
        # recomputation across iterations anyway, so the barrier is dropped there.
        policy = getattr(jax.checkpoint_policies, REMAT_POLICIES[cfg.remat_policy])
        cls = nn.remat(cls, static_argnums=(4,), policy=policy,
                       prevent_cse=not cfg.scan_layers)
    if not cfg.scan_layers:
        return [cls(cfg, name=f"{name}_{i}") for i in range(length)]
    scanned = nn.scan(
        cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast), length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(cfg, name=name)


def run_stack(stack, x, xs, ctx, mode: str):
    """Runs a `layer_stack` -> (x, ys stacked on a leading layers axis, or None)."""
    if not isinstance(stack, (list, tuple)):
        return stack(x, xs, ctx, mode)
    outs = []
    for i, layer in enumerate(stack):
        x, y = layer(x, jax.tree.map(lambda a: a[i], xs), ctx, mode)
        outs.append(y)
    if outs[0] is None:
        return x, None
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)
