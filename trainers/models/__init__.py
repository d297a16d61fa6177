"""Models of every registered family (trainers/families) behind one small API.

build(cfg) -> flax module; loss_fn(cfg) -> its training loss; init_params / param_shapes / logical_axes for the parameter
tree; prefill / decode_step for incremental decoding with a fixed-size cache;
option_logits for scoring several targets of one prompt encoded once; and
save_pretrained / load_pretrained for base-model checkpoints (orbax params + model.json).

The family of a ModelConfig names its flax module ("module:Class"); the module is built
from the config alone, its `__call__(batch, deterministic)` gives logits [B, L, V], and
decoding families add `prefill`, `decode_step`, `option_logits` and a static
`decode_state_axes(cfg)`. Decoding state leaves under "cache" and "cross" are stacked per
layer, [layers, batch, length, kv heads, d_kv]; every other leaf has the batch first.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from trainers.families import family_of, validate
from trainers.models.stacking import stack_layers, unstack_layers
from trainers.architecture import BASE_CONFIG, BASE_PARAMS
from trainers.spec import ModelConfig, UserError, from_dict, to_dict

_LAYER_MAJOR = ("cache", "cross")  # decoding-state entries whose leaves are [layers, batch, ...]


def resolve(ref: str) -> Any:
    """"package.module:attribute" (a family's name for its module or converter) -> the object."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    return resolve(family_of(cfg).model)


def build(cfg: ModelConfig) -> nn.Module:
    validate(cfg)
    return model_class(cfg)(cfg)


def loss_fn(cfg: ModelConfig):
    """The family's training loss (trainers/models/loss.py): (logits, batch, z_loss) ->
    (cross-entropy sum, z-loss sum, target tokens)."""
    return resolve(family_of(cfg).loss)


def dummy_batch(cfg: ModelConfig, batch_size: int, input_length: int, target_length: int) -> dict[str, jnp.ndarray]:
    """An all-ones batch of the family's layout (for init and shape tracing)."""
    shapes = family_of(cfg).batch_layout.model_inputs(batch_size, input_length, target_length)
    return {name: jnp.ones(shape, jnp.int32) for name, shape in shapes.items()}


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


def decoding(cfg: ModelConfig, method: str):
    """The family module's decoding method (`prefill`, `decode_step`, `option_logits`,
    `decode_state_axes`); a one-line UserError where the family's module does not decode."""
    cls = model_class(cfg)
    if not hasattr(cls, method):
        raise UserError(f"model.family: {cfg.family!r} does not decode ({family_of(cfg).model} has no {method}); "
                        "evaluate it with the held-out loss only (eval.benchmarks: [])")
    return getattr(cls, method)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prefill(cfg: ModelConfig, params, input_tokens, max_decode_len: int):
    module = build(cfg)
    return module.apply({"params": params}, input_tokens, max_decode_len, method=decoding(cfg, "prefill"))


@functools.partial(jax.jit, static_argnums=(0,))
def _decode_step(cfg: ModelConfig, params, state, tokens):
    module = build(cfg)
    return module.apply({"params": params}, state, tokens, method=decoding(cfg, "decode_step"))


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
    return module.apply({"params": params}, prompts, prompt_index, tokens, method=decoding(cfg, "option_logits"))


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


def decode_state_axes(cfg: ModelConfig) -> dict:
    """Logical axis names of every leaf of `prefill`'s state, e.g. the caches'
    ("layers", "batch", "length", "heads", "kv"), for trainers/partitioning.py to shard."""
    return decoding(cfg, "decode_state_axes")(cfg)


def repeat_state(state, times: int):
    """Each row of a decode state repeated `times` times, in place (rows r*times ..
    r*times + times - 1 copy row r), so several samples of one prompt share its prefill."""
    return {name: jax.tree.map(lambda x, axis=int(name in _LAYER_MAJOR): jnp.repeat(x, times, axis=axis), leaves)
            for name, leaves in state.items()}


def convert_layout(cfg: ModelConfig, params, scan_layers: bool):
    """Params of `cfg`'s layout -> the scanned (True) or unrolled (False) layout."""
    if cfg.scan_layers == scan_layers:
        return params
    stacks = family_of(cfg).stacks(cfg)
    return stack_layers(params, stacks, jnp.stack) if scan_layers else unstack_layers(params, stacks)


def save_pretrained(dst, cfg: ModelConfig, params) -> Path:
    """Write a base-model checkpoint: DST/params (orbax) and DST/model.json (the ModelConfig)."""
    import orbax.checkpoint as ocp

    dst = Path(dst).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(dst / BASE_PARAMS, params, force=True)
    checkpointer.wait_until_finished()
    (dst / BASE_CONFIG).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    return dst


def load_config(path) -> ModelConfig:
    path = Path(path)
    cfg_file = path / BASE_CONFIG
    if not cfg_file.is_file():
        raise UserError(f"{path}: not a flanscale model checkpoint (missing {BASE_CONFIG})")
    try:
        return from_dict(ModelConfig, json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: invalid JSON ({e.msg} at line {e.lineno})") from None


def load_pretrained(path, shardings: Any = None, scan_layers: bool | None = None) -> tuple[ModelConfig, Any]:
    """Read a checkpoint written by save_pretrained -> (ModelConfig, params).

    `shardings` (a pytree of jax.sharding.Sharding parallel to the params) restores each
    array directly into its layout; default is the first local device. `scan_layers`
    chooses the layer layout (default: model.json's); a checkpoint saved in the other
    layout is converted on the first local device, then placed.
    """
    import dataclasses

    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    saved = load_config(path)
    if not (path / BASE_PARAMS).is_dir():
        raise UserError(f"{path}: not a flanscale model checkpoint (missing {BASE_PARAMS}/)")
    cfg = saved if scan_layers is None else dataclasses.replace(saved, scan_layers=scan_layers)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if shardings is None:
        shardings = jax.tree.map(lambda _: device, param_shapes(cfg))

    def restore(layout: ModelConfig, target_shardings):
        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              param_shapes(layout), target_shardings)
        return ocp.StandardCheckpointer().restore(path / BASE_PARAMS, target)

    try:
        return cfg, restore(cfg, shardings)
    except (ValueError, KeyError) as e:
        first_error = str(e).splitlines()[0][:200]
    # model.json written before scan_layers existed reads as scanned; try the other layout.
    other = dataclasses.replace(cfg, scan_layers=not cfg.scan_layers)
    try:
        params = restore(other, jax.tree.map(lambda _: device, param_shapes(other)))
    except (ValueError, KeyError):
        raise UserError(f"{path}/params: does not match model.json ({first_error})") from None
    return cfg, jax.device_put(convert_layout(other, params, cfg.scan_layers), shardings)
