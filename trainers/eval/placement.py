"""Where evaluation runs: a mesh, the parameters in their shardings, prompt rows split over
the data axes, and a decoding cache split over the data axes and the heads' mesh axis.

Evaluation runs on the cell's own mesh (`trainers.partitioning.make_mesh(cell.mesh)`) with the
parameters exactly as training shards them, so no host ever holds them whole: every program
is jitted with the parameters' shardings in, rows sharded over the data axes
(`partitioning.BATCH_AXES`) in, and only small results (token ids, log-probabilities, loss
sums) out, replicated so that every process can read them. Row counts are rounded up to a
multiple of the data-parallel size. Several processes each build the same host rows (the
prompts are the same everywhere) and give the global array the rows of their own devices.

The decoding state (`trainers.models.prefill`) is pinned to the layout its logical axes
(`trainers.models.decode_state_axes`) give under the partitioning rules, after the prefill
and after every step: the KV cache [layers, batch, length, heads, kv] with its rows over the
data axes and its heads over the heads' mesh axis (K/V heads fewer than the query heads stay
whole, as their kernels do), every other leaf (positions, segment ids) split by rows.
"""

from __future__ import annotations

import collections
import contextlib
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainers import partitioning
from trainers.spec import MeshConfig

_COMPILED: collections.OrderedDict[Any, Callable] = collections.OrderedDict()
_COMPILED_MAX = 64


def _layout_key(tree: Any) -> tuple:
    return (jax.tree.structure(tree), tuple(jax.tree.leaves(tree)))


class EvalMesh:
    """A mesh for evaluation programs (see the module docstring). Programs are cached by
    mesh, so every evaluation of a cell (and of the next cell on an equal mesh) reuses them."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.rows_sharding = NamedSharding(mesh, PartitionSpec(partitioning.BATCH_AXES))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.data_parallel = math.prod(mesh.shape[a] for a in partitioning.BATCH_AXES)

    @classmethod
    def local(cls) -> "EvalMesh":
        """One device of this process: evaluation of a checkpoint outside a cell."""
        return cls(partitioning.make_mesh(MeshConfig(), jax.local_devices()[:1]))

    def rows(self, n: int) -> int:
        """n rounded up to a multiple of the data-parallel size."""
        return -(-max(n, 1) // self.data_parallel) * self.data_parallel

    def put_params(self, model_cfg: Any, params: Any) -> Any:
        """The parameters on this mesh: as they are when they already live on it (a cell's
        training state), else moved into the training shardings (a checkpoint loaded onto one
        device)."""
        leaves = jax.tree.leaves(params)
        if all(isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == self.mesh
               for x in leaves):
            return params
        return jax.device_put(params, partitioning.param_shardings(model_cfg, self.mesh))

    def _global(self, x: Any, sharding: NamedSharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def state_shardings(self, model_cfg: Any, state: Any) -> Any:
        """NamedShardings of a decoding state's leaves (arrays, tracers or shapes)."""
        from trainers import models

        return jax.tree.map(lambda names, _: NamedSharding(self.mesh, partitioning.logical_to_spec(names)),
                            models.decode_state_axes(model_cfg), state, is_leaf=lambda x: isinstance(x, tuple))

    def constrain_state(self, model_cfg: Any, state: Any) -> Any:
        """Inside a program: pins a decoding state to `state_shardings`."""
        return jax.lax.with_sharding_constraint(state, self.state_shardings(model_cfg, state))

    @contextlib.contextmanager
    def tracing(self):
        with partitioning.activation_sharding(self.mesh):
            yield

    def run(self, key: Any, make: Callable[[], Callable], params: Any, rows: tuple = (), replicated: tuple = ()):
        """`make()(params, rows, replicated)`, jitted once per (key, mesh, parameter layout):
        `params` placed by `put_params` beforehand, `rows` host arrays (or dicts of them) whose
        leading dimension is split over the data axes, `replicated` small host arrays every
        device gets whole. Every output comes back replicated."""
        param_shardings = jax.tree.map(lambda x: x.sharding, params)
        cache_key = (key, self.mesh, _layout_key(param_shardings))
        fn = _COMPILED.get(cache_key)
        if fn is None:
            in_shardings = (param_shardings, jax.tree.map(lambda _: self.rows_sharding, rows),
                            jax.tree.map(lambda _: self.replicated, replicated))
            fn = jax.jit(make(), in_shardings=in_shardings, out_shardings=self.replicated)
            _COMPILED[cache_key] = fn
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
        _COMPILED.move_to_end(cache_key)
        rows = jax.tree.map(lambda x: self._global(x, self.rows_sharding), rows)
        replicated = jax.tree.map(lambda x: self._global(x, self.replicated), replicated)
        with self.tracing():
            return fn(params, rows, replicated)
