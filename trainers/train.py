"""The train step of one cell: sharded, jitted, micro-batched; its state and how it compiles.
The loop that drives it (checkpoints, stop requests, metrics) is trainers/loop.py.

The train state is a plain dict pytree {params, opt_state, step, rng}, so orbax saves and
restores it without custom types. Randomness is a pure function of (rng, step, micro-batch),
never a chain of splits, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainers import partitioning
from trainers.spec import OptimConfig

log = logging.getLogger(__name__)

State = dict[str, Any]
Batch = dict[str, Any]


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


def _split_micro(batch: Batch, micro_batches: int) -> Batch:
    """[B, ...] -> [M, B/M, ...], micro-batch m taking rows m, m+M, m+2M, ...

    Interleaving (rather than contiguous blocks) keeps every device's local rows spread
    over all micro-batches, so each micro-batch stays sharded across the whole data axis.
    """

    def split(x):
        b = x.shape[0]
        return jnp.swapaxes(x.reshape((b // micro_batches, micro_batches) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    apply_fn: Callable[..., jnp.ndarray],
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: Callable[..., tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]],
    micro_batches: int,
    z_loss: float,
    dropout: bool,
    batch_sharding: NamedSharding | None = None,
) -> Callable[[State, Batch], tuple[State, dict[str, jnp.ndarray]]]:
    """Builds step(state, batch) -> (state, metrics); jit it with the shardings of the state.

    `loss_fn(logits, batch, z_loss)` is the model family's (trainers.models.loss_fn): summed,
    not averaged, so micro-batches add up exactly to the full batch; the step divides once
    by the number of target tokens of the whole optimizer step."""

    def summed_loss(params, batch, rng):
        logits = apply_fn(
            {"params": params}, batch, deterministic=not dropout, rngs={"dropout": rng}
        )
        ce, z, n = loss_fn(logits, batch, z_loss)
        return ce + z, (ce, z, n)

    grad_fn = jax.grad(summed_loss, has_aux=True)

    def step(state: State, batch: Batch):
        params = state["params"]
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        if micro_batches == 1:
            grads, (ce, z, n) = grad_fn(params, batch, step_rng)
        else:
            micro = _split_micro(batch, micro_batches)

            def body(carry, xs):
                acc, ce_acc, z_acc, n_acc = carry
                i, mb = xs
                if batch_sharding is not None:
                    mb = jax.lax.with_sharding_constraint(mb, jax.tree.map(lambda _: batch_sharding, mb))
                g, (ce_i, z_i, n_i) = grad_fn(params, mb, jax.random.fold_in(step_rng, i))
                acc = jax.tree.map(jnp.add, acc, g)
                return (acc, ce_acc + ce_i, z_acc + z_i, n_acc + n_i), None

            init = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0), jnp.float32(0), jnp.float32(0))
            (grads, ce, z, n), _ = jax.lax.scan(body, init, (jnp.arange(micro_batches), micro))
        denom = jnp.maximum(n, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "useful_tokens": _useful_tokens(batch),
            "loss": (ce + z) / denom,
            "cross_entropy": ce / denom,
            "z_loss": z / denom,
            "target_tokens": n,
            "grad_norm": optax.global_norm(grads),
        }
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        return new_state, metrics

    return step


@dataclass
class TrainSetup:
    """Everything the loop needs that the job wires up (model, optimizer, mesh, data)."""

    apply_fn: Callable[..., jnp.ndarray]
    loss_fn: Callable[..., Any]  # the model family's loss (trainers.models.loss_fn)
    optim: OptimConfig
    optimizer: optax.GradientTransformation
    mesh: Mesh
    param_shardings: Any  # pytree of NamedSharding parallel to params
    batch_sharding: NamedSharding  # rows over the data-parallel axes
    dropout: bool
    global_batch: int
    input_length: int
    target_length: int
    analytic_step_flops: float = 0.0
    peak_flops_total: float = 0.0  # peak FLOP/s of all devices of the cell together
    packing_efficiency: Callable[[Batch], float] | None = None
    # Extra batch keys that the model must not see (e.g. bookkeeping of the pipeline).
    drop_keys: tuple[str, ...] = field(default_factory=tuple)
    # Context to trace the step in, binding the model's logical activation constraints
    # to the mesh (trainers.partitioning.activation_sharding).
    trace_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # Hashable identity of everything that shapes the compiled step besides the state and
    # batch layouts (model, optimizer configs...); None disables reuse of compiled steps.
    cache_key: Any = None
    # XLA's cost analysis counts a loop body once, so with scanned layers its step FLOPs
    # miss all layers but one: train/xla_step_flops is logged only where it counts them all.
    xla_counts_layers: bool = True


def init_state(setup: TrainSetup, params: Any, seed: int) -> State:
    """Places params with their shardings and builds the optimizer state next to them.

    The state takes ownership of `params`: the train step donates its input buffers.
    """
    params = jax.device_put(params, setup.param_shardings)
    opt_init, _ = _sharded_opt_init(setup, params)
    step, rng = _start(setup)(seed)
    return {"params": params, "opt_state": opt_init(params), "step": step, "rng": rng}


def abstract_initial_state(setup: TrainSetup, param_shapes: Any) -> Any:
    """What init_state would build (shapes, dtypes, shardings) with nothing materialised:
    the target a checkpoint restores into, so a resumed run never holds two copies."""
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), param_shapes, setup.param_shardings
    )
    _, opt_shardings = _sharded_opt_init(setup, params)
    opt_shapes = jax.eval_shape(setup.optimizer.init, params)
    opt = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), opt_shapes, opt_shardings)
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    step, rng = jax.eval_shape(lambda: (jnp.int32(0), jax.random.PRNGKey(0)))
    return {
        "params": params,
        "opt_state": opt,
        "step": jax.ShapeDtypeStruct(step.shape, step.dtype, sharding=replicated),
        "rng": jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated),
    }


def _start(setup: TrainSetup) -> Callable:
    # Step and RNG key are created by a jitted function so that, on several hosts, every
    # process holds its replica of one global array.
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    return cached_jit(
        ("start", setup.mesh),
        lambda: jax.jit(lambda s: (jnp.int32(0), jax.random.PRNGKey(s)), out_shardings=(replicated, replicated)),
    )


def _sharded_opt_init(setup: TrainSetup, params: Any) -> tuple[Callable, Any]:
    """optimizer.init jitted with every output on the mesh, and those output shardings:
    each state leaf sharded like its parameter (partitioning.state_shardings)."""

    def make():
        shapes = jax.eval_shape(setup.optimizer.init, params)
        param_shapes = jax.eval_shape(lambda p: p, params)
        shardings = partitioning.state_shardings(shapes, setup.param_shardings, param_shapes, setup.mesh)
        return jax.jit(setup.optimizer.init, out_shardings=shardings), shardings

    return cached_jit(("opt_init", setup.cache_key), make, setup.cache_key)


_JITTED: dict[Any, Callable] = {}


def cached_jit(key: Any, make: Callable[[], Callable], enabled: Any = True) -> Callable:
    """One jitted function per key, so jax's compilation cache (keyed on the function
    object) is hit by every later cell or resume of the same shape in this process."""
    if enabled is None:
        return make()
    if key not in _JITTED:
        _JITTED[key] = make()
    return _JITTED[key]


def state_shardings(state: State) -> Any:
    return jax.tree.map(lambda x: x.sharding, state)


def abstract_state(state: State) -> Any:
    """Shapes, dtypes and shardings of a state: the target a checkpoint restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def to_global(batch: Batch, setup: TrainSetup) -> Batch:
    """This process's rows (numpy) -> global jax arrays sharded by rows over the mesh."""
    out = {}
    for k, v in batch.items():
        if k in setup.drop_keys or not isinstance(v, (np.ndarray, jnp.ndarray)):
            continue
        v = np.asarray(v)
        shape = (setup.global_batch,) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(setup.batch_sharding, v, shape)
    return out


