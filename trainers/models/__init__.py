"""Models of both families behind one small API.

build(cfg) -> flax module; init_params / param_shapes / logical_axes for the parameter
tree; prefill / decode_step for incremental decoding with a fixed-size cache;
option_logits for scoring several targets of one prompt encoded once; and
save_pretrained / load_pretrained for base-model checkpoints (orbax params + model.json).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from trainers.spec import ModelConfig, UserError, from_dict, to_dict

FAMILIES = ("t5", "decoder")


def validate(cfg: ModelConfig) -> None:
    """Reject configurations the models cannot build, naming the field."""
    if cfg.family not in FAMILIES:
        raise UserError(f"model.family: unknown {cfg.family!r}; allowed: {', '.join(FAMILIES)}")
    for name in ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_decoder_layers"):
        if getattr(cfg, name) < 1:
            raise UserError(f"model.{name}: {getattr(cfg, name)!r} must be >= 1")
    from trainers.models.layers import dtype_of

    dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    if not 0.0 <= cfg.dropout_rate < 1.0:
        raise UserError(f"model.dropout_rate: {cfg.dropout_rate!r} must be in [0, 1)")
    kv = cfg.num_kv_heads or cfg.num_heads
    if kv < 0 or cfg.num_heads % kv:
        raise UserError(f"model.num_kv_heads: {cfg.num_kv_heads} must divide num_heads {cfg.num_heads} (0 = num_heads)")
    if cfg.family == "t5":
        if cfg.num_encoder_layers < 1:
            raise UserError(f"model.num_encoder_layers: {cfg.num_encoder_layers} must be >= 1 for family t5")
        if cfg.tie_embeddings:
            raise UserError("model.tie_embeddings: T5 v1.1 has untied embeddings; set it false for family t5")
    elif cfg.num_encoder_layers:
        raise UserError(f"model.num_encoder_layers: {cfg.num_encoder_layers} must be 0 for family decoder")
    if cfg.family == "decoder" and cfg.d_kv % 2:
        raise UserError(f"model.d_kv: {cfg.d_kv} must be even for rotary embeddings")


def build(cfg: ModelConfig) -> nn.Module:
    validate(cfg)
    if cfg.family == "t5":
        from trainers.models.t5 import T5

        return T5(cfg)
    from trainers.models.decoder import DecoderOnly

    return DecoderOnly(cfg)


def dummy_batch(cfg: ModelConfig, batch_size: int, input_length: int, target_length: int) -> dict[str, jnp.ndarray]:
    """An all-ones batch of the family's layout (for init and shape tracing)."""
    if cfg.family == "t5":
        return {
            "encoder_input_tokens": jnp.ones((batch_size, input_length), jnp.int32),
            "decoder_input_tokens": jnp.ones((batch_size, target_length), jnp.int32),
        }
    return {"decoder_input_tokens": jnp.ones((batch_size, input_length + target_length), jnp.int32)}


def init_boxed(cfg: ModelConfig, rng, input_length: int = 4, target_length: int = 4):
    """Parameters still wrapped in nn.LogicallyPartitioned (axis names attached)."""
    module = build(cfg)
    batch = dummy_batch(cfg, 1, input_length, target_length)
    return module.init({"params": rng, "dropout": rng}, batch, True)["params"]


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_params(cfg: ModelConfig, rng, input_length: int, target_length: int):
    return nn.meta.unbox(init_boxed(cfg, rng, input_length, target_length))


def init_params(cfg: ModelConfig, rng, input_length: int = 4, target_length: int = 4):
    """Random initial parameters (plain arrays), compiled once per config. Traceable: wrap
    it in jax.jit with out_shardings to create the parameters already sharded."""
    return _init_params(cfg, rng, int(input_length), int(target_length))


@functools.lru_cache(maxsize=32)
def _abstract_boxed(cfg: ModelConfig):
    # One abstract trace serves shapes and axis names; cached because a 118-layer model
    # takes seconds to trace and the trainer asks for both.
    return jax.eval_shape(lambda r: init_boxed(cfg, r, 1, 1), jax.random.key(0))


