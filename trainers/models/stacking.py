"""Converting a parameter tree between unrolled layers (`layers_0`, `layers_1`, ...) and one
scanned stack (`layers`, every leaf with a leading layers axis), for Hugging Face conversion
(which names layers one by one) and for base checkpoints saved in the other layout.

Works on nested dicts of numpy or JAX arrays; the family says where its stacks are
(`Family.stacks`: parameter path of the holding module -> depth).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _at(tree: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        tree = tree[key]
    return tree


def _copy_to(tree: dict, path: tuple[str, ...]) -> tuple[dict, dict]:
    """A copy of `tree` whose dicts along `path` are fresh (the rest shared) -> (root, node)."""
    root = dict(tree)
    node = root
    for key in path:
        node[key] = dict(node[key])
        node = node[key]
    return root, node


def _map(fn, *trees):
    if isinstance(trees[0], dict):
        return {k: _map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def is_stacked(params: dict, stacks: dict[tuple[str, ...], int]) -> bool:
    return all("layers" in _at(params, path) for path in stacks)


def stack_layers(params: dict, stacks: dict[tuple[str, ...], int], stack=np.stack) -> dict:
    """`layers_{i}` subtrees -> one `layers` subtree of arrays stacked on a new axis 0."""
    for path, depth in stacks.items():
        params, node = _copy_to(params, path)
        layers = [node.pop(f"layers_{i}") for i in range(depth)]
        node["layers"] = _map(lambda *xs: stack(xs), *layers)
    return params


def unstack_layers(params: dict, stacks: dict[tuple[str, ...], int]) -> dict:
    """The inverse of stack_layers: slice i of every `layers` leaf -> `layers_{i}`."""
    for path, depth in stacks.items():
        params, node = _copy_to(params, path)
        stacked: Any = node.pop("layers")
        for i in range(depth):
            node[f"layers_{i}"] = _map(lambda x, i=i: x[i], stacked)
    return params