# Compiled steps by (setup.cache_key, state and batch layouts). A worker that trains several
# cells of the same shape, or resumes a cell in-process, compiles once.
_COMPILED: "collections.OrderedDict[Any, tuple[Any, float]]" = collections.OrderedDict()
_COMPILED_MAX = 8


def _layout(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((x.shape, str(x.dtype), x.sharding) for x in leaves))


def compile_step(setup: TrainSetup, state: State, batch: Batch):
    """AOT-compiles the step for these shapes and shardings; returns (executable, xla flops)."""
    key = None
    if setup.cache_key is not None:
        key = (setup.cache_key, _layout(state), _layout(batch))
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
    step = make_train_step(
        setup.apply_fn,
        setup.optimizer,
        loss_fn=setup.loss_fn,
        micro_batches=setup.optim.micro_batches,
        z_loss=setup.optim.z_loss,
        dropout=setup.dropout,
        batch_sharding=setup.batch_sharding,
    )
    shardings = state_shardings(state)
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    batch_sh = jax.tree.map(lambda _: setup.batch_sharding, batch)
    jitted = jax.jit(
        step,
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )
    with setup.trace_context():
        compiled = jitted.lower(abstract_state(state), batch).compile()
    out = (compiled, _xla_flops(compiled, setup))
    if key is not None:
        _COMPILED[key] = out
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return out


def _xla_flops(compiled, setup: TrainSetup) -> float:
    """FLOPs of one step as XLA counts them, over all devices.

    The per-device SPMD program is scaled by the device count; XLA counts a loop body
    once, so the micro-batch loop's cost is scaled by the number of micro-batches.
    """
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # some backends do not implement it
        log.warning("XLA cost analysis unavailable: %s", e)
        return float("nan")
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", float("nan")))
    return flops * setup.mesh.size * max(setup.optim.micro_batches, 1)


def _useful_tokens(batch: Batch) -> jnp.ndarray:
    """Non-padding tokens (inputs and targets) of the global batch."""
    keys = [k for k in ("encoder_segment_ids", "decoder_segment_ids") if k in batch]
    if not keys:  # unpacked batches without segment ids: non-pad tokens
        keys = [k for k in ("encoder_input_tokens", "decoder_target_tokens") if k in batch]
    return sum(jnp.sum(batch[k] != 0, dtype=jnp.float32) for k in keys)