def _is_boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_shapes(cfg: ModelConfig):
    """Pytree of jax.ShapeDtypeStruct, traced abstractly (no memory, any model size)."""
    return jax.tree.map(lambda x: x.value, _abstract_boxed(cfg), is_leaf=_is_boxed)


def logical_axes(cfg: ModelConfig):
    """Pytree parallel to the params of logical axis-name tuples, e.g. ("embed", "mlp")."""
    return jax.tree.map(lambda x: tuple(x.names), _abstract_boxed(cfg), is_leaf=_is_boxed)


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prefill(cfg: ModelConfig, params, input_tokens, max_decode_len: int):
    module = build(cfg)
    return module.apply({"params": params}, input_tokens, max_decode_len, method=type(module).prefill)


@functools.partial(jax.jit, static_argnums=(0,))
def _decode_step(cfg: ModelConfig, params, state, tokens):
    module = build(cfg)
    return module.apply({"params": params}, state, tokens, method=type(module).decode_step)


def prefill(cfg: ModelConfig, params, input_tokens, max_decode_len: int):
    """Start decoding from right-padded prompts [B, L] (pad 0) -> state (fixed-shape pytree).

    Both families: the first decode_step is fed 0 and returns the logits of the first new
    token; each later step is fed the token chosen at the previous one. At most
    `max_decode_len` steps fit in the cache.
    """
    return _prefill(cfg, params, jnp.asarray(input_tokens, jnp.int32), int(max_decode_len))


def decode_step(cfg: ModelConfig, params, state, tokens):
    """Feed one token per row [B] -> (logits [B, V] float32, new state)."""
    return _decode_step(cfg, params, state, jnp.asarray(tokens, jnp.int32))


@functools.partial(jax.jit, static_argnums=(0,))
def _option_logits(cfg: ModelConfig, params, prompts, prompt_index, tokens):
    module = build(cfg)
    return module.apply({"params": params}, prompts, prompt_index, tokens, method=type(module).option_logits)


def option_logits(cfg: ModelConfig, params, prompts, prompt_index, tokens):
    """Teacher-forced logits [N, Lt, V] (float32) of N target rows continuing P prompts, each
    prompt encoded once however many rows continue it (rank classification's options).

    prompts [P, Li]: right-padded prompt rows (pad 0), as for prefill; prompt_index [N]: the
    prompt each row continues; tokens [N, Lt]: 0 then the row's target shifted right,
    right-padded. Position t of a row gives the logits of its target token t, exactly as a
    training batch of (prompt, target) examples would (both families).
    """
    return _option_logits(cfg, params, jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_index, jnp.int32),
                          jnp.asarray(tokens, jnp.int32))


def repeat_state(state, times: int):
    """Each row of a decode state repeated `times` times, in place (rows r*times ..
    r*times + times - 1 copy row r), so several samples of one prompt share its prefill.
    Every leaf of either family's state has the batch as its leading axis."""
    return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), state)


def save_pretrained(dst, cfg: ModelConfig, params) -> Path:
    """Write a base-model checkpoint: DST/params (orbax) and DST/model.json (the ModelConfig)."""
    import orbax.checkpoint as ocp

    dst = Path(dst).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(dst / "params", params, force=True)
    checkpointer.wait_until_finished()
    (dst / "model.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    return dst


def load_config(path) -> ModelConfig:
    path = Path(path)
    cfg_file = path / "model.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: not a flanscale model checkpoint (missing model.json)")
    try:
        return from_dict(ModelConfig, json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: invalid JSON ({e.msg} at line {e.lineno})") from None


def load_pretrained(path, shardings: Any = None) -> tuple[ModelConfig, Any]:
    """Read a checkpoint written by save_pretrained -> (ModelConfig, params).

    `shardings` (a pytree of jax.sharding.Sharding parallel to the params) restores each
    array directly into its layout; default is the first local device.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg = load_config(path)
    if not (path / "params").is_dir():
        raise UserError(f"{path}: not a flanscale model checkpoint (missing params/)")
    shapes = param_shapes(cfg)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    try:
        params = ocp.StandardCheckpointer().restore(path / "params", target)
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}/params: does not match model.json ({str(e).splitlines()[0][:200]})") from None
    return cfg, params
