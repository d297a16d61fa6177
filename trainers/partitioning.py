"""Device mesh and the one place where logical axis names meet mesh axes.

The mesh has three axes (MaxText / T5X convention):
  data   - pure data parallelism (parameters replicated),
  fsdp   - data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
  tensor - model (Megatron) parallelism over heads, MLP hidden units and vocabulary.
Model code names logical axes only (batch, length, embed, mlp, heads, kv, vocab, ...);
RULES maps them. A logical axis whose mesh axis is already taken by an earlier dimension of
the same array stays unsharded (so activations [batch, length, embed] shard only on batch).
"""

from __future__ import annotations

import contextlib
import math

import jax
import numpy as np
import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainers.spec import MeshConfig, ModelConfig, UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical axis, mesh axis or axes or None), in order of precedence.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("joined_kv", "tensor"),
    ("kv", None),
    # Fewer K/V heads than query heads (multi-query): replicated, they are small.
    ("kv_heads", None),
    ("length", None),
    ("relpos_buckets", None),
    # The leading axis of a scanned layer stack (and of its KV caches): every device holds
    # its shard of every layer, and the scan walks the layers.
    ("layers", None),
)


def mesh_shape(mesh_cfg: MeshConfig) -> tuple[int, int, int]:
    shape = (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
    for axis, size in zip(MESH_AXES, shape):
        if size < 1:
            raise UserError(f"mesh.{axis}: {size} must be >= 1")
    n = math.prod(shape)
    if mesh_cfg.devices and n != mesh_cfg.devices:
        raise UserError(
            f"mesh: data x fsdp x tensor = {shape[0]} x {shape[1]} x {shape[2]} = {n} "
            f"but mesh.devices = {mesh_cfg.devices}; they must be equal"
        )
    return shape


def make_mesh(mesh_cfg: MeshConfig, devices=None) -> Mesh:
    """Mesh with axes ("data", "fsdp", "tensor") over the first data*fsdp*tensor devices."""
    shape = mesh_shape(mesh_cfg)
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(shape)
    if len(devices) < n:
        raise UserError(
            f"mesh: needs {n} devices (data {shape[0]} x fsdp {shape[1]} x tensor {shape[2]}) "
            f"but only {len(devices)} are available"
        )
    devices = devices[:n]
    try:
        # Topology-aware placement on TPU/GPU slices (tensor axis on the fastest links).
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in names)


def logical_to_spec(names: tuple, rules=RULES) -> PartitionSpec:
    return nn.logical_to_mesh_axes(names, rules)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=RULES):
    """Pytree of NamedSharding parallel to the params; refuses uneven splits with a UserError."""
    from trainers import models

    shapes = models.param_shapes(cfg)
    axes = models.logical_axes(cfg)
    flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0])

    def one(path, shape):
        names = flat_axes[path]
        spec = logical_to_spec(names, rules)
        for dim, (size, name, mesh_axes) in enumerate(zip(shape.shape, names, spec)):
            parts = _axis_size(mesh, mesh_axes)
            if size % parts:
                raise UserError(
                    f"model parameter {_path_str(path)}: dimension {dim} ({name}) of size {size} is not "
                    f"divisible by mesh axis {mesh_axes} of size {parts}; choose a mesh that divides it"
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, shapes)


def _keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(state_shapes, params_shardings, param_shapes, mesh: Mesh):
    """Shardings for an optimizer state laid out like its parameters.

    Each state leaf follows the parameter whose dict path ends its own (optax nests the
    parameter tree inside its states): the parameter's spec where the shapes agree, with
    the entry of a reduced dimension dropped where Adafactor factors it (row statistics drop
    the last dimension, column statistics the one before). Leaves that match no parameter
    (step counters, factored placeholders) are replicated. Left to the compiler, leaves
    initialised as zeros, which have no data dependence on a parameter (a vmapped init over
    a layer stack), come out replicated: the full second moments of every layer on every
    device.
    """
    params = {_keys(p): (s.shape, sh.spec) for (p, s), sh in zip(
        jax.tree_util.tree_flatten_with_path(param_shapes)[0], jax.tree.leaves(params_shardings))}

    def spec_of(shape: tuple, pshape: tuple, pspec: PartitionSpec) -> PartitionSpec | None:
        entries = tuple(pspec) + (None,) * (len(pshape) - len(pspec))
        if tuple(shape) == tuple(pshape):
            return PartitionSpec(*entries)
        if len(shape) == len(pshape) - 1:
            for drop in reversed(range(len(pshape))):
                if tuple(pshape[:drop] + pshape[drop + 1:]) == tuple(shape):
                    return PartitionSpec(*(entries[:drop] + entries[drop + 1:]))
        return None

    def one(path, leaf):
        keys = _keys(path)
        for start in range(len(keys)):
            match = params.get(keys[start:])
            if match is not None:
                spec = spec_of(leaf.shape, *match)
                if spec is not None:
                    return NamedSharding(mesh, spec)
                break
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, state_shapes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp; other dimensions replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_params(params, shardings):
    """Place (host or device) params into their shardings."""
    return jax.device_put(params, shardings)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a batch dict on the mesh, split along rows.

    Single process: `batch` is the global batch. Several processes: each passes its own
    rows (process_count-th of the global batch) and the global array is assembled.
    """
    sharding = batch_sharding(mesh)
    parts = _axis_size(mesh, BATCH_AXES)
    rows = next(iter(batch.values())).shape[0] * jax.process_count()
    if rows % parts:
        raise UserError(
            f"optim.batch_size: {rows} rows are not divisible by mesh data x fsdp = {parts}; "
            f"use a multiple of {parts}"
        )
    if jax.process_count() == 1:
        return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=RULES):
    """Context in which to trace (jit) the model so its logical constraints bind to `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
