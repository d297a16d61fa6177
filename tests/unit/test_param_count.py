"""accounting.param_count equals what the Flax models create, for every preset (540B
included: the model's shapes are traced with eval_shape, no memory)."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.catalog import REGISTRY
from trainers import accounting

models = pytest.importorskip("trainers.models")


def _architectures() -> dict[str, list[str]]:
    """Presets grouped by architecture (cont-PaLM 62B is PaLM 62B's, U-PaLM 540B is PaLM
    540B's), so each distinct model is traced once."""
    groups: dict[tuple, list[str]] = {}
    for preset in REGISTRY:
        arch = dataclasses.replace(preset.model, name="", dropout_rate=0.0)
        groups.setdefault(tuple(sorted(arch.__dict__.items())), []).append(preset.name)
    return {"+".join(names): names for names in groups.values()}


ARCHS = _architectures()


def test_every_preset_is_covered():
    assert sorted(n for names in ARCHS.values() for n in names) == sorted(REGISTRY.names())


@pytest.mark.parametrize("names", list(ARCHS))
def test_param_count_matches_model(names):
    import jax

    for name in ARCHS[names]:
        cfg = REGISTRY.get(name).model
        if name == ARCHS[names][0]:
            n = sum(x.size for x in jax.tree.leaves(models.param_shapes(cfg)))
        assert n == accounting.param_count(cfg), name


@pytest.mark.parametrize("name", ["tiny-3", "t5-small", "palm-8b"])
def test_adafactor_state_matches_optax(name):
    """The planner's optimizer memory is optax's factored Adafactor state, element for element."""
    import jax

    from trainers.optim import build_optimizer
    from trainers.spec import OptimConfig

    cfg = REGISTRY.get(name).model
    optim = OptimConfig()
    state = jax.eval_shape(build_optimizer(optim).init, models.param_shapes(cfg))
    # Step counters are integers (one per layer of a scanned stack, which steps each layer alone).
    elements = sum(x.size for x in jax.tree.leaves(state) if x.dtype.kind == "f")
    assert elements == accounting.adafactor_state_elements(cfg, optim.factored_min_dim)
